//! KIVI's residual bookkeeping: after any prompt length and any number of decode steps, the
//! cache's content equals an independent reference quantization of the same keys/values, and
//! `memory_bytes` equals the buffers the bookkeeping should hold. On flex (f16 storage, exact
//! to the reference), ndarray (no f16: parameters and residual in f32) and wgpu (f16).
//!
//! With `key_position = pre_rope` the reference is `rotate(dequant(quant(unrotate(f16(k)))))`
//! with its own host rotation loops, and pre- and post-RoPE quantization store different codes.

use crate::common;

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::{backend::Backend, FloatDType, Tensor};

use common::*;
use longctx_core::{AttentionLayerSpec, CompressionPhase, KvCache, RopeScaling, RopeSpec};
use longctx_kvquant::{
    quantizer::param_dtype, KeyPosition, QuantAxis, QuantCacheConfig, QuantKvCache, QuantScheme,
    QuantSpec, ResidualPrecision,
};

const H: usize = 2;
const D: usize = 64;
const R: usize = 128;
const G: usize = 32;

fn kivi(bits: usize) -> QuantCacheConfig {
    let spec = |axis| QuantSpec {
        bits,
        group_size: G,
        axis,
        scheme: QuantScheme::Asymmetric,
    };
    QuantCacheConfig {
        keys: spec(QuantAxis::Channel),
        values: spec(QuantAxis::Token),
        residual_length: R,
        quantize_on_append: false,
        residual_precision: ResidualPrecision::F16,
        key_position: KeyPosition::PostRope,
    }
}

/// What KIVI holds for `total` tokens of which the newest `fresh` were appended after the last
/// flush (`flushed = total - fresh`): every flushed token rounded to f16 when the backend stores
/// f16 (the residual's storage and what tokens are quantized from), of which keys
/// `[0, flushed - flushed % R)` are quantized per channel and values `[0, flushed - R)` per
/// token; fresh tokens exactly as appended.
///
/// With `rope` (pre-RoPE keys), the quantized keys are `rotate(Q(unrotate(f16(k))))`, each token
/// rotated by its position (= its index here).
fn reference(
    x_k: &[f32],
    x_v: &[f32],
    total: usize,
    fresh: usize,
    (bits, f16): (usize, bool),
    rope: Option<&RopeSpec>,
) -> (Vec<f32>, Vec<f32>) {
    let flushed = total - fresh;
    let nk = flushed - flushed % R;
    let nv = flushed.saturating_sub(R);
    let rounded = |x: &[f32]| {
        let mut out = x.to_vec();
        for h in 0..H {
            for t in 0..flushed {
                for c in 0..D {
                    let i = at(total, D, h, t, c);
                    out[i] = stored_param(out[i], f16);
                }
            }
        }
        out
    };
    let (k16, v16) = (rounded(x_k), rounded(x_v));
    let (mut k, mut v) = (k16.clone(), v16.clone());
    match rope {
        None => reference_per_channel(&k16, &mut k, (H, total, D), (0, nk), bits, G, f16),
        Some(rope) => {
            let inv_freq = rope.inv_freq();
            let mut pre = k16.clone();
            host_rotate(&mut pre, total, nk, &inv_freq, true);
            reference_per_channel(&pre.clone(), &mut pre, (H, total, D), (0, nk), bits, G, f16);
            host_rotate(&mut pre, total, nk, &inv_freq, false);
            k = pre;
        }
    }
    reference_per_token(&v16, &mut v, (H, total, D), (0, nv), bits, G, f16);
    (k, v)
}

/// Rotates tokens `[0, n)` of a `[H, total, D]` buffer in place by their positions (= their
/// indices), half-split layout over all `D` channels (`inverse`: by minus the angle). Plain
/// f32 loops with the host's `cos`/`sin`.
fn host_rotate(x: &mut [f32], total: usize, n: usize, inv_freq: &[f32], inverse: bool) {
    let half = inv_freq.len();
    assert_eq!(2 * half, D);
    for h in 0..H {
        for t in 0..n {
            for (i, &f) in inv_freq.iter().enumerate() {
                let angle = t as f32 * f;
                let (c, s) = (angle.cos(), angle.sin());
                let (i1, i2) = (at(total, D, h, t, i), at(total, D, h, t, i + half));
                let (a, b) = (x[i1], x[i2]);
                if inverse {
                    x[i1] = a * c + b * s;
                    x[i2] = b * c - a * s;
                } else {
                    x[i1] = a * c - b * s;
                    x[i2] = b * c + a * s;
                }
            }
        }
    }
}

