//! Llama-family decoder-only transformers: RMSNorm, RoPE, grouped-query attention, SwiGLU.
//!
//! The model holds weights only; every per-sequence state (the KV caches) is passed in through
//! [`SequenceState`](longctx_core::SequenceState), so that any registered KV method can be used.
//! [`TinyModel`] registers a small seeded random instance (`--model tiny`) that exercises every
//! code path without downloaded weights. [`SmolLm2`] registers SmolLM2-135M-Instruct
//! (`--model smollm2-135m`), loaded from a GGUF file by [`gguf::load_llama`].

mod attention;
mod config;
pub mod gguf;
mod model;
pub mod pretrained;
mod rope;
mod tiny;

pub use attention::attend;
pub use config::TransformerConfig;
pub use model::{LayerWeights, Transformer};
pub use pretrained::SmolLm2;
pub use rope::Rope;
pub use tiny::TinyModel;
