//! Helpers shared by the kvquant integration tests: deterministic data and an independent
//! host-side reference quantizer (plain f32 loops, burn's `f16` for the 16-bit rounding).

#![allow(dead_code)]

use burn::tensor::f16;
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Deterministic pseudo-random values in `[-1, 1)` times a per-channel scale, so channels have
/// very different ranges (as keys do) and groups differ.
pub fn data(heads: usize, tokens: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v = Vec::with_capacity(heads * tokens * dim);
    for _h in 0..heads {
        for _t in 0..tokens {
            for c in 0..dim {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0;
                v.push(u * (1.0 + (c % 7) as f32 * 1.5));
            }
        }
    }
    v
}

/// `[1, H, T, D]` from row-major values.
pub fn tensor<B: Backend>(v: &[f32], heads: usize, tokens: usize, dim: usize) -> Tensor<B, 4> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), [1, heads, tokens, dim]),
        &Default::default(),
    )
}

/// Row-major f32 values of a tensor.
pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// A group parameter as stored: rounded to f16 when `f16_params` (flex, wgpu), else kept in f32
/// (ndarray, which has no f16 storage).
pub fn stored_param(x: f32, f16_params: bool) -> f32 {
    if f16_params {
        round_f16(x)
    } else {
        x
    }
}

/// Asymmetric min-max quantize/dequantize of one group, parameters rounded to their storage
/// type (f16 when `f16_params`, else f32) first. Returns the reconstruction and the stored step size.
pub fn reference_group(xs: &[f32], bits: usize, f16_params: bool) -> (Vec<f32>, f32) {
    let qmax = ((1u32 << bits) - 1) as f32;
    let min = xs.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let scale = stored_param((max - min) / qmax, f16_params);
    let min = stored_param(min, f16_params);
    let div = if scale == 0.0 { 1.0 } else { scale };
    let out = xs
        .iter()
        .map(|&x| ((x - min) / div).round_ties_even().clamp(0.0, qmax) * scale + min)
        .collect();
    (out, scale)
}

/// Index of element `(h, t, c)` in a row-major `[H, T, D]` buffer.
pub fn at(t_len: usize, dim: usize, h: usize, t: usize, c: usize) -> usize {
    (h * t_len + t) * dim + c
}

/// Reference per-token quantization (groups of `group` channels) of tokens `[from, to)`,
/// written into `out` (same layout as `x`); parameters stored in f16 when `f16_params`.
pub fn reference_per_token(
    x: &[f32],
    out: &mut [f32],
    (heads, t_len, dim): (usize, usize, usize),
    (from, to): (usize, usize),
    bits: usize,
    group: usize,
    f16_params: bool,
) {
    for h in 0..heads {
        for t in from..to {
            for g0 in (0..dim).step_by(group) {
                let g1 = (g0 + group).min(dim);
                let xs: Vec<f32> = (g0..g1).map(|c| x[at(t_len, dim, h, t, c)]).collect();
                let (q, _) = reference_group(&xs, bits, f16_params);
                for (c, v) in (g0..g1).zip(q) {
                    out[at(t_len, dim, h, t, c)] = v;
                }
            }
        }
    }
}

/// Reference per-channel quantization (groups of `group` tokens) of tokens `[from, to)`.
pub fn reference_per_channel(
    x: &[f32],
    out: &mut [f32],
    (heads, t_len, dim): (usize, usize, usize),
    (from, to): (usize, usize),
    bits: usize,
    group: usize,
    f16_params: bool,
) {
    for h in 0..heads {
        for c in 0..dim {
            for t0 in (from..to).step_by(group) {
                let xs: Vec<f32> = (t0..t0 + group)
                    .map(|t| x[at(t_len, dim, h, t, c)])
                    .collect();
                let (q, _) = reference_group(&xs, bits, f16_params);
                for (t, v) in (t0..t0 + group).zip(q) {
                    out[at(t_len, dim, h, t, c)] = v;
                }
            }
        }
    }
}

/// `max |a - b|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Whether wgpu can run here; panics unless `LONGCTX_SKIP_WGPU` allows skipping.
pub fn wgpu_available() -> bool {
    let probe = std::panic::catch_unwind(|| {
        Tensor::<burn::backend::Wgpu, 1>::ones([2], &Default::default())
            .sum()
            .into_scalar()
    });
    match probe {
        Ok(_) => true,
        Err(_) if std::env::var("LONGCTX_SKIP_WGPU").is_ok() => {
            eprintln!("skipping wgpu: no usable Vulkan device");
            false
        }
        Err(_) => {
            panic!("wgpu is not usable; install mesa-vulkan-drivers, or set LONGCTX_SKIP_WGPU=1")
        }
    }
}

/// Whether to run the CUDA variants: only when `LONGCTX_CUDA_TESTS=1` (CI has no GPU).
#[cfg(feature = "cuda")]
pub fn cuda_requested() -> bool {
    let on = std::env::var("LONGCTX_CUDA_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipping cuda: set LONGCTX_CUDA_TESTS=1 on a machine with an NVIDIA GPU");
    }
    on
}
