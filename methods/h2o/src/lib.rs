//! `h2o`: heavy hitters plus recent tokens (reference section 2.3).
//!
//! Budget `B` per layer splits into `floor(B/2)` heavy hitters and `B - floor(B/2)` recent
//! tokens (the paper's equal `heavy_ratio = recent_ratio`, e.g. 0.125 + 0.125 of the length at
//! 4x). Scores are the attention each held token has received, accumulated over steps and
//! summed over the query heads of its KV head's group. As in the paper, prefill runs on the
//! fused path with no scores and no eviction; every decode step attends to the whole cache,
//! adds its attention to the scores, and evicts down to `B`: the last `recent` tokens plus the
//! `heavy` older ones with the highest scores. Evicted tokens are physically removed.
//!
//! `evict_after_prefill = true` (H2O's original paper): prefill also computes attention
//! weights (all rows: bound the memory with `--max-prefill-chunk`), accumulates them, and
//! evicts at the end of prefill.
//!
//! Deviations from the paper's code: selection is per KV head (scores summed over its query
//! heads), because physical removal with grouped-query attention stores one set per KV head;
//! the paper selects per query head over repeated keys and only masks. The budget is
//! `B = floor(L / r)` of the prompt length `L`, where the paper takes `int(L_keys / (2r))`
//! twice from the key count at the first decode step (one token more).

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, AttentionObservation, CacheContext, CompressionPhase, CompressionSchedule,
    KvMethod, MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds, ParamSpec,
    Params, Result,
};
use longctx_evict::{
    group_weight_sums, params, DenseStore, EvictMethod, Keep, LayerBudget, PolicyFactory,
    PositionMode, Protect, Scorer, TopKPolicy,
};

/// The `h2o` method.
#[derive(Clone, Debug)]
pub struct H2o {
    pub evict_after_prefill: bool,
    pub query_aware: bool,
}

/// Heavy hitters and recent tokens of a budget: `(floor(B/2), B - floor(B/2))`.
pub fn split(budget: usize) -> (usize, usize) {
    (budget / 2, budget - budget / 2)
}

impl MethodDescriptor for H2o {
    const NAME: &'static str = "h2o";
    const DESCRIPTION: &'static str =
        "H2O: heavy hitters by accumulated attention + recent window, equal halves of the budget, evicted each decode step";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::bool(
                "evict_after_prefill",
                false,
                "also score the prompt's attention and evict at the end of prefill (the paper's runs do not)",
            ),
            params::query_aware(),
        ]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        EvictMethod::boxed(
            Self::NAME,
            H2o {
                evict_after_prefill: params.bool("evict_after_prefill")?,
                query_aware: params::is_query_aware(params)?,
            },
        )
    }
}

impl<B: Backend> PolicyFactory<B> for H2o {
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: if self.evict_after_prefill {
                ObservationNeeds::all_weights()
            } else {
                ObservationNeeds::default()
            },
            observes_decode: ObservationNeeds::all_weights(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: self.evict_after_prefill,
                decode_interval: Some(1),
            },
            uses_budget: true,
            // Nothing is compressed in prefill unless asked, so the question needs no split.
            compresses_question: self.query_aware || !self.evict_after_prefill,
            // Everything appended is held until the first eviction (PrefillEnd or decode).
            exact_prefill: true,
        }
    }

    fn layer(
        &self,
        layer: &AttentionLayerSpec,
        _ctx: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        let (budget, recent) = match budget.tokens() {
            None => (usize::MAX, 0),
            Some(b) => (b, split(b).1),
        };
        Ok((
            TopKPolicy {
                budget,
                protect: Protect { sinks: 0, recent },
                at_prefill_chunk: false,
                at_prefill_end: self.evict_after_prefill,
                at_decode: true,
                prefill_window: None,
                positions: PositionMode::Original,
            },
            Box::new(HeavyHitters {
                n_kv_heads: layer.n_kv_heads,
                accumulated: Vec::new(),
            }),
        ))
    }
}

/// Accumulated attention per KV head and held slot.
pub struct HeavyHitters {
    n_kv_heads: usize,
    accumulated: Vec<Vec<f32>>,
}

