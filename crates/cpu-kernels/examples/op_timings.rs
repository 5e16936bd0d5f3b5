//! Times the operations of one SmolLM2-135M layer on flex at a prompt length (release build):
//! `cargo run --release -p longctx-cpu-kernels --example op_timings -- 2048`, then the decode
//! step's products (one row) over f32 weights and over Q4_0/Q4_1/Q8_0 blocks;
//! `-- decode` times only those, `-- attention 4000` only the prefill attention kernel.
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{activation::silu, Distribution, Tensor};
use longctx_cpu_kernels::flex::{flex_matmul, flex_quant_matmul, flex_skinny_matmul};
use longctx_cpu_kernels::{flex::flex_attention, QuantFormat, QuantMatrix, Visibility};

fn time<T>(label: &str, flops: f64, reps: usize, mut f: impl FnMut() -> T) {
    let _ = f();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = std::hint::black_box(f());
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{label:<40} {:>9.2} ms {:>7.1} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
}

/// Median time of `f` over `reps` calls (after one warm-up; the median resists the other
/// loads of a shared machine), with the bytes of weights it reads.
fn time_read<T>(label: &str, bytes: usize, reps: usize, mut f: impl FnMut() -> T) {
    let _ = f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let _ = std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let s = times[reps / 2];
    println!(
        "{label:<40} {:>9.3} ms {:>7.1} GB/s of weights",
        s * 1e3,
        bytes as f64 / s / 1e9
    );
}

/// One-row products at SmolLM2-135M's shapes: the f32 skinny kernel over `[in, out]` weights
/// (the model's layout) against the quantized kernel over random blocks of each format.
fn decode_products() {
    let device = Default::default();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (label, inp, out, reps) in [
        ("gate/up 576x1536", 576, 1536, 300),
        ("down 1536x576", 1536, 576, 300),
        ("lm_head 576x49152", 576, 49152, 20),
    ] {
        let x = Tensor::<Flex, 2>::random([1, inp], Distribution::Default, &device);
        let w = Tensor::<Flex, 2>::random([inp, out], Distribution::Default, &device);
        time_read(
            &format!("m=1 f32 skinny {label}"),
            4 * inp * out,
            reps,
            || flex_skinny_matmul(&x, &w).unwrap(),
        );
        for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            let mut data: Vec<u8> = (0..out * inp / 32 * format.block_bytes())
                .map(|_| next() as u8)
                .collect();
            // Scales around 2^-7 (f16 exponent 8), as real weights have.
            for block in data.chunks_exact_mut(format.block_bytes()) {
                block[1] = 0x20 | (block[1] & 0x03);
                block[3] = 0x20 | (block[3] & 0x03);
            }
            let q = QuantMatrix::new(format, out, inp, data).unwrap();
            let bytes = q.data().len();
            time_read(&format!("m=1 {format} {label}"), bytes, reps, || {
                flex_quant_matmul(&x, &q).unwrap()
            });
        }
    }
}

/// Only the prefill attention kernel at `t` tokens, `reps` times (for a profiler).
fn attention_only(t: usize, reps: usize) {
    let device = Default::default();
    let q = Tensor::<Flex, 4>::random([1, 9, t, 64], Distribution::Default, &device);
    let k = Tensor::<Flex, 4>::random([1, 3, t, 64], Distribution::Default, &device);
    let pos: Vec<usize> = (0..t).collect();
    let vis = Visibility {
        query_positions: &pos,
        key_positions: &pos,
        ..Default::default()
    };
    let att_flops = 9.0 * 2.0 * 2.0 * (t * t) as f64 / 2.0 * 64.0;
    time("attention kernel (causal)", att_flops, reps, || {
        flex_attention(&q, &k, &k, 0.125, &vis).unwrap()
    });
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("decode") => return decode_products(),
        Some("attention") => {
            let t = std::env::args().nth(2).map_or(2048, |s| s.parse().unwrap());
            return attention_only(t, 10);
        }
        _ => {}
    }
    let t: usize = std::env::args().nth(1).map_or(2048, |s| s.parse().unwrap());
    let device = Default::default();
    let rand = |shape: [usize; 2]| Tensor::<Flex, 2>::random(shape, Distribution::Default, &device);
    let x = rand([t, 576]);
    for (n, label) in [
        (576, "q/o proj 576x576"),
        (192, "k/v proj 576x192"),
        (1536, "gate/up 576x1536"),
    ] {
        let w = rand([576, n]);
        time(label, 2.0 * (t * 576 * n) as f64, 5, || {
            x.clone().matmul(w.clone())
        });
        time(
            &format!("{label} direct gemm"),
            2.0 * (t * 576 * n) as f64,
            5,
            || flex_matmul(&x, &w).unwrap(),
        );
        let wt = rand([n, 576]).transpose();
        time(
            &format!("{label} direct gemm, [n,k]^T"),
            2.0 * (t * 576 * n) as f64,
            5,
            || flex_matmul(&x, &wt).unwrap(),
        );
    }
    let h = rand([t, 1536]);
    let w = rand([1536, 576]);
    time("down 1536x576", 2.0 * (t * 576 * 1536) as f64, 5, || {
        h.clone().matmul(w.clone())
    });
    time(
        "down 1536x576 direct gemm",
        2.0 * (t * 576 * 1536) as f64,
        5,
        || flex_matmul(&h, &w).unwrap(),
    );
    time("silu [T,1536]", 0.0, 5, || silu(h.clone()));
    time("mul [T,1536]", 0.0, 5, || h.clone() * h.clone());
    time("rms-ish [T,576]", 0.0, 5, || {
        let v = x.clone().powi_scalar(2).mean_dim(1);
        x.clone() * (v + 1e-5).sqrt().recip()
    });
    let q = Tensor::<Flex, 4>::random([1, 9, t, 64], Distribution::Default, &device);
    let k = Tensor::<Flex, 4>::random([1, 3, t, 64], Distribution::Default, &device);
    let pos: Vec<usize> = (0..t).collect();
    let vis = Visibility {
        query_positions: &pos,
        key_positions: &pos,
        ..Default::default()
    };
    let att_flops = 9.0 * 2.0 * 2.0 * (t * t) as f64 / 2.0 * 64.0;
    time("attention kernel (causal)", att_flops, 3, || {
        flex_attention(&q, &k, &k, 0.125, &vis).unwrap()
    });
    let kr = k
        .clone()
        .unsqueeze_dim::<5>(2)
        .expand([1, 3, 3, t, 64])
        .reshape([1, 9, t, 64]);
    time("burn flex attention (causal)", att_flops, 1, || {
        burn::tensor::module::attention(
            q.clone(),
            kr.clone(),
            kr.clone(),
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                scale: Some(0.125),
                softcap: None,
                is_causal: true,
            },
        )
    });
    let q1 = q.clone().slice([0..1, 0..9, t - 1..t, 0..64]);
    let vis1 = Visibility {
        query_positions: &pos[t - 1..],
        key_positions: &pos,
        ..Default::default()
    };
    time(
        "attention kernel decode",
        9.0 * 4.0 * t as f64 * 64.0,
        20,
        || flex_attention(&q1, &k, &k, 0.125, &vis1).unwrap(),
    );
    let x1 = rand([1, 576]);
    let w = rand([576, 1536]);
    time("decode gemv 576x1536", 2.0 * 576.0 * 1536.0, 50, || {
        x1.clone().matmul(w.clone())
    });
    let lm = rand([576, 49152]);
    time(
        "decode lm_head 576x49152",
        2.0 * 576.0 * 49152.0,
        10,
        || x1.clone().matmul(lm.clone()),
    );
    decode_products();
}
