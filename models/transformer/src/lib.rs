//! Llama-family decoder-only transformers: RMSNorm, RoPE, grouped-query attention, SwiGLU.
//!
//! The model holds weights only; every per-sequence state (the KV caches) is passed in through
//! [`SequenceState`](longctx_core::SequenceState), so that any registered KV method can be used.
//! [`TinyModel`] registers a small seeded random instance (`--model tiny`) that exercises every
//! code path without downloaded weights.

mod attention;
mod config;
mod model;
mod rope;
mod tiny;

pub use attention::attend;
pub use config::TransformerConfig;
pub use model::{LayerWeights, Transformer};
pub use rope::Rope;
pub use tiny::TinyModel;
