//! Core traits and types of longctx.
//!
//! Everything a model, a KV-cache method, a prompt compressor or a task needs to plug into the
//! runner lives here, so that each of those can be one small crate:
//!
//! - [`model::CausalLm`]: a causal language model that takes token ids, their positions and a
//!   caller-owned [`state::SequenceState`] (one entry per layer: a KV cache or a recurrent state).
//! - [`cache::KvCache`]: one layer's KV cache. It stores keys/values, hands attention a
//!   [`cache::KvView`], may observe queries or attention weights, and compresses at the phases
//!   its method declares in [`method::MethodCapabilities`].
//! - [`method::KvMethod`]: a named factory of per-layer caches for a [`budget::Budget`].
//! - [`compressor::PromptCompressor`]: text in, shorter text out.
//! - [`task::Task`]: samples plus a scorer with named metrics.
//! - [`registry::Registry`]: everything above registered by name with typed parameters; two
//!   methods compose as `SELECT+STORE` ([`compose`]).
//!
//! The runner (crate `longctx-engine`) branches on capabilities, never on method names.

pub mod budget;
pub mod cache;
pub mod compose;
pub mod compressor;
pub mod error;
pub mod method;
pub mod model;
pub mod params;
pub mod registry;
pub mod rope;
pub mod state;
pub mod task;
pub mod tensor_util;
pub mod tokenizer;

pub use budget::Budget;
pub use cache::{AttentionObservation, CompressionPhase, KvCache, KvView, ViewWindow};
pub use error::{Error, Result};
pub use method::{
    CacheContext, CompressionSchedule, KvMethod, MethodCapabilities, MethodDescriptor,
    MethodFamily, ObservationNeeds,
};
pub use model::{
    AttentionLayerSpec, CausalLm, LayerSpec, LoadedModel, LogitsSelection, ModelDescriptor,
    ModelInfo, ModelProvenance, RecurrentLayerSpec,
};
pub use params::{ParamKind, ParamSpec, ParamValue, Params, RawParams};
pub use registry::Registry;
pub use rope::{RopeLayout, RopeScaling, RopeSpec};
pub use state::{LayerState, RecurrentState, SequenceState};
pub use task::{Sample, ScoredSample, Task, TaskDescriptor};
pub use tokenizer::{ByteTokenizer, TextTokenizer};

/// Re-exported so that plug-in crates use exactly the burn version the core was built with.
pub use burn;
