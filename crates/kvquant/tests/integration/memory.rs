//! Measured bytes of real caches at 10,000 tokens (SmolLM2-135M's 3 KV heads of 64 channels)
//! against the paper's formula and against what the packing should take.

use crate::common;

use burn::backend::Flex;

use common::*;
use longctx_core::{AttentionLayerSpec, CompressionPhase, KvCache};
use longctx_kvquant::{
    formula_ratio, packed_bytes, KeyPosition, MemoryReport, QuantAxis, QuantCacheConfig,
    QuantKvCache, QuantScheme, QuantSpec, ResidualPrecision, StoredWidths,
};

type B = Flex;

const TOKENS: usize = 10_000;
const LAYER: AttentionLayerSpec = AttentionLayerSpec {
    layer: 0,
    n_query_heads: 9,
    n_kv_heads: 3,
    head_dim: 64,
    sliding_window: None,
    rope: None,
};

fn spec(bits: usize, group_size: usize, axis: QuantAxis, scheme: QuantScheme) -> QuantSpec {
    QuantSpec {
        bits,
        group_size,
        axis,
        scheme,
    }
}

fn config(keys: QuantSpec, values: QuantSpec, residual_length: usize) -> QuantCacheConfig {
    QuantCacheConfig {
        keys,
        values,
        residual_length,
        quantize_on_append: false,
        residual_precision: ResidualPrecision::F16,
        key_position: KeyPosition::PostRope,
    }
}

/// Bytes a cache really holds after a `TOKENS`-token prefill.
fn measured(config: QuantCacheConfig) -> usize {
    let (h, d) = (LAYER.n_kv_heads, LAYER.head_dim);
    let mut cache = QuantKvCache::<B>::new(config, d).unwrap();
    let k = tensor::<B>(&data(h, TOKENS, d, 1), h, TOKENS, d);
    let v = tensor::<B>(&data(h, TOKENS, d, 2), h, TOKENS, d);
    cache
        .append(k, v, &(0..TOKENS).collect::<Vec<_>>())
        .unwrap();
    cache.compress(CompressionPhase::PrefillEnd).unwrap();
    cache.memory_bytes()
}

#[test]
fn measured_bytes_meet_the_nominal_ratio_at_10k_tokens() {
    let asym = QuantScheme::Asymmetric;
    let cases = [
        (
            "kivi-2bit",
            config(
                spec(2, 32, QuantAxis::Channel, asym),
                spec(2, 32, QuantAxis::Token, asym),
                128,
            ),
            Some(5.05),
        ),
        (
            "kivi-4bit",
            config(
                spec(4, 32, QuantAxis::Channel, asym),
                spec(4, 32, QuantAxis::Token, asym),
                128,
            ),
            Some(3.11),
        ),
        (
            "flexgen-4bit",
            config(
                spec(4, 32, QuantAxis::Token, asym),
                spec(4, 32, QuantAxis::Token, asym),
                0,
            ),
            Some(3.2),
        ),
        (
            "int8",
            config(
                spec(8, 0, QuantAxis::Token, QuantScheme::Symmetric),
                spec(8, 0, QuantAxis::Token, QuantScheme::Symmetric),
                0,
            ),
            None,
        ),
    ];
    let widths = StoredWidths {
        word: 4,
        param: 2,
        residual: 2,
    };
    println!("method        formula  packed-ratio  measured-ratio  bytes/token  measured/packed");
    for (name, config, paper) in cases {
        let formula = formula_ratio(&config, LAYER.head_dim, TOKENS);
        if let Some(paper) = paper {
            assert_eq!(
                format!("{formula:.2}"),
                format!("{paper:.2}"),
                "{name}: formula"
            );
        }
        let packed = packed_bytes(&config, &LAYER, TOKENS, widths);
        let bytes = measured(config);
        let report = MemoryReport::new(&[LAYER], &[bytes], TOKENS);
        let fp16 = (LAYER.fp16_bytes_per_token() * TOKENS) as f64;
        println!(
            "{name:<13} {formula:>7.2}  {:>12.2}  {:>14.2}  {:>11.1}  {:>15.4}",
            fp16 / packed as f64,
            report.total_ratio_vs_fp16,
            report.total_bytes_per_token,
            bytes as f64 / packed as f64
        );
        // Spare capacity is at most one 128-token growth step of the stores.
        assert!(
            bytes >= packed && bytes as f64 <= packed as f64 * 1.05,
            "{name}: {bytes} vs {packed}"
        );
        assert!(
            (report.total_ratio_vs_fp16 / formula - 1.0).abs() < 0.05,
            "{name}: measured ratio {} vs formula {formula}",
            report.total_ratio_vs_fp16
        );
    }
}
