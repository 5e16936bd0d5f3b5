//! The causal language model trait and what a model declares about its layers.

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::params::{ParamSpec, Params};
use crate::rope::RopeSpec;
use crate::state::SequenceState;
use crate::tokenizer::TextTokenizer;

/// An attention layer, as a KV method needs to know it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionLayerSpec {
    /// Index of the layer in the model.
    pub layer: usize,
    pub n_query_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Local attention window in tokens (Mistral, Gemma-3 local layers); `None` = global.
    pub sliding_window: Option<usize>,
    /// The rotary embedding applied to this layer's keys before they reach the cache (each
    /// layer its own: Gemma-3's local and global layers differ); `None` where the model has
    /// none or does not declare it. Pre-RoPE key quantization needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope: Option<RopeSpec>,
}

impl AttentionLayerSpec {
    /// Bytes per token of a 16-bit uncompressed cache of this layer (keys and values), the
    /// reference every compression ratio is measured against.
    pub fn fp16_bytes_per_token(&self) -> usize {
        2 * self.n_kv_heads * self.head_dim * 2
    }
}

/// A recurrent layer (SSM, RG-LRU) with a fixed-size state of `slots` tensors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecurrentLayerSpec {
    pub layer: usize,
    pub slots: usize,
}

/// One layer of a model, as the sequence state must hold it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerSpec {
    Attention(AttentionLayerSpec),
    Recurrent(RecurrentLayerSpec),
}

/// What a loaded model declares about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Registered or file name.
    pub name: String,
    /// Architecture family, e.g. `llama`.
    pub architecture: String,
    pub vocab_size: usize,
    /// Longest context the model was trained for, in tokens.
    pub max_context: usize,
    pub layers: Vec<LayerSpec>,
    /// Element type of the weights in memory, e.g. `f32`.
    pub dtype: String,
    /// Number of weight parameters.
    pub parameter_count: usize,
}

/// Which positions to compute logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsSelection {
    /// Only the last position (generation): `[1, vocab]`.
    Last,
    /// Every position (perplexity, parity tests): `[T, vocab]`.
    All,
}

/// A causal language model. It never owns a cache: all per-sequence state is passed in.
pub trait CausalLm<B: Backend>: Send + Sync {
    /// What the model is.
    fn info(&self) -> &ModelInfo;

    /// Runs `tokens` (at absolute `positions`, same length) through the model, updating `state`,
    /// and returns logits `[T_selected, vocab]` as chosen by `logits`.
    fn forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        state: &mut SequenceState<B>,
        logits: LogitsSelection,
    ) -> Result<Tensor<B, 2>>;
}

/// Where a model's weights and tokenizer came from, for result records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelProvenance {
    /// A path, or a description such as `generated(seed=0)`.
    pub source: String,
    /// SHA-256 of the weights file, if read from a file.
    pub weights_sha256: Option<String>,
    /// SHA-256 of the tokenizer definition, if any.
    pub tokenizer_sha256: Option<String>,
}

/// A model ready to run, with its tokenizer.
pub struct LoadedModel<B: Backend> {
    pub model: Box<dyn CausalLm<B>>,
    pub tokenizer: Arc<dyn TextTokenizer>,
    pub provenance: ModelProvenance,
}

/// The registration side of a model family.
pub trait ModelDescriptor: 'static {
    /// Registered name, e.g. `tiny`, `smollm2-135m`.
    const NAME: &'static str;
    /// One line for `longctx list`.
    const DESCRIPTION: &'static str;
    /// Declared parameters with defaults.
    fn params() -> Vec<ParamSpec>;
    /// Loads (or builds) the model on `device`.
    fn load<B: Backend>(
        params: &Params,
        device: &burn::tensor::Device<B>,
    ) -> Result<LoadedModel<B>>;
}
