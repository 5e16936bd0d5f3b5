//! Decoder-only transformers of the Llama family (Llama, Mistral, Qwen2) and Gemma-3:
//! RMSNorm, RoPE (with linear and Llama-3 scaling), grouped-query attention, global and
//! sliding-window layers, SwiGLU or gated GELU.
//!
//! The model holds weights only; every per-sequence state (the KV caches) is passed in through
//! [`SequenceState`](longctx_core::SequenceState), so that any registered KV method can be used.
//! [`TinyModel`] registers a small seeded random instance (`--model tiny`) that exercises every
//! code path without downloaded weights. Real weights come from GGUF files ([`gguf`]) or
//! Hugging Face checkpoints ([`hf`]); [`pretrained`] registers `smollm2-135m`, `gemma3-270m`
//! and `hf` (any local GGUF file or Hugging Face directory).

mod attention;
mod config;
pub mod gguf;
pub mod hf;
mod model;
pub mod pretrained;
mod rope;
mod tiny;
mod weights;

pub use attention::attend;
pub use config::{Family, LayerType, TransformerConfig};
pub use model::{LayerWeights, QuantLinears, Transformer};
pub use pretrained::{Gemma3_270m, LocalModel, SmolLm2};
pub use rope::{Rope, RopeScaling, RopeSpec};
pub use tiny::TinyModel;
pub use weights::WeightDtype;
