//! The per-layer KV cache trait.
//!
//! A cache is created per sequence and per attention layer by a [`crate::KvMethod`]. The model
//! calls, for every forward pass of that layer:
//!
//! 1. [`KvCache::append`] with the keys/values of the new tokens (after RoPE);
//! 2. [`KvCache::prepare`] with this forward's queries (after RoPE), only if the method declared
//!    [`crate::ObservationNeeds::queries_before_attention`] (InfLLM chooses the blocks attention
//!    runs over from the queries about to attend);
//! 3. [`KvCache::view`] to get what attention runs over: every key/value the cache holds, the
//!    just-appended ones included, in the order they were appended;
//! 4. [`KvCache::observe`] with queries and/or attention weights, only if the method declared
//!    that need in [`crate::ObservationNeeds`] (the others keep the fused attention path).
//!
//! The runner calls [`KvCache::compress`] at the phases the method declared in
//! [`crate::CompressionSchedule`]. Because keys are appended before attention, a cache that
//! quantizes only in `compress` (KIVI) gives prefill attention full-precision keys, and a cache
//! that quantizes in `append` (FlexGen's simulated mode) gives it quantized ones.

use burn::tensor::{backend::Backend, Bool, Tensor};

use crate::error::Result;

/// When the runner asks a cache to compress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionPhase {
    /// After one chunk of a chunked prefill (the prompt is processed under the budget).
    PrefillChunk,
    /// After the whole prompt has been processed.
    PrefillEnd,
    /// After a decode step (every `decode_interval` steps).
    Decode,
}

/// What attention runs over for one layer.
///
/// Shapes use `H_kv` for the layer's key/value heads, `T_kv` for the entries the cache holds
/// and `D` for the head dimension.
#[derive(Clone, Debug)]
pub struct KvView<B: Backend> {
    /// Keys after RoPE, `[1, H_kv, T_kv, D]`.
    pub keys: Tensor<B, 4>,
    /// Values, `[1, H_kv, T_kv, D]`.
    pub values: Tensor<B, 4>,
    /// Absolute position of each entry (length `T_kv`); used for causal and sliding-window masks.
    pub positions: Vec<usize>,
    /// Entries to ignore per head, `[1, H_kv, 1, T_kv]`, `true` = masked. Lets a cache that keeps a
    /// different number of tokens per head (stored ragged) present them padded to one width.
    pub padding_mask: Option<Tensor<B, 4, Bool>>,
    /// A sparse attention pattern over the entries, on top of causality and the layer's own
    /// sliding window; `None` = every held entry is visible.
    pub window: Option<ViewWindow>,
}

/// Attention sinks plus a local window (StreamingLLM's and InfLLM's in-chunk pattern): the
/// first `sinks` entries of the view are visible to every query after them; any other entry
/// at position `k` is visible to a query at position `q` iff `q - local < k <= q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewWindow {
    pub sinks: usize,
    pub local: usize,
}

impl<B: Backend> KvView<B> {
    /// A view of `keys`/`values` `[1, H_kv, T_kv, D]` at `positions`, with no padding and no
    /// window.
    pub fn dense(keys: Tensor<B, 4>, values: Tensor<B, 4>, positions: Vec<usize>) -> Self {
        Self {
            keys,
            values,
            positions,
            padding_mask: None,
            window: None,
        }
    }

    /// Number of entries `T_kv`.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// What a cache may observe from the attention of one forward pass.
#[derive(Clone, Debug)]
pub struct AttentionObservation<B: Backend> {
    /// Queries after RoPE, `[1, H_q, T_q, D]`, if the method asked for them.
    pub queries: Option<Tensor<B, 4>>,
    /// Softmax attention weights over the view, `[1, H_q, R, T_kv]`, if the method asked: the
    /// rows of the last `R` queries (`R = T_q` unless the method asked for fewer rows).
    pub weights: Option<Tensor<B, 4>>,
    /// Absolute positions of the queries of this forward (length `T_q`); weight rows belong to
    /// the last `R` of them.
    pub query_positions: Vec<usize>,
}

/// One layer's KV cache. See the module documentation for the call protocol.
pub trait KvCache<B: Backend>: Send {
    /// Appends the keys/values of new tokens.
    ///
    /// `keys`, `values`: `[1, H_kv, T_new, D]` (keys after RoPE); `positions`: the absolute
    /// positions of the `T_new` tokens.
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()>;

    /// Sees the queries of this forward before attention: called after [`Self::append`] and
    /// before [`Self::view`], only when the method declared
    /// [`crate::ObservationNeeds::queries_before_attention`].
    ///
    /// `queries`: `[1, H_q, T, D]` after RoPE; `positions`: their absolute positions.
    fn prepare(&mut self, _queries: &Tensor<B, 4>, _positions: &[usize]) -> Result<()> {
        Ok(())
    }

    /// What attention runs over; see [`KvView`].
    fn view(&self) -> KvView<B>;

    /// Receives queries and/or attention weights (only called when the method declared the need).
    fn observe(&mut self, _observation: AttentionObservation<B>) -> Result<()> {
        Ok(())
    }

    /// Compresses at a phase the method declared.
    fn compress(&mut self, _phase: CompressionPhase) -> Result<()> {
        Ok(())
    }

    /// Number of tokens held.
    fn len(&self) -> usize;

    /// Whether the cache holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tokens this cache is allowed to hold once compressed (its resolved budget), or `None`
    /// when it is unlimited. Recorded beside the tokens really held.
    fn budget_tokens(&self) -> Option<usize> {
        None
    }

    /// The original positions held per KV head, for caches that drop tokens (`None`: every
    /// token appended is held). Tests compare backends with it; records can tell whether a
    /// needle survived.
    fn held_positions(&self) -> Option<Vec<Vec<usize>>> {
        None
    }

    /// Bytes of the buffers this cache really holds (codes, scales, residuals, indices), as
    /// allocated on the device: a backend that stores wider elements than asked counts as such.
    fn memory_bytes(&self) -> usize;

    /// Bytes this cache keeps off the device (in host memory), not counted by
    /// [`Self::memory_bytes`]: InfLLM's offloaded blocks. Host bookkeeping (positions, scores)
    /// is not counted.
    fn host_memory_bytes(&self) -> usize {
        0
    }
}
