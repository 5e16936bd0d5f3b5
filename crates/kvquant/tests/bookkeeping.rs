//! KIVI's residual bookkeeping: after any prompt length and any number of decode steps, the
//! cache's content equals an independent reference quantization of the same keys/values, and
//! `memory_bytes` equals the buffers the bookkeeping should hold. On flex (f16 storage, exact
//! to the reference), ndarray (no f16: parameters and residual in f32) and wgpu (f16).

mod common;

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::{backend::Backend, FloatDType, Tensor};

use common::*;
use longctx_core::{CompressionPhase, KvCache};
use longctx_kvquant::{
    quantizer::param_dtype, QuantAxis, QuantCacheConfig, QuantKvCache, QuantScheme, QuantSpec,
    ResidualPrecision,
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
    }
}

/// What KIVI holds for `total` tokens of which the newest `fresh` were appended after the last
/// flush (`flushed = total - fresh`): every flushed token rounded to f16 when the backend stores
/// f16 (the residual's storage and what tokens are quantized from), of which keys
/// `[0, flushed - flushed % R)` are quantized per channel and values `[0, flushed - R)` per
/// token; fresh tokens exactly as appended.
fn reference(
    x_k: &[f32],
    x_v: &[f32],
    total: usize,
    fresh: usize,
    (bits, f16): (usize, bool),
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
    reference_per_channel(&k16, &mut k, (H, total, D), (0, nk), bits, G, f16);
    reference_per_token(&v16, &mut v, (H, total, D), (0, nv), bits, G, f16);
    (k, v)
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
    tol: f32,
) {
    let view = cache.view();
    assert_eq!(view.positions, (0..total).collect::<Vec<_>>());
    let (rk, rv) = reference(
        &prefix(xk, t_all, total),
        &prefix(xv, t_all, total),
        total,
        fresh,
        storage,
    );
    let (k, v) = (values(view.keys), values(view.values));
    assert!(
        max_abs_diff(&k, &rk) <= tol,
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
    let device = Default::default();
    let f16 = param_dtype::<B>(&device, FloatDType::F32) == FloatDType::F16;
    let storage = (bits, f16);
    let t_all = prompt + decode_steps;
    let xk = data(H, t_all, D, 1 + prompt as u64);
    let xv = data(H, t_all, D, 1000 + prompt as u64);
    let mut cache = QuantKvCache::<B>::new(kivi(bits), D).unwrap();
    cache
        .append(
            tensor::<B>(&prefix(&xk, t_all, prompt), H, prompt, D),
            tensor::<B>(&prefix(&xv, t_all, prompt), H, prompt, D),
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
