//! `streaming-llm`: attention sinks plus a recent window (reference section 2.4).
//!
//! Budget `B` per layer (a ratio of the prompt length, tokens or bytes) splits into
//! `n_init = floor(init_ratio * B)` sinks and `n_local = B - n_init` recent tokens (the paper's
//! 2.1% / 97.9%). The prompt is processed in chunks of `chunk_size` (8,192) tokens; inside a
//! chunk every query attends to the sinks and the last `n_local` tokens only, and after each
//! chunk the cache keeps `K[:n_init] ++ K[-n_local:]`, so the prompt itself is processed under
//! the budget. Each decode step appends one token and trims back to `B`.
//!
//! Positions (`positions`): `reindexed` (default, as the paper's code) rotates the held keys to
//! contiguous positions inside the cache, so RoPE distances are cache distances; `original`
//! keeps every key at the position it was written at. Deviation from the paper's two-pass
//! kernel: inside one chunk, a query deep in the chunk sees the sinks at its own distance, not
//! at the fixed distance `n_local + n_init - 1`; in decode the two agree.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, CompressionSchedule, Error, KvMethod, MethodCapabilities,
    MethodDescriptor, MethodFamily, ObservationNeeds, ParamSpec, Params, Result, ViewWindow,
};
use longctx_evict::{
    cache::NoScores, params, EvictMethod, LayerBudget, PolicyFactory, PositionMode, Protect,
    Scorer, TopKPolicy,
};

/// The `streaming-llm` method.
#[derive(Clone, Debug)]
pub struct StreamingLlm {
    pub init_ratio: f64,
    pub chunk_size: usize,
    pub positions: String,
    pub query_aware: bool,
}

/// Sinks and local window of a budget of `budget` tokens: `(floor(init_ratio * B), rest)`.
pub fn split(budget: usize, init_ratio: f64) -> (usize, usize) {
    let init = (init_ratio * budget as f64).floor() as usize;
    (init.min(budget), budget - init.min(budget))
}

impl MethodDescriptor for StreamingLlm {
    const NAME: &'static str = "streaming-llm";
    const DESCRIPTION: &'static str =
        "StreamingLLM: 2.1% attention sinks + 97.9% recent window of the budget, chunked prefill under the budget";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::float("init_ratio", 0.021, "share of the budget kept as attention sinks"),
            ParamSpec::int("chunk_size", 8192, "prompt tokens processed per chunk (compressed after each)"),
            ParamSpec::choice(
                "positions",
                &["reindexed", "original"],
                "reindexed",
                "keys at contiguous positions inside the cache (the paper's code) or where they were written",
            ),
            params::query_aware(),
        ]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        let init_ratio = params.float("init_ratio")?;
        if !(0.0..1.0).contains(&init_ratio) {
            return Err(Error::InvalidInput(format!(
                "streaming-llm: init_ratio must be in [0, 1), got {init_ratio}"
            )));
        }
        EvictMethod::boxed(
            Self::NAME,
            StreamingLlm {
                init_ratio,
                chunk_size: params.usize_at_least("chunk_size", 1)?,
                positions: params.str("positions")?.to_string(),
                query_aware: params::is_query_aware(params)?,
            },
        )
    }
}