impl<B: Backend> Scorer<B> for HeavyHitters {
    fn observe(&mut self, observation: &AttentionObservation<B>, _: &DenseStore<B>) -> Result<()> {
        let Some(weights) = &observation.weights else {
            return Ok(());
        };
        let sums = group_weight_sums(weights, self.n_kv_heads);
        if self.accumulated.is_empty() {
            self.accumulated = vec![Vec::new(); self.n_kv_heads];
        }
        for (acc, new) in self.accumulated.iter_mut().zip(sums) {
            acc.resize(new.len().max(acc.len()), 0.0);
            for (a, w) in acc.iter_mut().zip(new) {
                *a += w;
            }
        }
        Ok(())
    }

    fn scores(&mut self, _: CompressionPhase, store: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        let len = store.len();
        Ok(self
            .accumulated
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.resize(len, 0.0);
                a
            })
            .collect())
    }

    fn retained(&mut self, keep: &Keep) {
        for (acc, slots) in self.accumulated.iter_mut().zip(&keep.per_head) {
            *acc = slots
                .iter()
                .map(|&s| acc.get(s).copied().unwrap_or(0.0))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_core::{Budget, KvCache};
    use longctx_evict::testing::{
        context, encoded, filled_cache, held_positions, layer, observation, weights,
    };

    fn method() -> Box<dyn KvMethod<Flex>> {
        let p = Params::resolve("h2o", &H2o::params(), &Default::default()).unwrap();
        H2o::build::<Flex>(&p).unwrap()
    }

    fn step(cache: &mut dyn KvCache<Flex>, pos: usize, entries: &[(usize, usize, usize, f32)]) {
        let device = Default::default();
        let kv = encoded::<Flex>(2, 4, &[pos], &device);
        cache.append(kv.clone(), kv, &[pos]).unwrap();
        let s = cache.len();
        cache
            .observe(observation(
                weights::<Flex>(4, 1, s, entries, &device),
                vec![pos],
            ))
            .unwrap();
        cache.compress(CompressionPhase::Decode).unwrap();
    }

    #[test]
    fn evicts_by_accumulated_attention_per_kv_head() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method();
        // 12 prompt tokens, budget 6: 3 heavy + 3 recent.
        let mut cache = filled_cache::<Flex>(
            m.as_ref(),
            &spec,
            &context(Budget::Tokens(6), 12, 1),
            12,
            &device,
        );
        assert_eq!(cache.len(), 12, "no eviction in prefill");
        // Query heads 0-1 belong to KV head 0, 2-3 to KV head 1.
        step(
            cache.as_mut(),
            12,
            &[
                (0, 0, 2, 0.4),
                (0, 0, 5, 0.3),
                (0, 0, 7, 0.2),
                (0, 0, 12, 0.1),
                (1, 0, 5, 0.5),
                (1, 0, 2, 0.2),
                (1, 0, 9, 0.15),
                (1, 0, 12, 0.15),
                (2, 0, 0, 0.5),
                (2, 0, 1, 0.3),
                (2, 0, 12, 0.2),
                (3, 0, 3, 0.6),
                (3, 0, 0, 0.2),
                (3, 0, 12, 0.2),
            ],
        );
        assert_eq!(
            held_positions(cache.as_ref()),
            vec![vec![2, 5, 7, 10, 11, 12], vec![0, 1, 3, 10, 11, 12]]
        );
        assert_eq!(cache.memory_bytes(), 6 * 2 * 2 * 4 * 4);
        // Slot 3 of KV head 0 holds token 10: it leaves the recent window and stays as a heavy
        // hitter; token 7 (the lowest score) goes.
        step(cache.as_mut(), 13, &[(0, 0, 3, 0.9), (1, 0, 6, 0.1)]);
        assert_eq!(
            held_positions(cache.as_ref())[0],
            vec![2, 5, 10, 11, 12, 13]
        );
    }

    #[test]
    fn splits_the_budget_in_halves() {
        assert_eq!(split(936), (468, 468));
        assert_eq!(split(7), (3, 4));
    }
}
