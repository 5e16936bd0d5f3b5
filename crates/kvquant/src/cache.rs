//! The quantized KV cache shared by KIVI, FlexGen-style and int8.
//!
//! Each of keys and values is a [`QuantStore`] (the quantized prefix) followed by a
//! full-precision residual of the most recent tokens. Tokens move from the residual into the
//! store at *flush points*: `compress(PrefillEnd)`, `compress(Decode)` after every decode step,
//! and, when `quantize_on_append` is set, right after `append` (so attention of that very pass
//! already sees quantized keys/values, as FlexGen's code does in prefill).
//!
//! What a flush moves, per axis (KIVI's bookkeeping, `R` = residual length):
//! - channel axis (KIVI keys): whole blocks of `R` tokens, i.e. `len - len % R` tokens; the
//!   residual therefore holds `T mod R` tokens;
//! - token axis (KIVI values, FlexGen, int8): all but the newest `R` tokens.
//!
//! The residual is kept as appended (model precision) until a flush point and in
//! `residual_precision` afterwards, so prefill attention sees exactly the model's keys/values.
//! Tokens are always quantized from their values in `residual_precision` (f16 by default), so
//! what the store holds does not depend on how long a token waited in the residual.
//!
//! Keys are quantized as the model hands them over (after RoPE, `key_position = post_rope`) or,
//! with `pre_rope`, rotated back by their positions first (the layer's [`RopeSpec`] from its
//! `AttentionLayerSpec`): the store then holds pre-RoPE keys, which `view` rotates forward
//! again by the stored tokens' positions. The residual is never rotated; it stays exactly as
//! appended (then rounded to `residual_precision`), as with post-RoPE keys.

use burn::tensor::{backend::Backend, FloatDType, Int, Tensor};
use serde::{Deserialize, Serialize};

use longctx_core::{
    tensor_util::tensor_bytes, AttentionLayerSpec, CompressionPhase, Error, KvCache, KvView,
    Result, RopeSpec,
};

use crate::quantizer::{QuantAxis, QuantSpec, Quantizer};
use crate::rope::KeyRotation;
use crate::store::QuantStore;

/// Storage precision of the full-precision residual once it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualPrecision {
    /// 16-bit floats, as the paper's fp16 models hold them (f32 if the backend has no f16).
    F16,
    /// The model's own float type (f32 here).
    Model,
}

impl ResidualPrecision {
    /// Parses `f16` or `model`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        match text {
            "f16" => Ok(Self::F16),
            "model" => Ok(Self::Model),
            other => Err(Error::InvalidInput(format!(
                "{field}: '{other}' is not a residual precision (f16, model)"
            ))),
        }
    }
}

/// Whether keys are quantized as the cache receives them (after the model's RoPE) or with the
/// rotation undone (before RoPE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPosition {
    /// Keys quantized after RoPE, as the model appends them (KIVI's setting).
    #[default]
    PostRope,
    /// Keys rotated back by their positions before quantization and rotated forward again
    /// after dequantization; needs the layer's [`RopeSpec`].
    PreRope,
}

impl KeyPosition {
    /// Parses `post_rope` or `pre_rope`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        match text {
            "post_rope" => Ok(Self::PostRope),
            "pre_rope" => Ok(Self::PreRope),
            other => Err(Error::InvalidInput(format!(
                "{field}: '{other}' is not a key position (post_rope, pre_rope)"
            ))),
        }
    }

    /// The parameter value: `post_rope` or `pre_rope`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PostRope => "post_rope",
            Self::PreRope => "pre_rope",
        }
    }
}

/// How a quantized cache quantizes and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantCacheConfig {
    pub keys: QuantSpec,
    pub values: QuantSpec,
    /// Tokens kept in full precision (`R`); on the channel axis, the block size quantized at once.
    pub residual_length: usize,
    /// Flush right after `append`, so the attention of the same pass sees quantized keys/values.
    pub quantize_on_append: bool,
    pub residual_precision: ResidualPrecision,
    /// Keys quantized after RoPE (default) or before.
    #[serde(default)]
    pub key_position: KeyPosition,
}

impl QuantCacheConfig {
    /// Checks the configuration; `method` names it in errors.
    pub fn validate(&self, method: &str) -> Result<()> {
        self.keys.validate(&format!("{method} keys"))?;
        self.values.validate(&format!("{method} values"))?;
        for (what, spec) in [("keys", &self.keys), ("values", &self.values)] {
            if spec.axis == QuantAxis::Channel
                && (self.residual_length == 0
                    || !self.residual_length.is_multiple_of(spec.group_size))
            {
                return Err(Error::InvalidInput(format!(
                    "{method}: per-channel {what} are quantized in blocks of residual_length \
                     tokens, so residual_length ({}) must be a positive multiple of group_size ({})",
                    self.residual_length, spec.group_size
                )));
            }
        }
        Ok(())
    }
}

