//! `adakv`: Ada-KV's head-adaptive budgets inside a layer (reference section 4; Feng et al.,
//! arXiv 2407.11550; kvpress `AdaKVPress`) over the score of a wrapped method: `scorer` =
//! `snapkv` (default), `pyramidkv` or `knorm`, with that method's parameters.
//!
//! At the end of prefill, each layer with a budget of `B` tokens per KV head (the wrapped
//! method's, so PyramidKV's falling layer budgets apply) shares its `H_kv x B` slots unevenly
//! ([`longctx_evict::select_adaptive`]): each head keeps its protected slots (SnapKV's window)
//! and its top `floor(alpha B)` (`alpha` = 0.20, counting the protected ones, as kvpress), and
//! the rest go to the highest scores over all heads, compared as the scorer gives them (Ada-KV
//! and kvpress do the same: attention scores are softmax mass, equal in total per head). Heads
//! whose attention is concentrated cede budget to heads whose attention is spread.
//!
//! The kept tokens are stored ragged ([`longctx_evict::RaggedStore`]), so the memory held is
//! that of `H_kv x B` tokens, never `H_kv x max_h n_h` (kvpress only masks). Decoding appends to
//! every head and evicts nothing more. `len()` is the tokens held per head on average
//! (`total / H_kv`, `B` after the compression).

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};

use longctx_core::{
    AttentionObservation, CompressionPhase, Error, KvCache, KvMethod, KvView, MethodDescriptor,
    ParamSpec, Params, Result,
};
use longctx_evict::{
    params, select_adaptive, EvictMethod, LayerPlan, PolicyFactory, PositionMode, RaggedStore,
};
use longctx_method_knorm::KNorm;
use longctx_method_pyramidkv::PyramidKv;
use longctx_method_snapkv::SnapKv;

/// The wrapped method named by `scorer`, from the validated parameters (each checked by its
/// own crate).
fn wrapped<B: Backend>(params: &Params) -> Result<Arc<dyn PolicyFactory<B>>> {
    Ok(match params.str("scorer")? {
        "snapkv" => Arc::new(SnapKv::from_params(params)?),
        "pyramidkv" => {
            // PyramidKv's build validates beta (and SnapKV's parameters).
            PyramidKv::build::<B>(params)?;
            Arc::new(PyramidKv {
                snapkv: SnapKv::from_params(params)?,
                beta: params.float("beta")?,
            })
        }
        "knorm" => {
            let decode_interval = params.usize_at_least("decode_interval", 0)?;
            if decode_interval > 0 {
                return Err(Error::InvalidInput(format!(
                    "adakv: decode_interval must be 0 (Ada-KV compresses once, at the end of \
                     prefill), got {decode_interval}"
                )));
            }
            Arc::new(KNorm {
                decode_interval,
                query_aware: params::is_query_aware(params)?,
            })
        }
        other => {
            return Err(Error::InvalidInput(format!(
                "adakv: unknown scorer '{other}'; valid scorers: snapkv, pyramidkv, knorm"
            )))
        }
    })
}

/// The `adakv` method (its caches are [`AdaKvCache`]s).
pub struct AdaKv;

impl MethodDescriptor for AdaKv {
    const NAME: &'static str = "adakv";
    const DESCRIPTION: &'static str =
        "Ada-KV: a layer's budget shared unevenly among its KV heads by a SnapKV, PyramidKV or KNorm score (safeguard alpha 0.2), stored ragged";

    fn params() -> Vec<ParamSpec> {
        let mut specs = vec![
            ParamSpec::choice(
                "scorer",
                &["snapkv", "pyramidkv", "knorm"],
                "snapkv",
                "the method whose scores, protected slots and layer budgets are shared out",
            ),
            ParamSpec::float(
                "alpha",
                0.20,
                "safeguard: each head first keeps its own top floor(alpha x budget) tokens",
            ),
        ];
        // The union of the wrapped methods' parameters (the unused ones are ignored).
        for spec in SnapKv::param_specs()
            .into_iter()
            .chain(PyramidKv::params())
            .chain(KNorm::params())
        {
            if specs.iter().all(|s| s.name != spec.name) {
                specs.push(spec);
            }
        }
        specs
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        Ok(Box::new(Self::method(
            wrapped::<B>(params)?,
            params.float("alpha")?,
        )?))
    }
}

impl AdaKv {
    /// Ada-KV over `factory`'s budgets, protected slots and scores, each head keeping at least
    /// `floor(alpha B)` of its own best tokens.
    pub fn method<B: Backend>(
        factory: Arc<dyn PolicyFactory<B>>,
        alpha: f64,
    ) -> Result<EvictMethod<B>> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::InvalidInput(format!(
                "adakv: alpha must be in [0, 1], got {alpha}"
            )));
        }
        Ok(EvictMethod::with_cache(Self::NAME, factory, move |plan| {
            Box::new(AdaKvCache {
                plan,
                alpha,
                store: RaggedStore::default(),
            })
        }))
    }
}

/// One layer's Ada-KV cache: the wrapped method's plan (budget, protected slots, scorer) over
/// a [`RaggedStore`].
pub struct AdaKvCache<B: Backend> {
    plan: LayerPlan<B>,
    alpha: f64,
    store: RaggedStore<B>,
}

impl<B: Backend> KvCache<B> for AdaKvCache<B> {
    /// `keys`, `values`: `[1, H_kv, T, D]`, appended to every head.
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        let policy = self.plan.build(keys.dtype().size())?;
        // The ragged view presents original positions only and has no sparse prefill pattern.
        if !matches!(policy.positions, PositionMode::Original) || policy.prefill_window.is_some() {
            return Err(Error::InvalidInput(
                "adakv: the wrapped method must keep original positions and no prefill window"
                    .into(),
            ));
        }
        self.store.append(keys, values, positions);
        Ok(())
    }

    /// `[1, H_kv, W, D]` right-aligned per head, with a `padding_mask` once heads differ.
    fn view(&self) -> KvView<B> {
        self.store
            .view()
            .expect("view() of an empty cache: append first")
    }

    fn observe(&mut self, observation: AttentionObservation<B>) -> Result<()> {
        self.plan.observe(&observation, self.store.tail())
    }

    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        // Once: afterwards heads hold different counts and decoding only appends. Scorers keep
        // no per-slot state past this point, so they are not told what was kept.
        let len = self.store.tail().len();
        let due = self.plan.due(phase, len);
        let (false, Some((budget, protect))) = (self.store.is_compacted(), due) else {
            return Ok(());
        };
        let scores = self.plan.scores(phase, self.store.tail())?;
        let keep = select_adaptive(len, budget, protect, &scores, self.alpha);
        self.store.retain(&keep)
    }

    fn len(&self) -> usize {
        self.store.total_tokens() / self.plan.layer().n_kv_heads.max(1)
    }

    fn budget_tokens(&self) -> Option<usize> {
        self.plan.budget_tokens()
    }

    fn held_positions(&self) -> Option<Vec<Vec<usize>>> {
        Some(self.store.positions())
    }

    fn memory_bytes(&self) -> usize {
        self.store.memory_bytes()
    }
}

#[cfg(test)]
mod tests;
