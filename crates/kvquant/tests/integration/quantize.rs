//! Packing and quantization round trips on flex, ndarray and wgpu, and the RoPE un-rotation
//! and re-rotation of pre-RoPE key quantization.

use crate::common;

use burn::backend::{Flex, NdArray, Wgpu};
use burn::tensor::{backend::Backend, FloatDType, Int, Tensor, TensorData};

use common::*;
use longctx_core::{RopeScaling, RopeSpec};
use longctx_kvquant::{KeyRotation, QuantAxis, QuantScheme, QuantSpec, Quantizer, WordLayout};

/// Every bit width, a ragged tail (`n` not a multiple of the codes per word), all code values
/// including the top one (which reaches the word's sign bit).
fn packing_round_trips<B: Backend>() {
    let device = Default::default();
    for bits in 1..=8 {
        let layout = WordLayout::for_backend::<B>(bits, &device);
        assert_eq!(
            layout.word_bytes(),
            4,
            "{bits}-bit codes not in 32-bit words"
        );
        for n in [
            1,
            layout.codes_per_word(),
            37,
            64,
            3 * layout.codes_per_word() + 1,
        ] {
            let max = (1u32 << bits) - 1;
            let codes: Vec<i32> = (0..2 * 3 * n)
                .map(|i| ((i * 7 + i / 3) as u32 % (max + 1)) as i32)
                .collect();
            let mut codes = codes;
            codes[0] = max as i32; // the top code in the lowest field...
            let last = codes.len() - 1;
            codes[last] = max as i32; // ...and wherever the last one lands
            let t = Tensor::<B, 4, Int>::from_data(
                TensorData::new(codes.clone(), [1, 2, 3, n]),
                &device,
            );
            let packed = layout.pack(t);
            assert_eq!(packed.dims(), [1, 2, 3, layout.words_for(n)]);
            let back = layout.unpack(packed, n).into_data().convert::<i32>();
            assert_eq!(back.to_vec::<i32>().unwrap(), codes, "bits {bits}, n {n}");
        }
    }
}

#[test]
fn packing_round_trips_flex() {
    packing_round_trips::<Flex>();
}

#[test]
fn packing_round_trips_ndarray() {
    packing_round_trips::<NdArray>();
}

#[test]
fn packing_round_trips_wgpu() {
    if wgpu_available() {
        packing_round_trips::<Wgpu>();
    }
}

fn spec(bits: usize, group_size: usize, axis: QuantAxis, scheme: QuantScheme) -> QuantSpec {
    QuantSpec {
        bits,
        group_size,
        axis,
        scheme,
    }
}

