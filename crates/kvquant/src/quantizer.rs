//! Group-wise min-max quantization of key/value chunks, and its inverse.
//!
//! Asymmetric (KIVI, FlexGen): per group `s = (max - min) / (2^b - 1)`, `q = round((x - min) / s)`,
//! `x̂ = q·s + min`. Symmetric (int8): `s = max|x| / (2^(b-1) - 1)`, `q = round(x / s)`, stored
//! offset by `2^(b-1) - 1` so codes are unsigned. Scales and minima are stored in 16-bit floats
//! and codes are computed from the stored (rounded) values, so `x̂` is what the stored buffers
//! really reconstruct.

use burn::tensor::backend::{Backend, DTypeUsage};
use burn::tensor::{DType, FloatDType, Int, Tensor};
use serde::{Deserialize, Serialize};

use longctx_core::{tensor_util::tensor_bytes, Error, Result};

use crate::packing::WordLayout;

/// Which axis a group runs along.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantAxis {
    /// Groups of `group_size` consecutive channels of one token (KIVI values, FlexGen, int8).
    Token,
    /// Groups of `group_size` consecutive tokens of one channel (KIVI keys).
    Channel,
}

impl QuantAxis {
    /// Parses `token` or `channel`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        match text {
            "token" => Ok(Self::Token),
            "channel" => Ok(Self::Channel),
            other => Err(Error::InvalidInput(format!(
                "{field}: '{other}' is not a quantization axis (token, channel)"
            ))),
        }
    }
}

/// Whether groups store a minimum (asymmetric) or only a scale around zero (symmetric).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantScheme {
    Asymmetric,
    Symmetric,
}

/// How one tensor (keys or values) is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// Bits per code, 1..=8 (symmetric: 2..=8).
    pub bits: usize,
    /// Elements per group along `axis`; for the token axis, 0 means the whole head.
    pub group_size: usize,
    pub axis: QuantAxis,
    pub scheme: QuantScheme,
}

impl QuantSpec {
    /// Checks the spec; `what` names it in errors (e.g. `kivi keys`).
    pub fn validate(&self, what: &str) -> Result<()> {
        let min_bits = match self.scheme {
            QuantScheme::Asymmetric => 1,
            QuantScheme::Symmetric => 2,
        };
        if !(min_bits..=8).contains(&self.bits) {
            return Err(Error::InvalidInput(format!(
                "{what}: bits = {} is out of range {min_bits}..=8",
                self.bits
            )));
        }
        if self.axis == QuantAxis::Channel && self.group_size == 0 {
            return Err(Error::InvalidInput(format!(
                "{what}: group_size must be positive for per-channel quantization"
            )));
        }
        Ok(())
    }

    /// Largest code.
    pub fn max_code(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// Symmetric codes are stored as `q + offset`.
    fn symmetric_offset(&self) -> f32 {
        ((1u32 << (self.bits - 1)) - 1) as f32
    }

    /// Group length for a head of `head_dim` channels on the token axis.
    pub fn token_group(&self, head_dim: usize) -> usize {
        if self.group_size == 0 {
            head_dim
        } else {
            self.group_size
        }
    }

    /// 16-bit parameters per group (scale, plus minimum when asymmetric).
    pub fn params_per_group(&self) -> usize {
        match self.scheme {
            QuantScheme::Asymmetric => 2,
            QuantScheme::Symmetric => 1,
        }
    }
}

/// One quantized chunk of `T` tokens of one layer.
///
/// Codes are always laid out token-major and packed along channels, whatever the grouping
/// axis, so chunks of any length concatenate along tokens.
#[derive(Clone, Debug)]
pub struct QuantizedChunk<B: Backend> {
    /// Packed codes, `[1, H, T, words]`.
    pub codes: Tensor<B, 4, Int>,
    /// Per-group scales (16-bit): token axis `[1, H, T, D/group]`, channel axis `[1, H, T/group, D]`.
    pub scales: Tensor<B, 4>,
    /// Per-group minima, same shape as `scales`; `None` when symmetric.
    pub mins: Option<Tensor<B, 4>>,
}

impl<B: Backend> QuantizedChunk<B> {
    /// Bytes of the buffers as stored.
    pub fn bytes(&self) -> usize {
        crate::store::tensor_bytes_int(&self.codes)
            + tensor_bytes(&self.scales)
            + self.mins.as_ref().map_or(0, tensor_bytes)
    }
}

/// The float type scales and minima are stored in: `f16` where the backend can store it (flex,
/// wgpu, cuda; arithmetic always runs on values cast back to the compute type), else the given
/// fallback (ndarray: f32), which is then what memory accounting counts.
pub fn param_dtype<B: Backend>(device: &B::Device, fallback: FloatDType) -> FloatDType {
    if B::dtype_usage(device, DType::F16).contains(DTypeUsage::Storage) {
        FloatDType::F16
    } else {
        fallback
    }
}

/// A quantizer for one spec on one backend.
#[derive(Clone, Copy, Debug)]
pub struct Quantizer {
    pub spec: QuantSpec,
    pub layout: WordLayout,
    /// Storage type of scales and minima.
    pub param_dtype: FloatDType,
}

impl Quantizer {
    /// A quantizer storing 16-bit parameters and 32-bit words where backend `B` can.
    pub fn new<B: Backend>(spec: QuantSpec, device: &B::Device) -> Self {
        Self {
            spec,
            layout: WordLayout::for_backend::<B>(spec.bits, device),
            param_dtype: param_dtype::<B>(device, FloatDType::F32),
        }
    }

