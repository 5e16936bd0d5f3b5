//! Times dequantizing one layer's store (SmolLM2's 3 KV heads x 64 channels) on flex: the host
//! loop CPU backends use against the tensor-op path GPU backends use.
//!
//! `cargo run --release -p longctx-kvquant --example dequant_speed -- [TOKENS]`
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, FloatDType, Tensor};
use longctx_kvquant::{QuantAxis, QuantScheme, QuantSpec, Quantizer};

type B = Flex;

/// Mean seconds of `f` over a few runs after one warm-up.
fn seconds(f: impl Fn()) -> f64 {
    f();
    let runs = 5;
    let start = Instant::now();
    (0..runs).for_each(|_| f());
    start.elapsed().as_secs_f64() / runs as f64
}

fn main() {
    let tokens: usize = std::env::args()
        .nth(1)
        .map_or(Ok(3840), |a| a.parse())
        .expect("TOKENS must be a whole number");
    let device = Default::default();
    let x = Tensor::<B, 4>::random([1, 3, tokens, 64], Distribution::Normal(0.0, 1.0), &device);
    let elements = (3 * tokens * 64) as f64;
    for (axis, bits) in [
        (QuantAxis::Channel, 2),
        (QuantAxis::Token, 2),
        (QuantAxis::Token, 4),
    ] {
        let spec = QuantSpec {
            bits,
            group_size: 32,
            axis,
            scheme: QuantScheme::Asymmetric,
        };
        let q = Quantizer::new::<B>(spec, &device);
        let chunk = q
            .quantize(x.clone())
            .expect("tokens are a multiple of the group");
        let host = seconds(|| {
            drop(
                q.dequantize(&chunk, tokens, 64, FloatDType::F32)
                    .into_data(),
            )
        });
        let ops = seconds(|| {
            drop(
                q.dequantize_with_tensor_ops(&chunk, tokens, 64, FloatDType::F32)
                    .into_data(),
            )
        });
        println!(
            "{axis:?} axis, {bits}-bit, {tokens} tokens: host {:.2} ms ({:.1} ns/element), tensor ops {:.2} ms ({:.1} ns/element)",
            host * 1e3,
            host * 1e9 / elements,
            ops * 1e3,
            ops * 1e9 / elements
        );
    }
}