/// Bytes KIVI should hold after a flush at `total` tokens: stores allocated in steps of 128
/// tokens, 32-bit words, scales/minima and residual in f16 (`f16`) or f32.
fn expected_bytes(total: usize, (bits, f16): (usize, bool)) -> usize {
    let words = D / (32 / bits);
    let w = if f16 { 2 } else { 4 };
    let store = |n: usize, param_rows: usize, params_per_row: usize| {
        let cap = n.next_multiple_of(128);
        H * (cap * words * 4 + param_rows * params_per_row * 2 * w)
    };
    let nk = total - total % R;
    let nv = total.saturating_sub(R);
    let keys = store(nk, nk.next_multiple_of(128) / G, D) + H * (total - nk) * D * w;
    let values = store(nv, nv.next_multiple_of(128), D / G) + H * (total - nv) * D * w;
    keys + values
}

/// First `total` tokens of a `[H, T_all, D]` buffer, as `[H, total, D]`.
fn prefix(x: &[f32], t_all: usize, total: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(H * total * D);
    for h in 0..H {
        out.extend_from_slice(&x[at(t_all, D, h, 0, 0)..at(t_all, D, h, total, 0)]);
    }
    out
}

fn token<B: Backend>(x: &[f32], t_all: usize, t: usize) -> Tensor<B, 4> {
    let mut v = Vec::with_capacity(H * D);
    for h in 0..H {
        v.extend_from_slice(&x[at(t_all, D, h, t, 0)..at(t_all, D, h, t + 1, 0)]);
    }
    tensor::<B>(&v, H, 1, D)
}

/// Compares the cache's view with the reference: exactly on flex, to float rounding (`tol`)
/// elsewhere; a code one step off is far outside either.
fn check<B: Backend>(
    cache: &QuantKvCache<B>,
    (xk, xv): (&[f32], &[f32]),
    t_all: usize,
    (total, fresh): (usize, usize),
    storage: (usize, bool),
    (tol, rope): (f32, Option<&RopeSpec>),
) {
    let view = cache.view();
    assert_eq!(view.positions, (0..total).collect::<Vec<_>>());
    let (rk, rv) = reference(
        &prefix(xk, t_all, total),
        &prefix(xv, t_all, total),
        total,
        fresh,
        storage,
        rope,
    );
    let (k, v) = (values(view.keys), values(view.values));
    // Pre-RoPE: the forward rotation of the view uses the device's cos/sin, the reference the
    // host's; they differ by float rounding (the codes are the same, a code one step off
    // would be ~0.1 away).
    let key_tol = if rope.is_some() { tol.max(2e-5) } else { tol };
    assert!(
        max_abs_diff(&k, &rk) <= key_tol,
        "keys differ by {} at {total} tokens ({fresh} fresh), quantized {:?}",
        max_abs_diff(&k, &rk),
        cache.quantized_tokens()
    );
    assert!(
        max_abs_diff(&v, &rv) <= tol,
        "values differ by {} at {total} tokens ({fresh} fresh)",
        max_abs_diff(&v, &rv)
    );
}

fn run<B: Backend>(prompt: usize, decode_steps: usize, bits: usize, tol: f32) {
    run_keys::<B>(prompt, decode_steps, bits, (tol, None));
}

/// A KIVI cache, pre-RoPE when `rope` is given.
fn kivi_cache<B: Backend>(bits: usize, rope: Option<&RopeSpec>) -> QuantKvCache<B> {
    match rope {
        None => QuantKvCache::<B>::new(kivi(bits), D).unwrap(),
        Some(rope) => {
            let config = QuantCacheConfig {
                key_position: KeyPosition::PreRope,
                ..kivi(bits)
            };
            QuantKvCache::<B>::for_layer(config, &layer(Some(rope.clone())), "kivi").unwrap()
        }
    }
}

fn layer(rope: Option<RopeSpec>) -> AttentionLayerSpec {
    AttentionLayerSpec {
        layer: 7,
        n_query_heads: 2 * H,
        n_kv_heads: H,
        head_dim: D,
        sliding_window: None,
        rope,
    }
}

