//! KIVI's residual bookkeeping: after any prompt length and any number of decode steps, the
//! cache's content equals an independent reference quantization of the same keys/values, and
//! `memory_bytes` equals the buffers the bookkeeping should hold.

mod common;

use burn::backend::Flex;
use burn::tensor::Tensor;

use common::*;
use longctx_core::{CompressionPhase, KvCache};
use longctx_kvquant::{
    QuantAxis, QuantCacheConfig, QuantKvCache, QuantScheme, QuantSpec, ResidualPrecision,
};

type B = Flex;

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
/// flush (`flushed = total - fresh`): keys `[0, flushed - flushed % R)` quantized per channel,
/// values `[0, flushed - R)` per token, the rest of the flushed tokens in f16, fresh ones exact.
fn reference(
    x_k: &[f32],
    x_v: &[f32],
    total: usize,
    fresh: usize,
    bits: usize,
) -> (Vec<f32>, Vec<f32>) {
    let flushed = total - fresh;
    let nk = flushed - flushed % R;
    let nv = flushed.saturating_sub(R);
    let mut k: Vec<f32> = x_k.to_vec();
    let mut v: Vec<f32> = x_v.to_vec();
    for (out, n) in [(&mut k, nk), (&mut v, nv)] {
        for h in 0..H {
            for t in n..flushed {
                for c in 0..D {
                    let i = at(total, D, h, t, c);
                    out[i] = round_f16(out[i]);
                }
            }
        }
    }
    reference_per_channel(x_k, &mut k, (H, total, D), (0, nk), bits, G);
    reference_per_token(x_v, &mut v, (H, total, D), (0, nv), bits, G);
    (k, v)
}

/// Bytes KIVI should hold after a flush at `total` tokens: stores allocated in steps of 128
/// tokens, 32-bit words, f16 scales/minima and f16 residual.
fn expected_bytes(total: usize, bits: usize) -> usize {
    let words = D / (32 / bits);
    let store = |n: usize, param_rows: usize, params_per_row: usize| {
        let cap = n.next_multiple_of(128);
        H * (cap * words * 4 + param_rows * params_per_row * 2 * 2)
    };
    let nk = total - total % R;
    let nv = total.saturating_sub(R);
    let keys = store(nk, nk.next_multiple_of(128) / G, D) + H * (total - nk) * D * 2;
    let values = store(nv, nv.next_multiple_of(128), D / G) + H * (total - nv) * D * 2;
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

fn token(x: &[f32], t_all: usize, t: usize) -> Tensor<B, 4> {
    let mut v = Vec::with_capacity(H * D);
    for h in 0..H {
        v.extend_from_slice(&x[at(t_all, D, h, t, 0)..at(t_all, D, h, t + 1, 0)]);
    }
    tensor::<B>(&v, H, 1, D)
}

fn check(
    cache: &QuantKvCache<B>,
    xk: &[f32],
    xv: &[f32],
    t_all: usize,
    total: usize,
    fresh: usize,
    bits: usize,
) {
    let view = cache.view();
    assert_eq!(view.positions, (0..total).collect::<Vec<_>>());
    let (rk, rv) = reference(
        &prefix(xk, t_all, total),
        &prefix(xv, t_all, total),
        total,
        fresh,
        bits,
    );
    let (k, v) = (values(view.keys), values(view.values));
    assert_eq!(
        max_abs_diff(&k, &rk),
        0.0,
        "keys differ at {total} tokens ({fresh} fresh), quantized {:?}",
        cache.quantized_tokens()
    );
    assert_eq!(
        max_abs_diff(&v, &rv),
        0.0,
        "values differ at {total} tokens ({fresh} fresh)"
    );
}

fn run(prompt: usize, decode_steps: usize, bits: usize) {
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
    check(&cache, &xk, &xv, t_all, prompt, prompt, bits);
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    check(&cache, &xk, &xv, t_all, prompt, 0, bits);
    assert_eq!(
        cache.memory_bytes(),
        expected_bytes(prompt, bits),
        "bytes after a {prompt}-token prefill"
    );
    for t in prompt..t_all {
        cache
            .append(token(&xk, t_all, t), token(&xv, t_all, t), &[t])
            .unwrap();
        if t % 37 == 0 || t + 1 == t_all {
            check(&cache, &xk, &xv, t_all, t + 1, 1, bits);
        }
        cache.compress(CompressionPhase::Decode).unwrap();
        let (k_res, v_res) = cache.residual_tokens();
        assert!(
            k_res < R && v_res <= R,
            "residuals {k_res}, {v_res} at {} tokens",
            t + 1
        );
        if t % 37 == 0 || (t + 1) % R == 0 || t + 1 == t_all {
            check(&cache, &xk, &xv, t_all, t + 1, 0, bits);
            assert_eq!(
                cache.memory_bytes(),
                expected_bytes(t + 1, bits),
                "bytes at {} tokens",
                t + 1
            );
        }
    }
}

#[test]
fn kivi_bookkeeping_short_prompts() {
    for prompt in [1, 127, 128, 129] {
        run(prompt, 300, 2);
    }
}

#[test]
fn kivi_bookkeeping_1000_token_prompt() {
    run(1000, 260, 2);
    run(1000, 40, 4);
}
