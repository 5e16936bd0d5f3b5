//! `snapkv`: one-shot selection at the end of prefill (reference section 4).
//!
//! The last `window` (32) prompt tokens form an observation window. At the end of prefill each
//! prefix token's score is the attention the window's queries give it (softmax rows summed
//! over the window), smoothed by a 1-D pool of `kernel` (5) tokens (`avg`, counting the zero
//! padding as PyTorch's `avg_pool1d` does, or `max`) and averaged over the query heads of each
//! KV head's group (as kvpress). Each KV head keeps its top `B - window` prefix tokens plus the
//! window; decoding is unchanged. Only the window's rows of attention weights are computed
//! (the output keeps the fused kernel).
//!
//! With `query_aware = false` (default) the window is the last `window` tokens of the context:
//! the question is processed after the selection and is not scored.

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, AttentionObservation, CacheContext, CompressionPhase, CompressionSchedule,
    Error, KvMethod, MethodCapabilities, MethodDescriptor, MethodFamily, ObservationNeeds,
    ParamSpec, Params, Result,
};
use longctx_evict::{
    params, DenseStore, EvictMethod, LayerBudget, PolicyFactory, PositionMode, Protect, Scorer,
    TopKPolicy,
};

/// Pooling of the window scores along the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Avg,
    Max,
}

/// SnapKV's settings; PyramidKV reuses them with its own layer budgets.
#[derive(Clone, Debug)]
pub struct SnapKv {
    pub window: usize,
    pub kernel: usize,
    pub pool: Pool,
    pub query_aware: bool,
}

impl SnapKv {
    /// SnapKV's parameters (shared with PyramidKV).
    pub fn param_specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int(
                "window",
                32,
                "observation window: the last prompt tokens whose attention scores the rest",
            ),
            ParamSpec::int(
                "kernel",
                5,
                "pooling kernel along the tokens (odd; 1 = no pooling)",
            ),
            ParamSpec::choice(
                "pool",
                &["avg", "max"],
                "avg",
                "pooling of the window scores",
            ),
            params::query_aware(),
        ]
    }

    /// Settings from validated parameters.
    pub fn from_params(params: &Params) -> Result<Self> {
        let kernel = params.usize_at_least("kernel", 1)?;
        if kernel % 2 == 0 {
            return Err(Error::InvalidInput(format!(
                "snapkv: kernel must be odd, got {kernel}"
            )));
        }
        Ok(Self {
            window: params.usize_at_least("window", 1)?,
            kernel,
            pool: if params.str("pool")? == "max" {
                Pool::Max
            } else {
                Pool::Avg
            },
            query_aware: params::is_query_aware(params)?,
        })
    }

    /// The capabilities of a SnapKV-scored method.
    pub fn capabilities(&self) -> MethodCapabilities {
        MethodCapabilities {
            family: MethodFamily::TokenDropping,
            observes: ObservationNeeds::last_weights(self.window),
            observes_decode: ObservationNeeds::default(),
            schedule: CompressionSchedule {
                prefill_chunk_tokens: None,
                after_prefill: true,
                decode_interval: None,
            },
            uses_budget: true,
            compresses_question: self.query_aware,
            exact_prefill: true,
        }
    }

    /// The policy and scorer of one layer keeping `budget` tokens.
    pub fn layer_policy<B: Backend>(
        &self,
        layer: &AttentionLayerSpec,
        budget: Option<usize>,
    ) -> (TopKPolicy, Box<dyn Scorer<B>>) {
        (
            TopKPolicy {
                budget: budget.unwrap_or(usize::MAX),
                protect: Protect {
                    sinks: 0,
                    recent: self.window,
                },
                at_prefill_chunk: false,
                at_prefill_end: true,
                at_decode: false,
                prefill_window: None,
                positions: PositionMode::Original,
            },
            Box::new(WindowScorer {
                settings: self.clone(),
                n_kv_heads: layer.n_kv_heads,
                rows: Vec::new(),
                done: false,
            }),
        )
    }
}

impl MethodDescriptor for SnapKv {
    const NAME: &'static str = "snapkv";
    const DESCRIPTION: &'static str =
        "SnapKV: top tokens per KV head by the pooled attention of the last 32 prompt tokens, selected once after prefill";