thread_local! {
    /// Whether [`input`] hands the cache strided tensors, as the model does.
    static TRANSPOSED_INPUTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The prompt's `[1, H, T, D]` keys or values (`x` in that order): a contiguous tensor, or with
/// [`TRANSPOSED_INPUTS`] the same values as the model produces them, `[1, T, H, D]` with heads
/// and tokens swapped (a strided view, not a copy).
fn input<B: Backend>(x: &[f32], tokens: usize) -> Tensor<B, 4> {
    if !TRANSPOSED_INPUTS.get() {
        return tensor::<B>(x, H, tokens, D);
    }
    let mut token_major = vec![0.0; x.len()];
    for h in 0..H {
        for t in 0..tokens {
            let (from, to) = ((h * tokens + t) * D, (t * H + h) * D);
            token_major[to..to + D].copy_from_slice(&x[from..from + D]);
        }
    }
    // `tensor` builds `[1, a, b, D]` from its `(a, b)`: here `[1, T, H, D]`.
    tensor::<B>(&token_major, tokens, H, D).swap_dims(1, 2)
}

fn run_keys<B: Backend>(
    prompt: usize,
    decode_steps: usize,
    bits: usize,
    (tol, rope): (f32, Option<&RopeSpec>),
) {
    let device = Default::default();
    let f16 = param_dtype::<B>(&device, FloatDType::F32) == FloatDType::F16;
    let storage = (bits, f16);
    let t_all = prompt + decode_steps;
    let xk = data(H, t_all, D, 1 + prompt as u64);
    let xv = data(H, t_all, D, 1000 + prompt as u64);
    let mut cache = kivi_cache::<B>(bits, rope);
    let tol = (tol, rope);
    cache
        .append(
            input::<B>(&prefix(&xk, t_all, prompt), prompt),
            input::<B>(&prefix(&xv, t_all, prompt), prompt),
            &(0..prompt).collect::<Vec<_>>(),
        )
        .unwrap();
    // Prefill attention sees the prompt exactly as appended.
    let x = (&xk[..], &xv[..]);
    check(&cache, x, t_all, (prompt, prompt), storage, tol);
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    check(&cache, x, t_all, (prompt, 0), storage, tol);
    assert_eq!(
        cache.memory_bytes(),
        expected_bytes(prompt, storage),
        "bytes after a {prompt}-token prefill"
    );
    for t in prompt..t_all {
        cache
            .append(token::<B>(&xk, t_all, t), token::<B>(&xv, t_all, t), &[t])
            .unwrap();
        if t % 37 == 0 || t + 1 == t_all {
            check(&cache, x, t_all, (t + 1, 1), storage, tol);
        }
        cache.compress(CompressionPhase::Decode).unwrap();
        let (k_res, v_res) = cache.residual_tokens();
        assert!(
            k_res < R && v_res <= R,
            "residuals {k_res}, {v_res} at {} tokens",
            t + 1
        );
        if t % 37 == 0 || (t + 1) % R == 0 || t + 1 == t_all {
            check(&cache, x, t_all, (t + 1, 0), storage, tol);
            assert_eq!(
                cache.memory_bytes(),
                expected_bytes(t + 1, storage),
                "bytes at {} tokens",
                t + 1
            );
        }
    }
}

/// Llama-3-style RoPE with all three frequency bands inside 1260 tokens.
fn llama3_rope() -> RopeSpec {
    RopeSpec {
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 256,
        },
        ..RopeSpec::neox(D, 500000.0)
    }
}

#[test]
fn kivi_pre_rope_bookkeeping() {
    let plain = RopeSpec::neox(D, 10000.0);
    for prompt in [1, 129] {
        run_keys::<Flex>(prompt, 300, 2, (0.0, Some(&plain)));
    }
    run_keys::<Flex>(1000, 260, 2, (0.0, Some(&llama3_rope())));
    run_keys::<Flex>(129, 40, 4, (0.0, Some(&llama3_rope())));
}

#[test]
fn kivi_pre_rope_bookkeeping_ndarray() {
    run_keys::<NdArray>(129, 140, 2, (1e-5, Some(&RopeSpec::neox(D, 10000.0))));
}

