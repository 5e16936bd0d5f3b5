//! Decode-step speed of the quantized products on SmolLM2-135M's shapes (one token: the 30
//! layers' projections and the 49152-row head), against a plain read of the same bytes.
//!
//! `cargo run --release -p longctx-cpu-kernels --example quant_speed [threads]`

use std::time::Instant;

use longctx_cpu_kernels::{QuantFormat, QuantMatrix};

fn matrix(format: QuantFormat, rows: usize, cols: usize, seed: u64) -> QuantMatrix {
    let mut s = seed | 1;
    let bytes = format.block_bytes();
    let mut data = Vec::with_capacity(rows * cols / 32 * bytes);
    for _ in 0..rows * cols / 32 {
        let start = data.len();
        for _ in 0..bytes {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            data.push(s as u8);
        }
        // Scales of 2^-8 and 2^-9 (f16), so every product is finite.
        data[start..start + 2].copy_from_slice(&0x1C00u16.to_le_bytes());
        if format == QuantFormat::Q4_1 {
            data[start + 2..start + 4].copy_from_slice(&0x1800u16.to_le_bytes());
        }
    }
    QuantMatrix::new(format, rows, cols, data).expect("whole blocks")
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |t| t.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("one pool");
    let q41 = QuantFormat::Q4_1;
    // SmolLM2's q, k, v, o, gate, up and down, or with `merged` q/k/v and gate/up as one.
    let merged = std::env::args().nth(2).is_some_and(|a| a == "merged");
    let layer = if merged {
        vec![
            matrix(q41, 576 + 2 * 192, 576, 1),
            matrix(q41, 576, 576, 2),
            matrix(q41, 2 * 1536, 576, 3),
            matrix(q41, 576, 1536, 4),
        ]
    } else {
        [
            (576, 576),
            (192, 576),
            (192, 576),
            (576, 576),
            (1536, 576),
            (1536, 576),
            (576, 1536),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(rows, cols))| matrix(q41, rows, cols, i as u64 + 1))
        .collect()
    };
    let head = matrix(QuantFormat::Q8_0, 49152, 576, 5);
    let bytes: usize = 30 * layer.iter().map(|w| w.data().len()).sum::<usize>() + head.data().len();
    for m in [1usize, 4] {
        let step = || {
            for _ in 0..30 {
                for w in &layer {
                    let x = vec![0.5f32; m * w.cols()];
                    let mut y = vec![0f32; m * w.rows()];
                    w.matmul(&x, m, &mut y).expect("shapes");
                }
            }
            let x = vec![0.5f32; m * 576];
            let mut y = vec![0f32; m * 49152];
            head.matmul(&x, m, &mut y).expect("shapes");
        };
        step();
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            step();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let layers = 30.0
            * layer
                .iter()
                .map(|w| {
                    let x = vec![0.5f32; m * w.cols()];
                    let mut y = vec![0f32; m * w.rows()];
                    let t = Instant::now();
                    for _ in 0..reps {
                        w.matmul(&x, m, &mut y).expect("shapes");
                    }
                    t.elapsed().as_secs_f64() / reps as f64
                })
                .sum::<f64>();
        println!(
            "m={m}: {:.2} ms per step ({:.2} ms layers, head the rest), {:.1} GB/s of blocks, {threads} threads",
            1e3 * s,
            1e3 * layers,
            bytes as f64 / s / 1e9
        );
    }
    // A plain sum over the same number of bytes: the memory system's ceiling here.
    let buf = vec![1u8; bytes];
    let t = Instant::now();
    let mut total = 0u64;
    for _ in 0..5 {
        total += buf.chunks(64).map(|c| c[0] as u64).sum::<u64>();
    }
    let s = t.elapsed().as_secs_f64() / 5.0;
    println!(
        "one thread touching every cache line of {bytes} bytes: {:.1} GB/s ({total})",
        bytes as f64 / s / 1e9
    );
}