    fn params() -> Vec<ParamSpec> {
        Self::param_specs()
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        EvictMethod::boxed(Self::NAME, Self::from_params(params)?)
    }
}

impl<B: Backend> PolicyFactory<B> for SnapKv {
    fn capabilities(&self) -> MethodCapabilities {
        SnapKv::capabilities(self)
    }

    fn layer(
        &self,
        layer: &AttentionLayerSpec,
        _: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        Ok(self.layer_policy(layer, budget.tokens()))
    }
}

/// One observed attention row: the query's position and its weights per query head.
struct Row {
    position: usize,
    per_query_head: Vec<Vec<f32>>,
}

/// Keeps the rows of the last `window` queries and scores the prefix from them.
pub struct WindowScorer {
    settings: SnapKv,
    n_kv_heads: usize,
    rows: Vec<Row>,
    done: bool,
}

/// Pools `x` with a window of `kernel` (odd), stride 1 and zero padding of `kernel / 2`
/// (`avg` divides by `kernel`, counting the padding, as PyTorch's default; `max` ignores it).
pub fn pool1d(x: &[f32], kernel: usize, pool: Pool) -> Vec<f32> {
    let half = kernel / 2;
    (0..x.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(x.len());
            match pool {
                Pool::Avg => x[lo..hi].iter().sum::<f32>() / kernel as f32,
                Pool::Max => x[lo..hi].iter().copied().fold(f32::NEG_INFINITY, f32::max),
            }
        })
        .collect()
}

