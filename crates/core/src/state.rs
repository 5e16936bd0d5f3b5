//! Caller-owned sequence state: one entry per layer.

use burn::tensor::{backend::Backend, Tensor};

use crate::cache::{CompressionPhase, KvCache};
use crate::error::{Error, Result};
use crate::method::{CacheContext, KvMethod, ObservationNeeds};
use crate::model::LayerSpec;
use crate::tensor_util::tensor_bytes;

/// The fixed-size state of a recurrent layer (Mamba's conv and SSM states, an RG-LRU's hidden
/// state). The model decides what each slot holds; `None` means not yet initialised.
#[derive(Clone, Debug, Default)]
pub struct RecurrentState<B: Backend> {
    pub slots: Vec<Option<Tensor<B, 4>>>,
}

impl<B: Backend> RecurrentState<B> {
    /// A state with `n` empty slots.
    pub fn with_slots(n: usize) -> Self {
        Self {
            slots: vec![None; n],
        }
    }

    /// Bytes held by the slots.
    pub fn memory_bytes(&self) -> usize {
        self.slots.iter().flatten().map(tensor_bytes).sum()
    }
}

/// The state of one layer.
pub enum LayerState<B: Backend> {
    Attention(Box<dyn KvCache<B>>),
    Recurrent(RecurrentState<B>),
}

impl<B: Backend> LayerState<B> {
    /// Bytes held by this layer's state.
    pub fn memory_bytes(&self) -> usize {
        match self {
            LayerState::Attention(c) => c.memory_bytes(),
            LayerState::Recurrent(r) => r.memory_bytes(),
        }
    }
}

/// All per-layer state of one sequence, owned by the caller and passed to every forward call.
pub struct SequenceState<B: Backend> {
    pub layers: Vec<LayerState<B>>,
    /// What the attention layers must hand their caches now (the method's declared needs for
    /// the current phase; the runner switches it from prefill to decode).
    pub observe: ObservationNeeds,
    /// Number of tokens processed so far (the next absolute position).
    pub processed_tokens: usize,
}

impl<B: Backend> SequenceState<B> {
    /// Builds the state for a model's layers: a cache from `method` for each attention layer,
    /// an empty state for each recurrent layer.
    pub fn new(layers: &[LayerSpec], method: &dyn KvMethod<B>, ctx: &CacheContext) -> Result<Self> {
        let states = layers
            .iter()
            .map(|spec| match spec {
                LayerSpec::Attention(a) => method.new_cache(a, ctx).map(LayerState::Attention),
                LayerSpec::Recurrent(r) => {
                    Ok(LayerState::Recurrent(RecurrentState::with_slots(r.slots)))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers: states,
            observe: method.capabilities().observes,
            processed_tokens: 0,
        })
    }

    /// The attention cache of layer `layer`, or an error if that layer is recurrent.
    pub fn cache_mut(&mut self, layer: usize) -> Result<&mut Box<dyn KvCache<B>>> {
        match self.layers.get_mut(layer) {
            Some(LayerState::Attention(c)) => Ok(c),
            Some(LayerState::Recurrent(_)) => Err(Error::Other(format!(
                "layer {layer} is recurrent, but an attention cache was asked for"
            ))),
            None => Err(Error::Other(format!(
                "no layer {layer} in the sequence state"
            ))),
        }
    }

    /// The recurrent state of layer `layer`, or an error if that layer is an attention layer.
    pub fn recurrent_mut(&mut self, layer: usize) -> Result<&mut RecurrentState<B>> {
        match self.layers.get_mut(layer) {
            Some(LayerState::Recurrent(r)) => Ok(r),
            Some(LayerState::Attention(_)) => Err(Error::Other(format!(
                "layer {layer} is an attention layer, but a recurrent state was asked for"
            ))),
            None => Err(Error::Other(format!(
                "no layer {layer} in the sequence state"
            ))),
        }
    }

    /// Calls `compress(phase)` on every attention cache.
    pub fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        for layer in &mut self.layers {
            if let LayerState::Attention(c) = layer {
                c.compress(phase)?;
            }
        }
        Ok(())
    }

    /// Bytes held per layer.
    pub fn memory_bytes_per_layer(&self) -> Vec<usize> {
        self.layers.iter().map(LayerState::memory_bytes).collect()
    }

    /// Bytes held off the device per layer ([`KvCache::host_memory_bytes`]; 0 for recurrent
    /// layers).
    pub fn host_memory_bytes_per_layer(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(c) => c.host_memory_bytes(),
                LayerState::Recurrent(_) => 0,
            })
            .collect()
    }

    /// Resolved token budget per layer (`None` for recurrent layers and unlimited caches).
    pub fn budget_tokens_per_layer(&self) -> Vec<Option<usize>> {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(c) => c.budget_tokens(),
                LayerState::Recurrent(_) => None,
            })
            .collect()
    }

    /// Original positions held per layer and KV head, where the cache reports them.
    pub fn held_positions_per_layer(&self) -> Vec<Option<Vec<Vec<usize>>>> {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(c) => c.held_positions(),
                LayerState::Recurrent(_) => None,
            })
            .collect()
    }

    /// Tokens held per layer (`None` for recurrent layers).
    pub fn tokens_per_layer(&self) -> Vec<Option<usize>> {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(c) => Some(c.len()),
                LayerState::Recurrent(_) => None,
            })
            .collect()
    }
}