/// Per element `|x - x̂| <= step/2`, up to the f16 rounding of the minimum (which can push an
/// extreme element just outside the representable range); and the result equals the
/// independent host reference.
fn round_trip_within_half_step<B: Backend>(exact: bool) {
    let (h, t, d) = (2, 64, 40); // 40 channels: a ragged last group of 8 when grouped by 32
    let x = data(h, t, d, 7);
    for bits in [2, 4, 8] {
        for (axis, group) in [
            (QuantAxis::Token, 32),
            (QuantAxis::Token, 0),
            (QuantAxis::Channel, 32),
        ] {
            let q = Quantizer::new::<B>(
                spec(bits, group, axis, QuantScheme::Asymmetric),
                &Default::default(),
            );
            let chunk = q.quantize(tensor::<B>(&x, h, t, d)).unwrap();
            let back = values(q.dequantize(&chunk, t, d, FloatDType::F32));
            // Parameters are f16 where the backend stores f16 (flex, wgpu), f32 on ndarray.
            let f16_params = q.param_dtype == FloatDType::F16;
            let mut reference = vec![0.0; x.len()];
            match axis {
                QuantAxis::Token => {
                    let g = if group == 0 { d } else { group };
                    let shape = (h, t, d);
                    reference_per_token(&x, &mut reference, shape, (0, t), bits, g, f16_params)
                }
                QuantAxis::Channel => {
                    let shape = (h, t, d);
                    reference_per_channel(
                        &x,
                        &mut reference,
                        shape,
                        (0, t),
                        bits,
                        group,
                        f16_params,
                    )
                }
            }
            let tol = if exact { 0.0 } else { 1e-5 };
            assert!(
                max_abs_diff(&back, &reference) <= tol,
                "{bits}-bit {axis:?} g{group}: differs from the reference by {}",
                max_abs_diff(&back, &reference)
            );
            // Half a step per group, from the reference's stored step sizes.
            let qmax = ((1u32 << bits) - 1) as f32;
            for hh in 0..h {
                for tt in 0..t {
                    for c in 0..d {
                        let i = at(t, d, hh, tt, c);
                        let group_values: Vec<f32> = match axis {
                            QuantAxis::Token => {
                                let g = if group == 0 { d } else { group };
                                let g0 = c / g * g;
                                (g0..(g0 + g).min(d))
                                    .map(|cc| x[at(t, d, hh, tt, cc)])
                                    .collect()
                            }
                            QuantAxis::Channel => {
                                let t0 = tt / group * group;
                                (t0..t0 + group).map(|u| x[at(t, d, hh, u, c)]).collect()
                            }
                        };
                        let min = group_values.iter().cloned().fold(f32::INFINITY, f32::min);
                        let max = group_values
                            .iter()
                            .cloned()
                            .fold(f32::NEG_INFINITY, f32::max);
                        let step = stored_param((max - min) / qmax, f16_params);
                        let f16_slack = (stored_param(min, f16_params) - min).abs() + 1e-6;
                        assert!(
                            (back[i] - x[i]).abs() <= step / 2.0 + f16_slack + tol,
                            "{bits}-bit {axis:?}: element ({hh},{tt},{c}) off by {} > half step {}",
                            (back[i] - x[i]).abs(),
                            step / 2.0
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn round_trip_within_half_step_flex() {
    let q = Quantizer::new::<Flex>(
        spec(2, 32, QuantAxis::Token, QuantScheme::Asymmetric),
        &Default::default(),
    );
    assert_eq!(q.param_dtype, FloatDType::F16, "flex stores f16 parameters");
    round_trip_within_half_step::<Flex>(true);
}

#[test]
fn round_trip_within_half_step_ndarray() {
    round_trip_within_half_step::<NdArray>(false);
}

#[test]
fn round_trip_within_half_step_wgpu() {
    if wgpu_available() {
        round_trip_within_half_step::<Wgpu>(false);
    }
}

/// A group's parameters come only from its own elements: a huge value in one group gives that
/// group a huge step, while the neighbouring group (across the boundary) keeps the step of its
/// own small values and stays within half of it.
#[test]
fn groups_end_at_their_boundaries() {
    type B = Flex;
    let (h, t, d) = (1, 64, 64);
    let mut x = data(h, t, d, 3);
    for v in x.iter_mut() {
        *v *= 0.01;
    }
    // Token axis: channel 31 (last of group 0) of token 5 is huge; channel 32 starts group 1.
    x[at(t, d, 0, 5, 31)] = 1000.0;
    // Channel axis: token 31 (last of token-group 0) of channel 9 is huge.
    x[at(t, d, 0, 31, 9)] = -1000.0;
    // (axis, fixed token/channel, elements of the calm group, flat index of the huge and of the
    // calm group in `scales`: token axis `[1, 1, T, D/32]`, channel axis `[1, 1, T/32, D]`).
    for (axis, fixed, calm, huge_param, calm_param) in [
        (QuantAxis::Token, 5, 32..64, 5 * 2, 5 * 2 + 1),
        (QuantAxis::Channel, 9, 32..64, 9, d + 9),
    ] {
        let q = Quantizer::new::<B>(
            spec(2, 32, axis, QuantScheme::Asymmetric),
            &Default::default(),
        );
        let chunk = q.quantize(tensor::<B>(&x, h, t, d)).unwrap();
        let scales = values(chunk.scales.clone().cast(FloatDType::F32));
        let back = values(q.dequantize(&chunk, t, d, FloatDType::F32));
        let idx = |i: usize| match axis {
            QuantAxis::Token => at(t, d, 0, fixed, i),
            QuantAxis::Channel => at(t, d, 0, i, fixed),
        };
        // The calm group's own step (2 bits: range / 3) and the f16 rounding of its minimum.
        let calm_values: Vec<f32> = calm.clone().map(|i| x[idx(i)]).collect();
        let min = calm_values.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = calm_values
            .iter()
            .cloned()
            .fold(f32::NEG_INFINITY, f32::max);
        let calm_step = round_f16((max - min) / 3.0);
        assert_eq!(scales[calm_param], calm_step, "{axis:?}: calm group's step");
        assert!(
            scales[huge_param] > 300.0,
            "{axis:?}: the group with the outlier should have a huge step ({})",
            scales[huge_param]
        );
        let calm_err = calm
            .map(|i| (back[idx(i)] - x[idx(i)]).abs())
            .fold(0.0, f32::max);
        let half_step = calm_step / 2.0 + (round_f16(min) - min).abs();
        assert!(
            calm_err <= half_step * 1.001 && half_step < 0.05,
            "{axis:?}: the group after the boundary has error {calm_err} (its half step {half_step})"
        );
    }
}

/// Symmetric int8 per token: half a step of `max|x| / 127`, zero stays zero.
#[test]
fn symmetric_8_bit_round_trip() {
    type B = Flex;
    let (h, t, d) = (2, 16, 64);
    let mut x = data(h, t, d, 11);
    x[0] = 0.0;
    let q = Quantizer::new::<B>(
        spec(8, 0, QuantAxis::Token, QuantScheme::Symmetric),
        &Default::default(),
    );
    let chunk = q.quantize(tensor::<B>(&x, h, t, d)).unwrap();
    assert!(chunk.mins.is_none());
    assert_eq!(chunk.scales.dims(), [1, h, t, 1]);
    assert_eq!(chunk.codes.dims(), [1, h, t, 16]); // 64 codes, 4 per word
    let back = values(q.dequantize(&chunk, t, d, FloatDType::F32));
    assert_eq!(back[0], 0.0);
    for hh in 0..h {
        for tt in 0..t {
            let row: Vec<f32> = (0..d).map(|c| x[at(t, d, hh, tt, c)]).collect();
            let step = round_f16(row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0);
            for c in 0..d {
                let i = at(t, d, hh, tt, c);
                assert!(
                    (back[i] - x[i]).abs() <= step / 2.0 * 1.001,
                    "({hh},{tt},{c})"
                );
            }
        }
    }
}

#[test]
fn bad_specs_are_errors() {
    let err = spec(9, 32, QuantAxis::Token, QuantScheme::Asymmetric)
        .validate("kivi keys")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("kivi keys: bits = 9 is out of range 1..=8"),
        "{err}"
    );
    let err = spec(2, 0, QuantAxis::Channel, QuantScheme::Asymmetric)
        .validate("kivi keys")
        .unwrap_err();
    assert!(
        err.to_string().contains("group_size must be positive"),
        "{err}"
    );
    let q = Quantizer::new::<Flex>(
        spec(2, 32, QuantAxis::Channel, QuantScheme::Asymmetric),
        &Default::default(),
    );
    let err = q
        .quantize(tensor::<Flex>(&data(1, 33, 8, 1), 1, 33, 8))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("33 tokens: not a multiple of group_size 32"),
        "{err}"
    );
}

/// Pre-RoPE keys: un-rotating keys by their positions and rotating them back gives the keys
/// again (to 1e-5 relative), at small and large positions, with Llama-3 scaling and with a
/// partial rotary dimension (the channels past it untouched); the un-rotation really rotates
/// (except at position 0), and the device `cos`/`sin` of the re-rotation match the host's.
fn rope_round_trip<B: Backend>() {
    let device: B::Device = Default::default();
    let (h, d) = (2, 64);
    let positions: Vec<usize> = vec![0, 1, 2, 31, 127, 128, 1000, 4095, 32767, 131071];
    let t = positions.len();
    let x = data(h, t, d, 11);
    let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let llama3 = RopeSpec {
        scaling: RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
        ..RopeSpec::neox(d, 500000.0)
    };
    let partial = RopeSpec {
        rotary_dim: 32,
        ..RopeSpec::neox(d, 10000.0)
    };
    for spec in [RopeSpec::neox(d, 10000.0), llama3, partial] {
        let rot = KeyRotation::new(&spec, d).unwrap();
        let keys = tensor::<B>(&x, h, t, d);
        let pre = rot.unrotate(keys.clone(), &positions);
        let back = values(rot.rotate(pre.clone(), &positions));
        let err = max_abs_diff(&back, &x) / scale;
        assert!(err <= 1e-5, "{spec:?}: round trip off by {err} (relative)");
        // The un-rotation moved every rotated channel of every token but the one at 0.
        let pre = values(pre);
        for hh in 0..h {
            for (ti, &p) in positions.iter().enumerate() {
                for c in 0..d {
                    let i = at(t, d, hh, ti, c);
                    if p == 0 || c >= spec.rotary_dim {
                        assert_eq!(pre[i], x[i], "{spec:?}: p {p}, channel {c} must stay");
                    }
                }
                let (a, b) = (at(t, d, hh, ti, 0), at(t, d, hh, ti, spec.rotary_dim));
                if p > 0 {
                    assert!(max_abs_diff(&pre[a..b], &x[a..b]) > 1e-3, "{spec:?}: p {p}");
                }
            }
        }
        // Device tables (angles reduced modulo 2 pi on the device) against the host's.
        let (hc, hs) = rot.host_tables::<B>(&positions, &device);
        let (dc, ds) = rot.device_tables::<B>(&positions, &device);
        let table_err =
            max_abs_diff(&values(hc), &values(dc)).max(max_abs_diff(&values(hs), &values(ds)));
        assert!(
            table_err <= 2e-6,
            "{spec:?}: device cos/sin off by {table_err}"
        );
    }
}

#[test]
fn rope_round_trip_flex() {
    rope_round_trip::<Flex>();
}

#[test]
fn rope_round_trip_ndarray() {
    rope_round_trip::<NdArray>();
}

#[test]
fn rope_round_trip_wgpu() {
    if wgpu_available() {
        rope_round_trip::<Wgpu>();
    }
}

/// The host dequantizer CPU backends use gives exactly what the tensor-op path gives, for
/// both schemes, every grouping and bit widths whose top field reaches the sign bit.
fn host_and_tensor_paths_agree<B: Backend>() {
    let (h, t, d) = (3, 96, 40);
    let x = data(h, t, d, 11);
    for bits in [1, 2, 3, 4, 8] {
        for (axis, group, scheme) in [
            (QuantAxis::Token, 32, QuantScheme::Asymmetric),
            (QuantAxis::Token, 0, QuantScheme::Asymmetric),
            (QuantAxis::Channel, 32, QuantScheme::Asymmetric),
            (QuantAxis::Token, 0, QuantScheme::Symmetric),
        ] {
            if scheme == QuantScheme::Symmetric && bits < 2 {
                continue;
            }
            let q = Quantizer::new::<B>(spec(bits, group, axis, scheme), &Default::default());
            let chunk = q.quantize(tensor::<B>(&x, h, t, d)).unwrap();
            assert!(longctx_kvquant::host::is_host_backend::<B>(
                &Default::default()
            ));
            let host = values(q.dequantize(&chunk, t, d, FloatDType::F32));
            let ops = values(q.dequantize_with_tensor_ops(&chunk, t, d, FloatDType::F32));
            assert_eq!(host, ops, "{bits}-bit {axis:?} group {group} {scheme:?}");
        }
    }
}

#[test]
fn host_and_tensor_paths_agree_flex() {
    host_and_tensor_paths_agree::<Flex>();
}

#[test]
fn host_and_tensor_paths_agree_ndarray() {
    host_and_tensor_paths_agree::<NdArray>();
}

#[cfg(feature = "cuda")]
#[test]
fn packing_and_round_trip_cuda() {
    if cuda_requested() {
        packing_round_trips::<burn::backend::Cuda>();
        round_trip_within_half_step::<burn::backend::Cuda>(false);
    }
}