    /// Channels after padding the head to whole groups (token axis), or `head_dim`.
    pub fn padded_channels(&self, head_dim: usize) -> usize {
        match self.spec.axis {
            QuantAxis::Token => head_dim.next_multiple_of(self.spec.token_group(head_dim)),
            QuantAxis::Channel => head_dim,
        }
    }

    /// Quantizes `x`: `[1, H, T, D]`. On the channel axis `T` must be a multiple of the group.
    pub fn quantize<B: Backend>(&self, x: Tensor<B, 4>) -> Result<QuantizedChunk<B>> {
        let [one, h, t, d] = x.dims();
        let float_dtype: FloatDType = x.dtype().into();
        // Grouped view `xg` (5-D) and the axis reduced within a group.
        let (xg, reduce_axis) = match self.spec.axis {
            QuantAxis::Token => {
                let g = self.spec.token_group(d);
                let dp = self.padded_channels(d);
                // A ragged last group is padded with copies of the last channel, which leaves
                // its min and max unchanged.
                let x = if dp > d {
                    let last = x.clone().slice([0..one, 0..h, 0..t, d - 1..d]);
                    Tensor::cat(vec![x, last.repeat_dim(3, dp - d)], 3)
                } else {
                    x
                };
                (x.reshape([one, h, t, dp / g, g]), 4)
            }
            QuantAxis::Channel => {
                let g = self.spec.group_size;
                if t % g != 0 {
                    return Err(Error::InvalidInput(format!(
                        "per-channel quantization of {t} tokens: not a multiple of group_size {g}"
                    )));
                }
                (x.reshape([one, h, t / g, g, d]), 3)
            }
        };
        let stored = |p: Tensor<B, 5>| p.cast(self.param_dtype);
        let as_compute = |p: &Tensor<B, 5>| p.clone().cast(float_dtype);
        // Divide by 1 where a group is constant (or its scale underflows the 16-bit type).
        let safe = |s: Tensor<B, 5>| {
            let zero = s.clone().equal_elem(0.0);
            s.mask_fill(zero, 1.0)
        };
        let (codes, scales, mins) = match self.spec.scheme {
            QuantScheme::Asymmetric => {
                let min = xg.clone().min_dim(reduce_axis);
                let max = xg.clone().max_dim(reduce_axis);
                let scale = stored((max - min.clone()).div_scalar(self.spec.max_code() as f32));
                let min = stored(min);
                let q = (xg - as_compute(&min))
                    .div(safe(as_compute(&scale)))
                    .round()
                    .clamp(0.0, self.spec.max_code() as f32);
                (q, scale, Some(min))
            }
            QuantScheme::Symmetric => {
                let offset = self.spec.symmetric_offset();
                let scale = stored(xg.clone().abs().max_dim(reduce_axis).div_scalar(offset));
                let q = xg
                    .div(safe(as_compute(&scale)))
                    .round()
                    .clamp(-offset, offset)
                    .add_scalar(offset);
                (q, scale, None)
            }
        };
        let dp = self.padded_channels(d);
        // Both groupings merge back to token-major `[1, H, T, D_padded]` by a reshape.
        let codes = self.layout.pack(codes.reshape([one, h, t, dp]).int());
        let squeeze = |p: Tensor<B, 5>| p.squeeze_dim::<4>(reduce_axis);
        Ok(QuantizedChunk {
            codes,
            scales: squeeze(scales),
            mins: mins.map(squeeze),
        })
    }

    /// Reconstructs `[1, H, T, head_dim]` in `float_dtype` from a chunk of `tokens` tokens: in
    /// one host loop on CPU backends ([`crate::host`]), with device tensor ops elsewhere.
    pub fn dequantize<B: Backend>(
        &self,
        chunk: &QuantizedChunk<B>,
        tokens: usize,
        head_dim: usize,
        float_dtype: FloatDType,
    ) -> Tensor<B, 4> {
        if crate::host::is_host_backend::<B>(&chunk.codes.device()) {
            crate::host::dequantize(self, chunk, tokens, head_dim, float_dtype)
        } else {
            self.dequantize_with_tensor_ops(chunk, tokens, head_dim, float_dtype)
        }
    }

    /// [`Self::dequantize`] as backend tensor ops (the path GPU backends take).
    pub fn dequantize_with_tensor_ops<B: Backend>(
        &self,
        chunk: &QuantizedChunk<B>,
        tokens: usize,
        head_dim: usize,
        float_dtype: FloatDType,
    ) -> Tensor<B, 4> {
        let [one, h, _, _] = chunk.codes.dims();
        let dp = self.padded_channels(head_dim);
        let q = self
            .layout
            .unpack(chunk.codes.clone(), dp)
            .float()
            .cast(float_dtype);
        let (grouped, axis) = match self.spec.axis {
            QuantAxis::Token => {
                let g = self.spec.token_group(head_dim);
                (q.reshape([one, h, tokens, dp / g, g]), 4)
            }
            QuantAxis::Channel => {
                let g = self.spec.group_size;
                (q.reshape([one, h, tokens / g, g, head_dim]), 3)
            }
        };
        let param = |p: &Tensor<B, 4>| p.clone().cast(float_dtype).unsqueeze_dim::<5>(axis);
        let x = match (&chunk.mins, self.spec.scheme) {
            (Some(min), QuantScheme::Asymmetric) => grouped * param(&chunk.scales) + param(min),
            _ => grouped.sub_scalar(self.spec.symmetric_offset()) * param(&chunk.scales),
        };
        let x = x.reshape([one, h, tokens, dp]);
        if dp > head_dim {
            x.slice([0..one, 0..h, 0..tokens, 0..head_dim])
        } else {
            x
        }
    }
}