/// The ablation changes what is stored: the same keys give other codes before RoPE than after
/// (values are untouched), and both views stay close to the keys.
#[test]
fn pre_and_post_rope_store_different_codes() {
    let t = 256;
    let (xk, xv) = (data(H, t, D, 5), data(H, t, D, 6));
    let rope = RopeSpec::neox(D, 10000.0);
    let mut views = Vec::new();
    let mut codes = Vec::new();
    for rope in [None, Some(&rope)] {
        let mut cache = kivi_cache::<Flex>(2, rope);
        cache
            .append(
                tensor::<Flex>(&xk, H, t, D),
                tensor::<Flex>(&xv, H, t, D),
                &(0..t).collect::<Vec<_>>(),
            )
            .unwrap();
        cache.compress(CompressionPhase::PrefillEnd).unwrap();
        assert_eq!(cache.quantized_tokens(), (t, t - R));
        let code: Vec<i64> = cache
            .key_codes()
            .unwrap()
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        codes.push(code);
        let view = cache.view();
        views.push((values(view.keys), values(view.values)));
    }
    assert_eq!(codes[0].len(), codes[1].len());
    let differing = codes[0]
        .iter()
        .zip(&codes[1])
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing * 2 > codes[0].len(),
        "only {differing} of {} key code words differ between post- and pre-RoPE",
        codes[0].len()
    );
    assert_eq!(
        views[0].1, views[1].1,
        "values must not depend on key_position"
    );
    assert_ne!(views[0].0, views[1].0);
    for (k, _) in &views {
        let err = max_abs_diff(k, &xk);
        assert!(err > 0.01 && err < 10.0, "2-bit keys off by {err}");
    }
}

#[test]
fn pre_rope_without_a_rope_is_an_error() {
    let config = QuantCacheConfig {
        key_position: KeyPosition::PreRope,
        ..kivi(2)
    };
    let err = QuantKvCache::<Flex>::for_layer(config, &layer(None), "kivi")
        .err()
        .expect("pre_rope without a RoPE must fail")
        .to_string();
    assert!(
        err.contains("kivi") && err.contains("key_position") && err.contains("layer 7"),
        "{err}"
    );
    assert!(QuantKvCache::<Flex>::new(config, D).is_err());
    // A RoPE that does not fit the head is an error too.
    let bad = RopeSpec::neox(2 * D, 10000.0);
    assert!(QuantKvCache::<Flex>::for_layer(config, &layer(Some(bad)), "kivi").is_err());
    // Post-RoPE needs no RoPE.
    assert!(QuantKvCache::<Flex>::for_layer(kivi(2), &layer(None), "kivi").is_ok());
}

#[test]
fn kivi_bookkeeping_short_prompts() {
    for prompt in [1, 127, 128, 129] {
        run::<Flex>(prompt, 300, 2, 0.0);
    }
}

#[test]
fn kivi_bookkeeping_1000_token_prompt() {
    run::<Flex>(1000, 260, 2, 0.0);
    run::<Flex>(1000, 40, 4, 0.0);
}

#[test]
fn kivi_bookkeeping_ndarray() {
    for prompt in [1, 127, 128, 129] {
        run::<NdArray>(prompt, 300, 2, 1e-5);
    }
    run::<NdArray>(1000, 160, 4, 1e-5);
}

#[test]
fn kivi_bookkeeping_wgpu() {
    if wgpu_available() {
        run::<Wgpu>(1, 260, 2, 1e-5);
        run::<Wgpu>(1000, 40, 2, 1e-5);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn kivi_bookkeeping_cuda() {
    if cuda_requested() {
        type C = burn::backend::Cuda;
        run::<C>(1, 260, 2, 1e-5);
        run::<C>(1000, 40, 2, 1e-5);
        run::<C>(1000, 40, 4, 1e-5);
        run::<C>(3744, 20, 2, 1e-5);
    }
}

/// The model hands the cache strided keys/values (`[1, T, H, D]` swapped to `[1, H, T, D]`);
/// the cache must store what they hold, not what their memory order suggests.
#[test]
fn kivi_bookkeeping_transposed_inputs() {
    TRANSPOSED_INPUTS.set(true);
    run::<Flex>(300, 40, 2, 0.0);
    run::<NdArray>(129, 40, 4, 1e-5);
    if wgpu_available() {
        run::<Wgpu>(300, 40, 2, 1e-5);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn kivi_bookkeeping_transposed_inputs_cuda() {
    if cuda_requested() {
        TRANSPOSED_INPUTS.set(true);
        type C = burn::backend::Cuda;
        run::<C>(300, 40, 2, 1e-5);
        run::<C>(3744, 20, 4, 1e-5);
    }
}
