//! The [`KvMethod`] side of a quantized cache, shared by the `kivi`, `flexgen` and `int8` crates
//! (each of which only turns its parameters into a [`QuantCacheConfig`]).

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, CompressionSchedule, KvCache, KvMethod, MethodCapabilities,
    MethodFamily, ObservationNeeds, Result,
};

use crate::cache::{QuantCacheConfig, QuantKvCache};

/// A quantization method: one [`QuantKvCache`] per attention layer.
#[derive(Clone, Debug)]
pub struct QuantMethod {
    name: &'static str,
    config: QuantCacheConfig,
}

impl QuantMethod {
    /// A method named `name` with a validated `config`.
    pub fn new(name: &'static str, config: QuantCacheConfig) -> Result<Self> {
        config.validate(name)?;
        Ok(Self { name, config })
    }

    /// [`Self::new`], boxed as the [`KvMethod`] a `MethodDescriptor::build` returns.
    pub fn boxed<B: Backend>(
        name: &'static str,
        config: QuantCacheConfig,
    ) -> Result<Box<dyn KvMethod<B>>> {
        Ok(Box::new(Self::new(name, config)?))
    }

    /// The cache configuration.
    pub fn config(&self) -> &QuantCacheConfig {
        &self.config
    }

    /// The paper's nominal compression ratio at `tokens` tokens for heads of `head_dim`.
    pub fn formula_ratio(&self, head_dim: usize, tokens: usize) -> f64 {
        crate::memory::formula_ratio(&self.config, head_dim, tokens)
    }
}

impl<B: Backend> KvMethod<B> for QuantMethod {
    fn name(&self) -> &str {
        self.name
    }

    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::Quantization,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            // Flush after the prompt and after every decode step: attention of a step sees the
            // step's own key/value in full precision, as KIVI's decode does.
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval: Some(1),
            },
            uses_budget: false,
            // The whole prompt is prefilled before the first flush, question included.
            compresses_question: true,
            // The residual holds the prompt as appended until the first flush, unless the
            // cache quantizes in `append` (FlexGen's `quantize_prefill`).
            exact_prefill: !self.config.quantize_on_append,
        }
    }

    fn new_cache(
        &self,
        layer: &AttentionLayerSpec,
        _ctx: &CacheContext,
    ) -> Result<Box<dyn KvCache<B>>> {
        Ok(Box::new(QuantKvCache::<B>::for_layer(
            self.config,
            layer,
            self.name,
        )?))
    }
}
