//! KV methods: named factories of per-layer caches, with declared capabilities.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::cache::KvCache;
use crate::error::Result;
use crate::model::AttentionLayerSpec;
use crate::params::{ParamSpec, Params};

/// What a method needs to see from attention. Anything not asked for is not computed, so a
/// method that needs nothing keeps the fused (flash) attention path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservationNeeds {
    /// Queries after RoPE.
    pub queries: bool,
    /// Softmax attention weights over the cache view.
    pub attention_weights: bool,
}

impl ObservationNeeds {
    /// Whether anything must be observed.
    pub fn any(&self) -> bool {
        self.queries || self.attention_weights
    }

    /// The union of two needs.
    pub fn union(self, other: Self) -> Self {
        Self {
            queries: self.queries || other.queries,
            attention_weights: self.attention_weights || other.attention_weights,
        }
    }
}

/// When the runner calls [`KvCache::compress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionSchedule {
    /// Process the prompt in chunks of this many tokens and compress after each chunk
    /// (StreamingLLM, InfLLM). `None` prefills the prompt in one pass.
    pub prefill_chunk_tokens: Option<usize>,
    /// Compress once the whole prompt has been processed (SnapKV, KIVI's quantization).
    pub after_prefill: bool,
    /// Compress after every `n` decode steps (H2O, TOVA: `Some(1)`).
    pub decode_interval: Option<usize>,
}

/// A descriptive family used in reports and plots (never for branching in the runner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodFamily {
    Baseline,
    Quantization,
    TokenDropping,
    Composite,
}

/// What a method does and needs; the runner reads only this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodCapabilities {
    pub family: MethodFamily,
    pub observes: ObservationNeeds,
    pub schedule: CompressionSchedule,
    /// Whether the method uses a token or byte budget (quantization and `full` do not).
    pub uses_budget: bool,
}

/// What a method knows when it builds a layer's cache for one sequence.
#[derive(Clone, Debug)]
pub struct CacheContext {
    /// The budget asked for.
    pub budget: Budget,
    /// Prompt length in tokens (the budget ratio's reference length).
    pub prompt_tokens: usize,
    /// Number of layers of the model.
    pub n_layers: usize,
}

/// A configured KV method: makes one cache per attention layer for each sequence.
pub trait KvMethod<B: Backend>: Send + Sync {
    /// The registered name.
    fn name(&self) -> &str;

    /// What the runner must do for this method.
    fn capabilities(&self) -> MethodCapabilities;

    /// Builds the cache of one attention layer for one sequence.
    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>>;
}

/// The registration side of a method: its name, parameters and how to build it on any backend.
/// One implementation per method crate; one line in `longctx-registry` registers it.
pub trait MethodDescriptor: 'static {
    /// Registered name, e.g. `full`, `kivi`.
    const NAME: &'static str;
    /// One line for `longctx list`.
    const DESCRIPTION: &'static str;
    /// Declared parameters with defaults.
    fn params() -> Vec<ParamSpec>;
    /// Builds the method from validated parameters.
    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>>;
}
