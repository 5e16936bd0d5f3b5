//! Helpers for the method crates' tests: small layer specs, keys that encode their head and
//! position, hand-made attention weights, and a driver that runs a cache through phases.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use longctx_core::{
    AttentionLayerSpec, AttentionObservation, Budget, CacheContext, KvMethod, RopeSpec,
};

/// An attention layer with `h_q` query heads, `h_kv` KV heads of `d` channels and NeoX RoPE.
pub fn layer(h_q: usize, h_kv: usize, d: usize) -> AttentionLayerSpec {
    AttentionLayerSpec {
        layer: 0,
        n_query_heads: h_q,
        n_kv_heads: h_kv,
        head_dim: d,
        sliding_window: None,
        rope: Some(RopeSpec::neox(d, 10_000.0)),
    }
}

/// A context with `budget` for a prompt of `prompt_tokens` in a `n_layers`-layer model.
pub fn context(budget: Budget, prompt_tokens: usize, n_layers: usize) -> CacheContext {
    CacheContext {
        budget,
        prompt_tokens,
        n_layers,
    }
}

/// `n` deterministic values in `[0, 1)` for `seed` (a linear congruential generator), for
/// scores, keys or weights that must be irregular but reproducible.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// `[1, h_kv, T, d]` whose every entry is `1000 * head + position`.
pub fn encoded<B: Backend>(
    h_kv: usize,
    d: usize,
    positions: &[usize],
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut v = Vec::with_capacity(h_kv * positions.len() * d);
    for h in 0..h_kv {
        for &p in positions {
            v.extend(std::iter::repeat_n((1000 * h + p) as f32, d));
        }
    }
    Tensor::from_data(TensorData::new(v, [1, h_kv, positions.len(), d]), device)
}

/// Weights `[1, h_q, rows, s]`, zero except `(head, row, slot, value)` entries.
pub fn weights<B: Backend>(
    h_q: usize,
    rows: usize,
    s: usize,
    entries: &[(usize, usize, usize, f32)],
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut v = vec![0.0f32; h_q * rows * s];
    for &(h, r, j, w) in entries {
        v[(h * rows + r) * s + j] = w;
    }
    Tensor::from_data(TensorData::new(v, [1, h_q, rows, s]), device)
}

/// An observation of `weights` for queries at `positions`.
pub fn observation<B: Backend>(
    weights: Tensor<B, 4>,
    positions: Vec<usize>,
) -> AttentionObservation<B> {
    AttentionObservation {
        queries: None,
        weights: Some(weights),
        query_positions: positions,
    }
}

/// A cache of `method` for `layer` and `ctx` with `prompt` tokens appended (encoded keys).
pub fn filled_cache<B: Backend>(
    method: &dyn KvMethod<B>,
    layer: &AttentionLayerSpec,
    ctx: &CacheContext,
    prompt: usize,
    device: &B::Device,
) -> Box<dyn longctx_core::KvCache<B>> {
    let mut cache = method.new_cache(layer, ctx).expect("cache");
    let positions: Vec<usize> = (0..prompt).collect();
    let kv = encoded::<B>(layer.n_kv_heads, layer.head_dim, &positions, device);
    cache.append(kv.clone(), kv, &positions).expect("append");
    cache
}

/// The original position each slot of each head holds, read back from the cache's view of
/// encoded values (`1000 * head + position`).
pub fn held_positions<B: Backend>(cache: &dyn longctx_core::KvCache<B>) -> Vec<Vec<usize>> {
    let values = cache.view().values;
    let [_, h, n, d] = values.dims();
    let v: Vec<f32> = values.into_data().convert::<f32>().to_vec().expect("f32");
    (0..h)
        .map(|head| {
            (0..n)
                .map(|j| (v[(head * n + j) * d] as usize) - 1000 * head)
                .collect()
        })
        .collect()
}
