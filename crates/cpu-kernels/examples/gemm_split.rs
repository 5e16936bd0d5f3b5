//! Whether splitting a prefill product's rows over the threads beats the `gemm` crate's own
//! parallelism (release build): `cargo run --release -p longctx-cpu-kernels --example gemm_split`.
use std::time::Instant;

use rayon::prelude::*;

fn product(
    m: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

fn main() {
    for (m, k, n) in [
        (2048, 576, 576),
        (2048, 576, 1536),
        (2048, 1536, 576),
        (8000, 576, 1536),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let mut time = |label: &str, f: &mut dyn FnMut(&mut [f32])| {
            f(&mut y);
            let reps = 5;
            let start = Instant::now();
            for _ in 0..reps {
                f(&mut y);
            }
            let s = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "[{m}x{k}]x[{k}x{n}] {label:<28} {:>8.2} ms {:>6.1} GFLOP/s",
                s * 1e3,
                flops / s / 1e9
            );
        };
        time("gemm rayon(0)", &mut |y| {
            product(m, k, n, &x, &w, y, gemm::Parallelism::Rayon(0))
        });
        time("gemm rayon(0), new output", &mut |_y| {
            let mut fresh = vec![0f32; m * n];
            product(m, k, n, &x, &w, &mut fresh, gemm::Parallelism::Rayon(0));
            std::hint::black_box(fresh);
        });
        time("gemm none", &mut |y| {
            product(m, k, n, &x, &w, y, gemm::Parallelism::None)
        });
        {
            use burn::tensor::{Tensor, TensorData};
            let device = Default::default();
            let xt = Tensor::<burn::backend::Flex, 2>::from_data(
                TensorData::new(x.clone(), [m, k]),
                &device,
            );
            let wt = Tensor::<burn::backend::Flex, 2>::from_data(
                TensorData::new(w.clone(), [k, n]),
                &device,
            );
            time("burn flex matmul", &mut |_y| {
                std::hint::black_box(xt.clone().matmul(wt.clone()));
            });
            let xr = Tensor::<burn::backend::Flex, 2>::random(
                [m, k],
                burn::tensor::Distribution::Default,
                &device,
            );
            let wr = Tensor::<burn::backend::Flex, 2>::random(
                [k, n],
                burn::tensor::Distribution::Default,
                &device,
            );
            time("burn flex matmul random", &mut |_y| {
                std::hint::black_box(xr.clone().matmul(wr.clone()));
            });
        }
        let threads = rayon::current_num_threads();
        for parts in [threads, 4 * threads] {
            let rows = m.div_ceil(parts);
            time(&format!("rows split in {parts}"), &mut |y| {
                y.par_chunks_mut(rows * n)
                    .zip(x.par_chunks(rows * k))
                    .for_each(|(yb, xb)| {
                        product(xb.len() / k, k, n, xb, &w, yb, gemm::Parallelism::None)
                    })
            });
        }
    }
}
