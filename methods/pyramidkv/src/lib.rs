//! `pyramidkv`: SnapKV's selection with per-layer budgets that fall linearly from the bottom
//! layer to the top one (reference section 4), averaging the uniform budget `B`.
//!
//! `min = B / beta`, `max = 2B - min`; if `max >= L - window` then `max = L - window` and
//! `min = 2B - max`; if `L >= max >= min >= window` fails, every layer keeps `B` (kvpress's
//! fallback to SnapKV). Layer `l` of `n` keeps `max - l (max - min) / (n - 1)` tokens, rounded so
//! that the layers' budgets sum to exactly `n B` (largest remainders).

use burn::tensor::backend::Backend;

use longctx_core::{
    AttentionLayerSpec, CacheContext, KvMethod, MethodCapabilities, MethodDescriptor, ParamSpec,
    Params, Result,
};
use longctx_evict::{EvictMethod, LayerBudget, PolicyFactory, Scorer, TopKPolicy};
use longctx_method_snapkv::SnapKv;

/// The `pyramidkv` method.
#[derive(Clone, Debug)]
pub struct PyramidKv {
    pub snapkv: SnapKv,
    pub beta: f64,
}

/// Budgets of `n_layers` layers averaging `budget` for a prompt of `len` tokens.
pub fn layer_budgets(
    budget: usize,
    len: usize,
    window: usize,
    beta: f64,
    n_layers: usize,
) -> Vec<usize> {
    let b = budget as f64;
    let mut min = b / beta;
    let mut max = 2.0 * b - min;
    let limit = len.saturating_sub(window) as f64;
    if max >= limit {
        max = limit;
        min = 2.0 * b - max;
    }
    let valid = len as f64 >= max && max >= min && min >= window as f64;
    if n_layers < 2 || !valid {
        return vec![budget; n_layers];
    }
    let step = (max - min) / (n_layers - 1) as f64;
    let exact: Vec<f64> = (0..n_layers).map(|l| max - l as f64 * step).collect();
    let mut out: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let short = (n_layers * budget).saturating_sub(out.iter().sum());
    let mut order: Vec<usize> = (0..n_layers).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.partial_cmp(&fa)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for &l in order.iter().take(short) {
        out[l] += 1;
    }
    out
}

impl MethodDescriptor for PyramidKv {
    const NAME: &'static str = "pyramidkv";
    const DESCRIPTION: &'static str =
        "PyramidKV: SnapKV selection with layer budgets falling linearly from bottom to top (beta 20)";

    fn params() -> Vec<ParamSpec> {
        let mut p = SnapKv::param_specs();
        p.push(ParamSpec::float(
            "beta",
            20.0,
            "the top layer keeps about budget / beta tokens",
        ));
        p
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        let beta = params.float("beta")?;
        if !(beta >= 1.0 && beta.is_finite()) {
            return Err(longctx_core::Error::InvalidInput(format!(
                "pyramidkv: beta must be >= 1, got {beta}"
            )));
        }
        EvictMethod::boxed(
            Self::NAME,
            PyramidKv {
                snapkv: SnapKv::from_params(params)?,
                beta,
            },
        )
    }
}

impl<B: Backend> PolicyFactory<B> for PyramidKv {
    fn capabilities(&self) -> MethodCapabilities {
        self.snapkv.capabilities()
    }

    fn layer(
        &self,
        layer: &AttentionLayerSpec,
        ctx: &CacheContext,
        budget: LayerBudget,
    ) -> Result<(TopKPolicy, Box<dyn Scorer<B>>)> {
        let budget = budget.tokens().map(|b| {
            layer_budgets(
                b,
                ctx.prompt_tokens,
                self.snapkv.window,
                self.beta,
                ctx.n_layers,
            )
            .get(layer.layer)
            .copied()
            .unwrap_or(b)
        });
        Ok(self.snapkv.layer_policy(layer, budget))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_at_4x_falls_from_1825_to_47() {
        let b = layer_budgets(936, 3744, 32, 20.0, 30);
        assert_eq!(b.len(), 30);
        assert_eq!(b.iter().sum::<usize>(), 30 * 936);
        assert_eq!((b[0], b[1], b[28], b[29]), (1825, 1764, 108, 47));
        assert!(b.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn clips_at_the_prompt_and_falls_back_to_uniform() {
        let b = layer_budgets(150, 200, 0, 20.0, 2);
        assert_eq!(b, vec![200, 100]);
        // min = 20 / 20 = 1 < window 32: uniform.
        assert_eq!(layer_budgets(20, 100, 32, 20.0, 4), vec![20; 4]);
    }
}
