//! `infllm`: block retrieval from host memory (reference section 2.5; InfLLM's
//! `inf_llm/attention/context_manager.py`).
//!
//! The budget `T` per layer (a ratio of the prompt length, tokens or bytes) splits into
//! `n_init = floor(init_ratio * T)` sinks, `topk = floor(floor(context_ratio * T) / block_size)`
//! retrieved blocks and `n_local = max(local_floor, T - n_init - block_size * topk)` local
//! tokens ([`split`]). The prompt is processed in chunks of `exc_block_size` (512) tokens; tokens
//! that leave the local window fill the sinks, then wait on the host until `block_size` of them
//! form a block. Each block keeps, per query head, a representative key: the mean of the
//! `repr_topk` keys of the block that received the most attention while in the local window.
//! Before attention, each chunk (and each decode step) scores the blocks by the dot product of
//! its mean query with the representative keys, summed over query heads, and loads the top
//! `topk` blocks; attention runs over `[sinks ; retrieved blocks ; local window]`. See
//! [`cache::InfLlmCache`] for positions, memory and the deviations from InfLLM's code.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, CompressionSchedule, Error, KvCache, KvMethod,
    MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds, ParamSpec, Params,
    Result,
};
use longctx_evict::params;

pub mod cache;

pub use cache::InfLlmCache;

/// The `infllm` method: its parameters.
#[derive(Clone, Debug)]
pub struct InfLlm {
    pub block_size: usize,
    pub repr_topk: usize,
    pub exc_block_size: usize,
    pub init_ratio: f64,
    pub context_ratio: f64,
    pub local_floor: usize,
    pub query_aware: bool,
}

/// How a budget of `T` tokens divides (see [`split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Sinks: the first tokens of the sequence, always attended.
    pub n_init: usize,
    /// Blocks retrieved for each chunk or decode step.
    pub topk: usize,
    /// Recent tokens in the sliding local window.
    pub n_local: usize,
    /// Tokens per block.
    pub block_size: usize,
}

impl Split {
    /// Tokens attended and held on the device once the cache is full:
    /// `n_init + block_size * topk + n_local`. Exceeds the budget asked for when the local floor
    /// binds (`T - n_init - block_size * topk < local_floor`).
    pub fn tokens(&self) -> usize {
        self.n_init
            .saturating_add(self.block_size.saturating_mul(self.topk))
            .saturating_add(self.n_local)
    }
}

/// The reference's split of a budget of `budget` tokens:
/// `n_init = floor(init_ratio T)`, `topk = floor(floor(context_ratio T) / block_size)`,
/// `n_local = max(local_floor, T - n_init - block_size topk)`.
pub fn split(
    budget: usize,
    block_size: usize,
    init_ratio: f64,
    context_ratio: f64,
    local_floor: usize,
) -> Split {
    let t = budget as f64;
    let n_init = ((init_ratio * t).floor() as usize).min(budget);
    let context = ((context_ratio * t).floor() as usize).min(budget - n_init);
    let topk = context / block_size.max(1);
    let rest = budget - n_init - topk * block_size;
    Split {
        n_init,
        topk,
        n_local: rest.max(local_floor),
        block_size,
    }
}

impl InfLlm {
    /// The split of `budget` tokens under these parameters.
    pub fn split(&self, budget: usize) -> Split {
        split(
            budget,
            self.block_size,
            self.init_ratio,
            self.context_ratio,
            self.local_floor,
        )
    }

    fn needs() -> ObservationNeeds {
        ObservationNeeds {
            queries_before_attention: true,
            ..ObservationNeeds::all_weights()
        }
    }
}

impl MethodDescriptor for InfLlm {
    const NAME: &'static str = "infllm";
    const DESCRIPTION: &'static str =
        "InfLLM: sinks + local window on the device, past tokens in host-memory blocks, the top-k blocks retrieved per 512-token chunk and decode step";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("block_size", 128, "tokens per memory block"),
            ParamSpec::int(
                "repr_topk",
                4,
                "keys per block (the most attended in the local window) averaged into its representative key",
            ),
            ParamSpec::int(
                "exc_block_size",
                512,
                "prompt tokens per chunk; blocks are retrieved once per chunk from its mean query",
            ),
            ParamSpec::float("init_ratio", 0.021, "share of the budget kept as attention sinks"),
            ParamSpec::float(
                "context_ratio",
                0.324,
                "share of the budget given to retrieved blocks (floor(ratio T / block_size) blocks)",
            ),
            ParamSpec::int(
                "local_floor",
                512,
                "the local window is at least this many tokens (the budget is exceeded when it binds)",
            ),
            params::query_aware(),
        ]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        let init_ratio = params.float("init_ratio")?;
        let context_ratio = params.float("context_ratio")?;
        if !(0.0..1.0).contains(&init_ratio)
            || !(0.0..1.0).contains(&context_ratio)
            || init_ratio + context_ratio > 1.0
        {
            return Err(Error::InvalidInput(format!(
                "infllm: init_ratio and context_ratio must be in [0, 1) and sum to at most 1, got {init_ratio} and {context_ratio}"
            )));
        }
        let block_size = params.usize_at_least("block_size", 1)?;
        let repr_topk = params.usize_at_least("repr_topk", 1)?;
        if repr_topk > block_size {
            return Err(Error::InvalidInput(format!(
                "infllm: repr_topk ({repr_topk}) cannot exceed block_size ({block_size})"
            )));
        }
        Ok(Box::new(InfLlm {
            block_size,
            repr_topk,
            exc_block_size: params.usize_at_least("exc_block_size", 1)?,
            init_ratio,
            context_ratio,
            local_floor: params.usize_at_least("local_floor", 1)?,
            query_aware: params::is_query_aware(params)?,
        }))
    }
}

impl<B: Backend> KvMethod<B> for InfLlm {
    fn name(&self) -> &str {
        <Self as MethodDescriptor>::NAME
    }

    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: Self::needs(),
            observes_decode: Self::needs(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: Some(self.exc_block_size),
                after_prefill: true,
                decode_interval: Some(1),
            },
            uses_budget: true,
            compresses_question: self.query_aware,
            // Chunks attend over sinks, retrieved blocks and a local window only.
            exact_prefill: false,
        }
    }

    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        Ok(Box::new(InfLlmCache::new(self.clone(), layer, ctx)?))
    }
}

#[cfg(test)]
mod tests;
