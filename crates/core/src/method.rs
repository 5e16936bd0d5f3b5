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
    /// With `attention_weights`: compute the weights of the last `n` query rows of each forward
    /// only (SnapKV's observation window, TOVA's last query), so the output keeps the fused path
    /// and the weights cost `O(n * T)` instead of `O(T^2)`. `None` = every row.
    #[serde(default)]
    pub weight_rows: Option<usize>,
    /// Hand the caches this forward's queries (after RoPE) through [`KvCache::prepare`] after
    /// the new keys are appended and before the view is taken, so a cache can choose what
    /// attention runs over from the queries about to attend (InfLLM's block retrieval). Not
    /// part of [`Self::any`]: it does not make the model call `observe` or leave the fused path.
    ///
    /// [`KvCache::prepare`]: crate::KvCache::prepare
    #[serde(default)]
    pub queries_before_attention: bool,
}

impl ObservationNeeds {
    /// Whether anything must be observed after attention (`observe`); queries handed before
    /// attention (`queries_before_attention`) do not count.
    pub fn any(&self) -> bool {
        self.queries || self.attention_weights
    }

    /// The union of two needs (all rows win over a last-rows limit).
    pub fn union(self, other: Self) -> Self {
        let rows = |n: &Self| n.attention_weights.then_some(n.weight_rows);
        let weight_rows = match (rows(&self), rows(&other)) {
            (Some(None), _) | (_, Some(None)) => None,
            (Some(Some(a)), Some(Some(b))) => Some(a.max(b)),
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => None,
        };
        Self {
            queries: self.queries || other.queries,
            attention_weights: self.attention_weights || other.attention_weights,
            weight_rows,
            queries_before_attention: self.queries_before_attention
                || other.queries_before_attention,
        }
    }

    /// Attention weights of every query row.
    pub fn all_weights() -> Self {
        Self {
            attention_weights: true,
            ..Self::default()
        }
    }

    /// Attention weights of the last `rows` query rows of each forward.
    pub fn last_weights(rows: usize) -> Self {
        Self {
            attention_weights: true,
            weight_rows: Some(rows),
            ..Self::default()
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
    /// What attention must hand the caches while the prompt is processed.
    pub observes: ObservationNeeds,
    /// What attention must hand the caches during decoding (H2O observes only here, SnapKV only
    /// in prefill, so each phase keeps the fused path when it can).
    pub observes_decode: ObservationNeeds,
    pub schedule: CompressionSchedule,
    /// Whether the method uses a token or byte budget (quantization and `full` do not).
    pub uses_budget: bool,
    /// Whether the question at the end of the prompt goes through prefill compression (a
    /// query-aware setting). When `false`, the runner prefills and compresses the context, and
    /// then processes the question with no compression call, as kvpress does by default.
    pub compresses_question: bool,
    /// Whether prefill is exact until the first `compress` call: the cache holds every key and
    /// value appended unchanged and shows them all in [`KvCache::view`], so prefill attention
    /// over it is attention over the uncompressed prompt (`full`, KIVI, every method that
    /// selects at `PrefillEnd`). `false` for a cache that changes what it holds or shows in
    /// `append` (FlexGen's `quantize_prefill` quantizes there) or masks the prompt (a
    /// sinks-plus-window view). The runner shares one prefill among the methods for which
    /// [`Self::shares_prefill`] holds; it never asks for method names.
    ///
    /// [`KvCache::view`]: crate::KvCache::view
    #[serde(default)]
    pub exact_prefill: bool,
}

impl MethodCapabilities {
    /// Whether this method can take its prompt's prefill from one shared with other methods:
    /// its prefill is exact ([`Self::exact_prefill`]), it compresses nothing per prefill chunk
    /// (`schedule.prefill_chunk_tokens` is `None`), and its caches need no queries before
    /// attention. Its caches then receive the same appends (and the observations they declared)
    /// as when it runs alone, and first change at `compress(PrefillEnd)`.
    pub fn shares_prefill(&self) -> bool {
        self.exact_prefill
            && self.schedule.prefill_chunk_tokens.is_none()
            && !self.observes.queries_before_attention
    }
}

/// What a method knows when it builds a layer's cache for one sequence.
#[derive(Clone, Debug)]
pub struct CacheContext {
    /// The budget asked for.
    pub budget: Budget,
    /// Length in tokens of the prompt part that goes through compression (the whole prompt, or
    /// the context without the question): the budget ratio's reference length.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_before_attention_joins_the_union_but_not_any() {
        let before = ObservationNeeds {
            queries_before_attention: true,
            ..Default::default()
        };
        assert!(!before.any());
        let u = before.union(ObservationNeeds::last_weights(4));
        assert!(u.queries_before_attention && u.attention_weights);
        assert_eq!(u.weight_rows, Some(4));
        assert!(
            !ObservationNeeds::all_weights()
                .union(ObservationNeeds::default())
                .queries_before_attention
        );
        // Needs serialised before the flag existed still load.
        let old: ObservationNeeds =
            serde_json::from_str(r#"{"queries":true,"attention_weights":false}"#).unwrap();
        assert!(old.queries && !old.queries_before_attention);
    }
}