/// One part (keys or values): the quantized prefix and the full-precision residual.
struct Part<B: Backend> {
    store: QuantStore<B>,
    /// Newest tokens in full precision, `[1, H, T_res, D]`.
    residual: Option<Tensor<B, 4>>,
}

impl<B: Backend> Part<B> {
    fn residual_len(&self) -> usize {
        self.residual.as_ref().map_or(0, |r| r.dims()[2])
    }

    fn append(&mut self, x: Tensor<B, 4>, model_dtype: FloatDType) {
        self.residual = Some(match self.residual.take() {
            Some(r) => Tensor::cat(vec![r.cast(model_dtype), x], 2),
            None => x,
        });
    }

    /// Moves the tokens the flush rule selects into the store; stores the rest in `stored`.
    ///
    /// Tokens are quantized from their values rounded to `stored` (then computed in
    /// `model_dtype`), whether this is their first flush or they waited in the residual: the
    /// quantized content is `Q(round_stored(x))` whatever the flush history, as in the paper's
    /// fp16 pipeline where keys/values are fp16 before they are quantized.
    ///
    /// `unrotate`: the rotation to undo before quantizing, with the positions of the part's
    /// tokens from the first one not yet stored (pre-RoPE keys).
    fn flush(
        &mut self,
        residual_length: usize,
        stored: FloatDType,
        model_dtype: FloatDType,
        unrotate: Option<(&KeyRotation, &[usize])>,
    ) -> Result<()> {
        let n = self.residual_len();
        let spec = self.store.quantizer().spec;
        let quantize = match spec.axis {
            QuantAxis::Channel => n - n % residual_length,
            QuantAxis::Token => n.saturating_sub(residual_length),
        };
        let Some(r) = self.residual.take() else {
            return Ok(());
        };
        let [o, h, _, d] = r.dims();
        if quantize > 0 {
            let chunk = r.clone().slice([0..o, 0..h, 0..quantize, 0..d]);
            let chunk = chunk.cast(stored).cast(model_dtype);
            let chunk = match unrotate {
                Some((rotation, positions)) => rotation.unrotate(chunk, &positions[..quantize]),
                None => chunk,
            };
            self.store.push(chunk)?;
        }
        self.residual =
            (quantize < n).then(|| r.slice([0..o, 0..h, quantize..n, 0..d]).cast(stored));
        Ok(())
    }

    /// Everything held, `[1, H, T, D]` in `dtype`, oldest first; `rotate`: the rotation to
    /// apply to the dequantized store, with the positions of the part's tokens.
    fn materialize(
        &self,
        dtype: FloatDType,
        rotate: Option<(&KeyRotation, &[usize])>,
    ) -> Tensor<B, 4> {
        let mut parts = Vec::with_capacity(2);
        parts.extend(self.store.dequantize(dtype).map(|x| match rotate {
            Some((rotation, positions)) => rotation.rotate(x, &positions[..self.store.len()]),
            None => x,
        }));
        parts.extend(self.residual.clone().map(|r| r.cast(dtype)));
        match parts.len() {
            0 => panic!("view() of an empty cache: append first"),
            1 => parts.pop().expect("one part"),
            _ => Tensor::cat(parts, 2),
        }
    }

    fn memory_bytes(&self) -> usize {
        self.store.memory_bytes() + self.residual.as_ref().map_or(0, tensor_bytes)
    }
}

/// A per-layer quantized KV cache; see the module documentation.
pub struct QuantKvCache<B: Backend> {
    config: QuantCacheConfig,
    head_dim: usize,
    /// The layer's RoPE, when keys are quantized before it.
    key_rotation: Option<KeyRotation>,
    /// Keys and values, created at the first append (which tells the device and float type).
    parts: Option<Parts<B>>,
    positions: Vec<usize>,
}

struct Parts<B: Backend> {
    keys: Part<B>,
    values: Part<B>,
    /// Float type of what was appended (what `view` returns).
    model_dtype: FloatDType,
    /// Float type the residual is stored in after a flush.
    residual_dtype: FloatDType,
}

impl<B: Backend> QuantKvCache<B> {
    /// An empty cache for heads of `head_dim` channels, keys quantized as appended
    /// (`key_position = pre_rope` needs the layer's RoPE: use [`Self::for_layer`]).
    pub fn new(config: QuantCacheConfig, head_dim: usize) -> Result<Self> {
        Self::with_rope(config, head_dim, None, "quantized cache", "the layer")
    }

    /// An empty cache for `layer`; `owner` (the method) names it in errors. With
    /// `key_position = pre_rope` the layer must declare its RoPE.
    pub fn for_layer(
        config: QuantCacheConfig,
        layer: &AttentionLayerSpec,
        owner: &str,
    ) -> Result<Self> {
        Self::with_rope(
            config,
            layer.head_dim,
            layer.rope.as_ref(),
            owner,
            &format!("layer {}", layer.layer),
        )
    }

