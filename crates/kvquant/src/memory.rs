//! KV memory accounting: the paper's nominal compression ratio, the bytes the packing should
//! take, and reports of measured bytes against a 16-bit full cache.

use serde::{Deserialize, Serialize};

use longctx_core::AttentionLayerSpec;

use crate::cache::QuantCacheConfig;
use crate::quantizer::{QuantAxis, QuantSpec};

/// Bits per element of a quantized tensor: code bits plus its share of the 16-bit group
/// parameters.
fn quantized_bits_per_element(spec: &QuantSpec, head_dim: usize) -> f64 {
    let group = match spec.axis {
        QuantAxis::Token => spec.token_group(head_dim),
        QuantAxis::Channel => spec.group_size,
    };
    spec.bits as f64 + 16.0 * spec.params_per_group() as f64 / group as f64
}

/// The paper's compression ratio (reference section 1.4) at `tokens` tokens:
/// `16 / (average bits per element)`, with `residual_length` tokens at 16 bits and the rest at
/// code bits plus 16-bit scale/minimum per group. KIVI-2bit at 10,000 tokens: 5.05.
pub fn formula_ratio(config: &QuantCacheConfig, head_dim: usize, tokens: usize) -> f64 {
    let residual = config.residual_length.min(tokens) as f64;
    let quantized = tokens as f64 - residual;
    let bits =
        |spec: &QuantSpec| quantized * quantized_bits_per_element(spec, head_dim) + residual * 16.0;
    2.0 * 16.0 * tokens as f64 / (bits(&config.keys) + bits(&config.values))
}

/// Element widths as a backend stores them (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWidths {
    /// One packed code word (4 where the backend stores `i32`).
    pub word: usize,
    /// One scale or minimum (2 where the backend stores `f16`).
    pub param: usize,
    /// One residual element.
    pub residual: usize,
}

/// Tokens of one part that are quantized after a flush at `tokens` tokens.
pub fn quantized_tokens(spec: &QuantSpec, residual_length: usize, tokens: usize) -> usize {
    match spec.axis {
        QuantAxis::Channel => tokens - tokens % residual_length,
        QuantAxis::Token => tokens.saturating_sub(residual_length),
    }
}

/// Bytes one layer's keys and values should take after a flush at `tokens` tokens with this
/// packing: whole words of codes, group parameters, and the residual; no spare capacity.
pub fn packed_bytes(
    config: &QuantCacheConfig,
    layer: &AttentionLayerSpec,
    tokens: usize,
    widths: StoredWidths,
) -> usize {
    let (h, d) = (layer.n_kv_heads, layer.head_dim);
    let part = |spec: &QuantSpec| {
        let n = quantized_tokens(spec, config.residual_length, tokens);
        let (channels, params) = match spec.axis {
            QuantAxis::Token => {
                let g = spec.token_group(d);
                let padded = d.next_multiple_of(g);
                (padded, n * (padded / g))
            }
            QuantAxis::Channel => (d, n / spec.group_size * d),
        };
        // Word count from the code width and the stored word width.
        let per_word = widths.word * 8 / spec.bits;
        let codes = n * channels.div_ceil(per_word) * widths.word;
        let params = params * spec.params_per_group() * widths.param;
        let residual = (tokens - n) * d * widths.residual;
        h * (codes + params + residual)
    };
    part(&config.keys) + part(&config.values)
}

/// Measured bytes of one layer against a 16-bit full cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerMemory {
    pub layer: usize,
    pub bytes: usize,
    pub bytes_per_token: f64,
    /// 16-bit full-cache bytes at the same length divided by `bytes`.
    pub ratio_vs_fp16: f64,
}

/// Measured KV bytes per layer and in total, at `tokens` tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub tokens: usize,
    pub layers: Vec<LayerMemory>,
    pub total_bytes: usize,
    pub total_bytes_per_token: f64,
    pub total_ratio_vs_fp16: f64,
}

impl MemoryReport {
    /// A report from the bytes each attention layer holds (`bytes[i]` for `layers[i]`).
    pub fn new(layers: &[AttentionLayerSpec], bytes: &[usize], tokens: usize) -> Self {
        let per_token = |b: usize| b as f64 / tokens.max(1) as f64;
        let ratio = |fp16: usize, b: usize| fp16 as f64 / b.max(1) as f64;
        let rows: Vec<LayerMemory> = layers
            .iter()
            .zip(bytes)
            .map(|(spec, &b)| LayerMemory {
                layer: spec.layer,
                bytes: b,
                bytes_per_token: per_token(b),
                ratio_vs_fp16: ratio(spec.fp16_bytes_per_token() * tokens, b),
            })
            .collect();
        let total: usize = bytes.iter().sum();
        let fp16: usize = layers
            .iter()
            .map(|s| s.fp16_bytes_per_token() * tokens)
            .sum();
        Self {
            tokens,
            layers: rows,
            total_bytes: total,
            total_bytes_per_token: per_token(total),
            total_ratio_vs_fp16: ratio(fp16, total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{KeyPosition, ResidualPrecision};
    use crate::quantizer::QuantScheme;

    fn kivi(bits: usize) -> QuantCacheConfig {
        let spec = |axis| QuantSpec {
            bits,
            group_size: 32,
            axis,
            scheme: QuantScheme::Asymmetric,
        };
        QuantCacheConfig {
            keys: spec(QuantAxis::Channel),
            values: spec(QuantAxis::Token),
            residual_length: 128,
            quantize_on_append: false,
            residual_precision: ResidualPrecision::F16,
            key_position: KeyPosition::PostRope,
        }
    }

    #[test]
    fn paper_formula_ratios() {
        // Reference section 1.4: 160000 / ((10000-128)*(2+1) + 128*16) = 5.05.
        let r2 = formula_ratio(&kivi(2), 128, 10_000);
        assert!((r2 - 160000.0 / (9872.0 * 3.0 + 128.0 * 16.0)).abs() < 1e-9);
        assert_eq!(format!("{r2:.2}"), "5.05");
        assert_eq!(
            format!("{:.2}", formula_ratio(&kivi(4), 128, 10_000)),
            "3.11"
        );
        let mut flexgen = kivi(4);
        flexgen.keys.axis = QuantAxis::Token;
        flexgen.residual_length = 0;
        assert_eq!(formula_ratio(&flexgen, 128, 10_000), 3.2);
    }

    #[test]
    fn packed_bytes_of_kivi_2bit() {
        let layer = AttentionLayerSpec {
            layer: 0,
            n_query_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            sliding_window: None,
            rope: None,
        };
        let w = StoredWidths {
            word: 4,
            param: 2,
            residual: 2,
        };
        // 1000 tokens: keys 896 quantized (7 blocks of 128) + 104 residual; values 872 + 128.
        let keys = 3 * (896 * 4 * 4 + 896 / 32 * 64 * 2 * 2 + 104 * 64 * 2);
        let values = 3 * (872 * 4 * 4 + 872 * 2 * 2 * 2 + 128 * 64 * 2);
        assert_eq!(packed_bytes(&kivi(2), &layer, 1000, w), keys + values);
    }

    #[test]
    fn report_ratio_against_fp16() {
        let layer = AttentionLayerSpec {
            layer: 3,
            n_query_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            sliding_window: None,
            rope: None,
        };
        let r = MemoryReport::new(&[layer], &[320], 10);
        assert_eq!(r.layers[0].bytes_per_token, 32.0);
        assert_eq!(r.total_ratio_vs_fp16, 1.0); // fp16: 2 * 1 * 8 * 2 = 32 bytes/token
    }
}
