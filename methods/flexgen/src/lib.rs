//! `flexgen`: FlexGen-style group-wise quantization as the paper runs it (reference section
//! 2.2): 4-bit asymmetric min-max, groups of 32 channels of each token for keys and values, no
//! full-precision residual. With `quantize_prefill = true` (the paper's code) prefill attention
//! already sees quantized keys/values; with `false` the prompt is attended in full precision
//! and quantized at `compress(PrefillEnd)`, each decoded token after its own step.
//! Unlike the paper's simulated quantization, the cache really holds packed codes.
//!
//! Nominal ratio by the paper's formula: 16 / (4 + 1) = 3.2x.

use burn::tensor::backend::Backend;

use longctx_core::{KvMethod, MethodDescriptor, ParamSpec, Params, Result};
use longctx_kvquant::{
    KeyPosition, QuantAxis, QuantCacheConfig, QuantMethod, QuantScheme, QuantSpec,
    ResidualPrecision,
};

/// The `flexgen` method.
pub struct FlexGen;

impl FlexGen {
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
            keys: spec(QuantAxis::parse(
                "flexgen key_axis",
                params.str("key_axis")?,
            )?),
            values: spec(QuantAxis::Token),
            residual_length: params.usize_at_least("residual_length", 0)?,
            quantize_on_append: params.bool("quantize_prefill")?,
            residual_precision: ResidualPrecision::parse(
                "flexgen residual_precision",
                params.str("residual_precision")?,
            )?,
            key_position: KeyPosition::parse("flexgen key_position", params.str("key_position")?)?,
        })
    }
}

impl MethodDescriptor for FlexGen {
    const NAME: &'static str = "flexgen";
    const DESCRIPTION: &'static str =
        "FlexGen-style 4-bit, groups of 32 channels per token for K and V, no residual (formula ratio 3.2x)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("bits", 4, "bits per code (1..=8)"),
            ParamSpec::int("group_size", 32, "elements per quantization group"),
            ParamSpec::int(
                "residual_length",
                0,
                "newest tokens kept in full precision (the paper: 0)",
            ),
            ParamSpec::choice(
                "key_axis",
                &["token", "channel"],
                "token",
                "key groups: along channels within a token (FlexGen) or along tokens within a channel \
                 (needs residual_length a multiple of group_size)",
            ),
            ParamSpec::bool(
                "quantize_prefill",
                true,
                "prefill attention already sees quantized K/V, as the paper's code does",
            ),
            ParamSpec::choice(
                "residual_precision",
                &["f16", "model"],
                "f16",
                "storage of a residual after a flush: f16 or the model's float type",
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
