//! `kivi`: KIVI (reference section 2.1). Keys are quantized per channel in groups of 32 tokens,
//! values per token in groups of 32 channels, asymmetric min-max, 2 or 4 bits; the newest
//! `residual_length` (128) tokens stay in full precision. Prefill attention sees full-precision
//! keys/values: quantization happens at `compress(PrefillEnd)` and after each decode step
//! (keys in blocks of 128 as the residual fills, values one token at a time as they leave the
//! window). Codes are bit-packed into 32-bit words, scales and minima stored in f16.
//!
//! Nominal ratio by the paper's formula at 10,000 tokens: 2-bit 5.05x, 4-bit 3.11x
//! ([`longctx_kvquant::formula_ratio`]).
//!
//! Keys are quantized after RoPE, as in the paper (`key_position = post_rope`). With
//! `key_position = pre_rope` the cache rotates keys back by their positions (the layer's RoPE
//! from its `AttentionLayerSpec`) before quantizing them and rotates the dequantized keys
//! forward again for attention; see `crates/kvquant/README.md`.

use burn::tensor::backend::Backend;

use longctx_core::{KvMethod, MethodDescriptor, ParamSpec, Params, Result};
use longctx_kvquant::{
    KeyPosition, QuantAxis, QuantCacheConfig, QuantMethod, QuantScheme, QuantSpec,
    ResidualPrecision,
};

/// The `kivi` method.
pub struct Kivi;

impl Kivi {
    /// The cache configuration for validated parameters.
    pub fn config(params: &Params) -> Result<QuantCacheConfig> {
        let bits = params.usize_at_least("bits", 1)?;
        let group_size = params.usize_at_least("group_size", 1)?;
        let spec = |axis| QuantSpec {
            bits,
            group_size,
            axis,
            scheme: QuantScheme::Asymmetric,
        };
        Ok(QuantCacheConfig {
            keys: spec(QuantAxis::parse("kivi key_axis", params.str("key_axis")?)?),
            values: spec(QuantAxis::Token),
            residual_length: params.usize_at_least("residual_length", 0)?,
            quantize_on_append: false,
            residual_precision: ResidualPrecision::parse(
                "kivi residual_precision",
                params.str("residual_precision")?,
            )?,
            key_position: KeyPosition::parse("kivi key_position", params.str("key_position")?)?,
        })
    }
}

impl MethodDescriptor for Kivi {
    const NAME: &'static str = "kivi";
    const DESCRIPTION: &'static str =
        "KIVI: keys per channel, values per token, 2/4-bit, fp residual of 128 \
         (formula ratio at 10k tokens: 2-bit 5.05x, 4-bit 3.11x)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("bits", 2, "bits per code (1..=8; the paper runs 2 and 4)"),
            ParamSpec::int("group_size", 32, "elements per quantization group"),
            ParamSpec::int(
                "residual_length",
                128,
                "newest tokens kept in full precision (keys are quantized in blocks of this many)",
            ),
            ParamSpec::choice(
                "key_axis",
                &["channel", "token"],
                "channel",
                "key groups: along tokens within a channel (KIVI) or along channels within a token",
            ),
            ParamSpec::choice(
                "residual_precision",
                &["f16", "model"],
                "f16",
                "storage of the residual after a flush: f16 (the paper's fp16) or the model's float type",
            ),
            ParamSpec::choice(
                "key_position",
                &["post_rope", "pre_rope"],
                "post_rope",
                "quantize keys after RoPE (as the model hands them over) or before: pre_rope \
                 rotates keys back by their positions before quantizing and forward after \
                 dequantizing (needs the model to declare each layer's RoPE)",
            ),
        ]
    }

    fn build<B: Backend>(params: &Params) -> Result<Box<dyn KvMethod<B>>> {
        QuantMethod::boxed(Self::NAME, Self::config(params)?)
    }
}