    fn with_rope(
        config: QuantCacheConfig,
        head_dim: usize,
        rope: Option<&RopeSpec>,
        owner: &str,
        layer: &str,
    ) -> Result<Self> {
        config.validate(owner)?;
        let key_rotation = match config.key_position {
            KeyPosition::PostRope => None,
            KeyPosition::PreRope => {
                let rope = rope.ok_or_else(|| Error::InvalidParam {
                    owner: owner.to_string(),
                    param: "key_position".into(),
                    reason: format!(
                        "pre_rope needs the rotary embedding of {layer}, and the model declares \
                         none for it (its AttentionLayerSpec has rope = None)"
                    ),
                })?;
                Some(
                    KeyRotation::new(rope, head_dim).map_err(|e| Error::InvalidParam {
                        owner: owner.to_string(),
                        param: "key_position".into(),
                        reason: format!("pre_rope: unusable RoPE of {layer}: {e}"),
                    })?,
                )
            }
        };
        Ok(Self {
            config,
            head_dim,
            key_rotation,
            parts: None,
            positions: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QuantCacheConfig {
        &self.config
    }

    /// The packed codes of the quantized keys `[1, H, T_quantized, words]`, if any.
    pub fn key_codes(&self) -> Option<Tensor<B, 4, Int>> {
        self.parts.as_ref().and_then(|p| p.keys.store.codes())
    }

    /// Quantized tokens of keys and of values.
    pub fn quantized_tokens(&self) -> (usize, usize) {
        self.parts
            .as_ref()
            .map_or((0, 0), |p| (p.keys.store.len(), p.values.store.len()))
    }

    /// Full-precision tokens of keys and of values.
    pub fn residual_tokens(&self) -> (usize, usize) {
        self.parts
            .as_ref()
            .map_or((0, 0), |p| (p.keys.residual_len(), p.values.residual_len()))
    }

    fn flush(&mut self) -> Result<()> {
        let Some(p) = self.parts.as_mut() else {
            return Ok(()); // nothing appended yet
        };
        let r = self.config.residual_length;
        let unrotate = self
            .key_rotation
            .as_ref()
            .map(|rot| (rot, &self.positions[p.keys.store.len()..]));
        p.keys.flush(r, p.residual_dtype, p.model_dtype, unrotate)?;
        p.values.flush(r, p.residual_dtype, p.model_dtype, None)
    }

    fn parts_for(&mut self, like: &Tensor<B, 4>) -> &mut Parts<B> {
        let (config, head_dim) = (self.config, self.head_dim);
        self.parts.get_or_insert_with(|| {
            let device = like.device();
            let model_dtype: FloatDType = like.dtype().into();
            let part = |spec| Part {
                store: QuantStore::new(Quantizer::new::<B>(spec, &device), head_dim),
                residual: None,
            };
            Parts {
                keys: part(config.keys),
                values: part(config.values),
                model_dtype,
                residual_dtype: match config.residual_precision {
                    ResidualPrecision::Model => model_dtype,
                    ResidualPrecision::F16 => {
                        crate::quantizer::param_dtype::<B>(&device, model_dtype)
                    }
                },
            }
        })
    }
}

impl<B: Backend> KvCache<B> for QuantKvCache<B> {
    fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        positions: &[usize],
    ) -> Result<()> {
        let [_, _, t, d] = keys.dims();
        if keys.dims() != values.dims() || t != positions.len() || d != self.head_dim {
            return Err(Error::InvalidInput(format!(
                "quantized cache append: keys {:?}, values {:?}, {} positions and head_dim {} disagree",
                keys.dims(),
                values.dims(),
                positions.len(),
                self.head_dim
            )));
        }
        let parts = self.parts_for(&keys);
        let model_dtype = parts.model_dtype;
        parts.keys.append(keys, model_dtype);
        parts.values.append(values, model_dtype);
        self.positions.extend_from_slice(positions);
        if self.config.quantize_on_append {
            self.flush()?;
        }
        Ok(())
    }

    fn view(&self) -> KvView<B> {
        let p = self
            .parts
            .as_ref()
            .expect("view() of an empty cache: append first");
        KvView {
            keys: p.keys.materialize(
                p.model_dtype,
                self.key_rotation
                    .as_ref()
                    .map(|rot| (rot, &self.positions[..])),
            ),
            values: p.values.materialize(p.model_dtype, None),
            positions: self.positions.clone(),
            padding_mask: None,
            window: None,
        }
    }

    fn compress(&mut self, phase: CompressionPhase) -> Result<()> {
        match phase {
            CompressionPhase::PrefillEnd | CompressionPhase::Decode => self.flush(),
            // Quantization never drops tokens, so a chunked prefill needs no flush per chunk.
            CompressionPhase::PrefillChunk => Ok(()),
        }
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn memory_bytes(&self) -> usize {
        self.parts
            .as_ref()
            .map_or(0, |p| p.keys.memory_bytes() + p.values.memory_bytes())
    }
}
