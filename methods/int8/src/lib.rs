//! `int8`: per-token symmetric 8-bit quantization of keys and values, a simple reference point.
//! One f16 scale per token and head (`group_size = 0`) or per group of channels; codes packed
//! four to a 32-bit word. By default the prompt is attended in full precision and quantized at
//! `compress(PrefillEnd)`, each decoded token after its own step.
//!
//! Nominal ratio by the paper's formula for head_dim 64: 16 / (8 + 16/64) = 1.94x.

use burn::tensor::backend::Backend;

use longctx_core::{KvMethod, MethodDescriptor, ParamSpec, Params, Result};
use longctx_kvquant::{
    KeyPosition, QuantAxis, QuantCacheConfig, QuantMethod, QuantScheme, QuantSpec,
    ResidualPrecision,
};

/// The `int8` method.
pub struct Int8;

impl Int8 {
    /// The cache configuration for validated parameters.
    pub fn config(params: &Params) -> Result<QuantCacheConfig> {
        let spec = QuantSpec {
            bits: params.usize_at_least("bits", 2)?,
            group_size: params.usize_at_least("group_size", 0)?,
            axis: QuantAxis::Token,
            scheme: QuantScheme::Symmetric,
        };
        Ok(QuantCacheConfig {
            keys: spec,
            values: spec,
            residual_length: 0,
            quantize_on_append: params.bool("quantize_prefill")?,
            residual_precision: ResidualPrecision::F16,
            key_position: KeyPosition::parse("int8 key_position", params.str("key_position")?)?,
        })
    }
}

impl MethodDescriptor for Int8 {
    const NAME: &'static str = "int8";
    const DESCRIPTION: &'static str = "Per-token symmetric 8-bit K and V (reference point)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("bits", 8, "bits per code (2..=8)"),
            ParamSpec::int(
                "group_size",
                0,
                "channels per scale; 0 = one scale per token and head",
            ),
            ParamSpec::bool(
                "quantize_prefill",
                false,
                "prefill attention already sees quantized K/V",
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
