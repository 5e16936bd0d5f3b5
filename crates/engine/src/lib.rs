//! The runner: turns a model, a KV method, a budget and a prompt into generated tokens, with
//! timings and KV memory per layer.
//!
//! It branches only on the method's declared [`MethodCapabilities`](longctx_core::MethodCapabilities):
//! the prompt is prefilled in chunks when the method compresses per chunk, `compress` is called
//! at the end of prefill and every `decode_interval` decode steps when declared, and attention
//! weights or queries are computed only when the method observes them.

//!
//! Methods that compress only after prefill can share one: [`generate_shared`] prefills a
//! prompt's context once for several of them (see [`shared_prefill_groups`]).

mod generate;
mod sampling;
mod shared;

pub use generate::{
    generate, score_continuation, ContinuationScore, GenerationConfig, GenerationResult, StopReason,
};
pub use sampling::Sampling;
pub use shared::{
    generate_shared, score_continuation_shared, shared_prefill_groups, DEFAULT_MAX_SHARED,
};