impl<B: Backend> PolicyFactory<B> for StreamingLlm {
    fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: ObservationNeeds::default(),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: Some(self.chunk_size),
                after_prefill: true,
                decode_interval: Some(1),
            },
            uses_budget: true,
            compresses_question: self.query_aware,
            // Prefill attends over sinks and a window, evicting per chunk.
            exact_prefill: false,
        }
    }

    fn layer(
        &self,
        layer: &AttentionLayerSpec,
        _ctx: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        let positions =
            PositionMode::parse(<Self as MethodDescriptor>::NAME, &self.positions, layer)?;
        let (budget, protect, window) = match budget.tokens() {
            None => (usize::MAX, Protect::default(), None),
            Some(b) => {
                let (sinks, local) = split(b, self.init_ratio);
                (
                    b,
                    Protect {
                        sinks,
                        recent: local,
                    },
                    Some(ViewWindow { sinks, local }),
                )
            }
        };
        Ok((
            TopKPolicy {
                budget,
                protect,
                at_prefill_chunk: true,
                at_prefill_end: true,
                at_decode: true,
                prefill_window: window,
                positions,
            },
            Box::new(NoScores),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_core::{Budget, CompressionPhase};
    use longctx_evict::testing::{context, encoded, held_positions, layer};

    fn method(positions: &str) -> Box<dyn KvMethod<Flex>> {
        let raw = [("positions".to_string(), positions.to_string())].into();
        let p = Params::resolve("streaming-llm", &StreamingLlm::params(), &raw).unwrap();
        StreamingLlm::build::<Flex>(&p).unwrap()
    }

    #[test]
    fn splits_the_budget_as_the_paper() {
        // The paper's Llama-3 caps: T = 3750, 1875, 937.
        assert_eq!(split(3750, 0.021), (78, 3672));
        assert_eq!(split(1875, 0.021), (39, 1836));
        assert_eq!(split(937, 0.021), (19, 918));
        assert_eq!(split(100, 0.021), (2, 98));
    }

    #[test]
    fn keeps_sinks_and_the_recent_window_through_chunks_and_decode() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method("original");
        let mut cache = m
            .new_cache(&spec, &context(Budget::Tokens(100), 300, 1))
            .unwrap();
        let bytes_per_token = 2 * 2 * 4 * 4;
        for start in (0..300).step_by(64) {
            let pos: Vec<usize> = (start..(start + 64).min(300)).collect();
            let kv = encoded::<Flex>(2, 4, &pos, &device);
            cache.append(kv.clone(), kv, &pos).unwrap();
            cache.compress(CompressionPhase::PrefillChunk).unwrap();
            assert!(cache.len() <= 100);
        }
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        let want: Vec<usize> = [0, 1].into_iter().chain(202..300).collect();
        assert_eq!(held_positions(cache.as_ref()), vec![want.clone(), want]);
        assert_eq!(cache.memory_bytes(), 100 * bytes_per_token);
        for p in 300..305 {
            let kv = encoded::<Flex>(2, 4, &[p], &device);
            cache.append(kv.clone(), kv, &[p]).unwrap();
            cache.compress(CompressionPhase::Decode).unwrap();
        }
        let want: Vec<usize> = [0, 1].into_iter().chain(207..305).collect();
        assert_eq!(held_positions(cache.as_ref()), vec![want.clone(), want]);
        assert_eq!(cache.budget_tokens(), Some(100));
    }

    #[test]
    fn prefill_view_carries_the_window_and_decode_view_does_not() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method("original");
        let mut cache = m
            .new_cache(&spec, &context(Budget::Tokens(50), 80, 1))
            .unwrap();
        let pos: Vec<usize> = (0..80).collect();
        let kv = encoded::<Flex>(2, 4, &pos, &device);
        cache.append(kv.clone(), kv, &pos).unwrap();
        assert_eq!(
            cache.view().window,
            Some(ViewWindow {
                sinks: 1,
                local: 49
            })
        );
        cache.compress(CompressionPhase::PrefillChunk).unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(cache.view().window, None);
    }

    #[test]
    fn reindexed_positions_are_contiguous_and_end_at_the_newest() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method("reindexed");
        let mut cache = m
            .new_cache(&spec, &context(Budget::Tokens(10), 30, 1))
            .unwrap();
        let pos: Vec<usize> = (0..30).collect();
        let kv = encoded::<Flex>(2, 4, &pos, &device);
        cache.append(kv.clone(), kv, &pos).unwrap();
        cache.compress(CompressionPhase::PrefillChunk).unwrap();
        let view = cache.view();
        assert_eq!(view.positions, (20..30).collect::<Vec<_>>());
        // The newest keys keep their true position, so their rotation round-trips.
        let keys: Vec<f32> = view.keys.into_data().to_vec().unwrap();
        let last = &keys[9 * 4..10 * 4];
        assert!(last.iter().all(|&x| (x - 29.0).abs() < 1e-3), "{last:?}");
    }
}
