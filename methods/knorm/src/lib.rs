//! `knorm`: keeps the keys of lowest L2 norm (reference section 4).
//!
//! Score `-||k||_2` per KV head and token: low key norms correlate with high attention
//! received (sink-like tokens). Attention-free, so both phases keep the fused kernel. Keys are
//! scored after RoPE, which preserves norms. Compresses once at the end of prefill (kvpress);
//! `decode_interval = N > 0` also trims back to the budget every `N` decode steps.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, CompressionPhase, CompressionSchedule, Error, KvMethod,
    MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds, ParamSpec, Params,
    Result,
};
use longctx_evict::{
    params, DenseStore, EvictMethod, LayerBudget, PolicyFactory, Scorer, TopKPolicy,
};

/// The `knorm` method.
#[derive(Clone, Debug)]
pub struct KNorm {
    pub decode_interval: usize,
    pub query_aware: bool,
}

impl MethodDescriptor for KNorm {
    const NAME: &'static str = "knorm";
    const DESCRIPTION: &'static str =
        "KNorm: keeps the lowest-L2-norm keys per KV head, attention-free, after prefill";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int(
                "decode_interval",
                0,
                "also trim to the budget every N decode steps (0 = prefill only)",
            ),
            params::query_aware(),
        ]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        EvictMethod::boxed(
            Self::NAME,
            KNorm {
                decode_interval: params.usize_at_least("decode_interval", 0)?,
                query_aware: params::is_query_aware(params)?,
            },
        )
    }
}

impl<B: Backend> PolicyFactory<B> for KNorm {
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval: (self.decode_interval > 0).then_some(self.decode_interval),
            },
            uses_budget: true,
            compresses_question: self.query_aware,
            exact_prefill: true,
        }
    }

    fn layer(
        &self,
        _: &AttentionLayerSpec,
        _: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        Ok((
            TopKPolicy {
                at_decode: self.decode_interval > 0,
                ..TopKPolicy::after_prefill(budget)
            },
            Box::new(KeyNorms),
        ))
    }
}

/// `-||k||_2` of every held key.
pub struct KeyNorms;

impl<B: Backend> Scorer<B> for KeyNorms {
    fn scores(&mut self, _: CompressionPhase, store: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        let keys = store
            .keys()
            .ok_or_else(|| Error::Other("knorm: compress before any append".into()))?;
        let [_, h, n, _] = keys.dims();
        let norms = keys
            .clone()
            .powi_scalar(2)
            .sum_dim(3)
            .sqrt()
            .reshape([h * n]);
        let flat: Vec<f32> = norms
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| Error::Other(format!("reading key norms: {e:?}")))?;
        Ok(flat
            .chunks(n.max(1))
            .map(|c| c.iter().map(|x| -x).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Tensor, TensorData};
    use longctx_core::Budget;
    use longctx_evict::testing::{context, held_positions, layer};

    #[test]
    fn keeps_the_lowest_norm_keys_per_head() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let p = Params::resolve("knorm", &KNorm::params(), &Default::default()).unwrap();
        let m = KNorm::build::<Flex>(&p).unwrap();
        let mut cache = m
            .new_cache(&spec, &context(Budget::Tokens(4), 10, 1))
            .unwrap();
        let head0 = [1.0f32, 8.0, 5.0, 2.0, 9.0, 6.0, 3.0, 10.0, 7.0, 4.0];
        let mut k = Vec::new();
        for h in 0..2 {
            for &x in &head0 {
                let norm = if h == 0 { x } else { 11.0 - x };
                k.extend([norm, 0.0, 0.0, 0.0]);
            }
        }
        let keys = Tensor::<Flex, 4>::from_data(TensorData::new(k, [1, 2, 10, 4]), &device);
        let values =
            longctx_evict::testing::encoded::<Flex>(2, 4, &(0..10).collect::<Vec<_>>(), &device);
        cache
            .append(keys, values, &(0..10).collect::<Vec<_>>())
            .unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(
            held_positions(cache.as_ref()),
            vec![vec![0, 3, 6, 9], vec![1, 4, 7, 8]]
        );
    }

    #[test]
    fn a_bytes_budget_is_met_with_the_stored_width() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let p = Params::resolve("knorm", &KNorm::params(), &Default::default()).unwrap();
        let m = KNorm::build::<Flex>(&p).unwrap();
        // f32 keys and values: 2 x 2 heads x 4 channels x 4 bytes = 64 bytes per token.
        let bytes = 5 * 64 + 63;
        let mut cache = m
            .new_cache(&spec, &context(Budget::Bytes(bytes), 10, 1))
            .unwrap();
        let pos: Vec<usize> = (0..10).collect();
        let kv = longctx_evict::testing::encoded::<Flex>(2, 4, &pos, &device);
        cache.append(kv.clone(), kv, &pos).unwrap();
        assert_eq!(cache.memory_bytes(), 10 * 64);
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(cache.budget_tokens(), Some(5));
        assert_eq!(cache.memory_bytes(), 5 * 64);
        assert!(cache.memory_bytes() <= bytes);
    }
}