impl<B: Backend> Scorer<B> for WindowScorer {
    fn observe(&mut self, observation: &AttentionObservation<B>, _: &DenseStore<B>) -> Result<()> {
        let (Some(weights), false) = (&observation.weights, self.done) else {
            return Ok(());
        };
        let [_, h_q, r, s] = weights.dims();
        let flat: Vec<f32> = weights
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| Error::Other(format!("reading attention weights: {e:?}")))?;
        let positions = &observation.query_positions[observation.query_positions.len() - r..];
        for (i, &position) in positions.iter().enumerate() {
            let per_query_head = (0..h_q)
                .map(|h| flat[(h * r + i) * s..(h * r + i + 1) * s].to_vec())
                .collect();
            self.rows.push(Row {
                position,
                per_query_head,
            });
        }
        // Only the newest `window` queries form the observation window.
        let newest = self.rows.iter().map(|r| r.position).max().unwrap_or(0);
        let window = self.settings.window;
        self.rows.retain(|r| r.position + window > newest);
        Ok(())
    }

    fn scores(&mut self, _: CompressionPhase, store: &DenseStore<B>) -> Result<Vec<Vec<f32>>> {
        self.done = true;
        let n = store.len();
        let prefix = n.saturating_sub(self.settings.window);
        let h_q = self.rows.first().map_or(0, |r| r.per_query_head.len());
        if h_q == 0 {
            return Err(Error::Other(
                "snapkv: no attention rows were observed before the end of prefill".into(),
            ));
        }
        let groups = h_q / self.n_kv_heads;
        let mut per_kv = vec![vec![0.0f32; n]; self.n_kv_heads];
        for qh in 0..h_q {
            // Window rows summed over the prefix keys (later keys carry no weight: padded).
            let mut summed = vec![0.0f32; prefix];
            for row in &self.rows {
                for (acc, &w) in summed.iter_mut().zip(&row.per_query_head[qh]) {
                    *acc += w;
                }
            }
            let pooled = pool1d(&summed, self.settings.kernel, self.settings.pool);
            for (acc, p) in per_kv[qh / groups].iter_mut().zip(pooled) {
                *acc += p / groups as f32;
            }
        }
        self.rows.clear();
        Ok(per_kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_core::Budget;
    use longctx_evict::testing::{
        context, filled_cache, held_positions, layer, observation, weights,
    };

    fn method(kernel: usize, window: usize) -> Box<dyn KvMethod<Flex>> {
        let raw = [
            ("kernel".to_string(), kernel.to_string()),
            ("window".to_string(), window.to_string()),
        ]
        .into();
        let p = Params::resolve("snapkv", &SnapKv::params(), &raw).unwrap();
        SnapKv::build::<Flex>(&p).unwrap()
    }

    #[test]
    fn keeps_the_top_prefix_tokens_per_kv_head_plus_the_window() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method(1, 4);
        let mut cache = filled_cache::<Flex>(
            m.as_ref(),
            &spec,
            &context(Budget::Tokens(8), 16, 1),
            16,
            &device,
        );
        // Window rows 0..4 (positions 12..16); query heads 0,1 -> KV head 0; 2,3 -> KV head 1.
        let w = weights::<Flex>(
            4,
            4,
            16,
            &[
                (0, 0, 1, 1.0),
                (0, 1, 6, 0.8),
                (1, 2, 9, 1.2),
                (1, 3, 10, 1.0),
                (2, 0, 0, 0.9),
                (2, 1, 2, 0.7),
                (3, 2, 3, 0.6),
                (3, 3, 11, 0.5),
            ],
            &device,
        );
        cache.observe(observation(w, (0..16).collect())).unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(
            held_positions(cache.as_ref()),
            vec![
                vec![1, 6, 9, 10, 12, 13, 14, 15],
                vec![0, 2, 3, 11, 12, 13, 14, 15]
            ]
        );
        assert_eq!(cache.memory_bytes(), 8 * 2 * 2 * 4 * 4);
    }

    #[test]
    fn pooling_counts_the_padding() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let pooled = pool1d(&x, 5, Pool::Avg);
        let want = [0.6, 1.2, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 7.6, 6.0];
        for (p, w) in pooled.iter().zip(want) {
            assert!((p - w).abs() < 1e-5, "{pooled:?}");
        }
        assert_eq!(pool1d(&[1.0, 5.0, 2.0], 3, Pool::Max), vec![5.0, 5.0, 5.0]);
    }

    #[test]
    fn a_budget_below_the_window_keeps_the_newest() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method(5, 4);
        let mut cache = filled_cache::<Flex>(
            m.as_ref(),
            &spec,
            &context(Budget::Tokens(3), 16, 1),
            16,
            &device,
        );
        let w = weights::<Flex>(4, 4, 16, &[(0, 0, 1, 1.0)], &device);
        cache.observe(observation(w, (0..16).collect())).unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(held_positions(cache.as_ref())[0], vec![13, 14, 15]);
    }

    #[test]
    fn rows_from_earlier_chunks_count_and_older_ones_drop() {
        let device = Default::default();
        let spec = layer(4, 2, 4);
        let m = method(1, 4);
        let mut cache = m
            .new_cache(&spec, &context(Budget::Tokens(5), 16, 1))
            .unwrap();
        // Chunk 1: positions 0..14, rows of the last 4 queries (10..14) over 14 slots.
        let pos: Vec<usize> = (0..14).collect();
        let kv = longctx_evict::testing::encoded::<Flex>(2, 4, &pos, &device);
        cache.append(kv.clone(), kv, &pos).unwrap();
        let w = weights::<Flex>(
            4,
            4,
            14,
            &[(0, 0, 3, 5.0), (0, 2, 7, 1.0), (2, 3, 8, 1.0)],
            &device,
        );
        cache.observe(observation(w, pos.clone())).unwrap();
        // Chunk 2: positions 14, 15; rows over 16 slots. Row of query 10 (token 3) leaves.
        let pos2 = vec![14, 15];
        let kv = longctx_evict::testing::encoded::<Flex>(2, 4, &pos2, &device);
        cache.append(kv.clone(), kv, &pos2).unwrap();
        let w = weights::<Flex>(4, 2, 16, &[(1, 1, 5, 0.5)], &device);
        cache.observe(observation(w, pos2)).unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        // KV head 0 keeps token 7 (row of query 12) over 5 (0.5 / 2 heads), not token 3.
        assert_eq!(held_positions(cache.as_ref())[0], vec![7, 12, 13, 14, 15]);
        assert_eq!(held_positions(cache.as_ref())[1], vec![8, 12, 13, 14, 15]);
    }
}
