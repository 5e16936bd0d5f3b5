//! From named host tensors (a GGUF file or a safetensors checkpoint) to a [`Transformer`]:
//! one builder for every file format, told by a [`Layout`] how the format names and stores
//! each weight.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{backend::Backend, DType, Tensor, TensorCreationOptions, TensorData};
use longctx_core::{Error, Result};
use longctx_cpu_kernels::{QuantFormat, QuantMatrix};

use crate::config::{Family, TransformerConfig};
use crate::model::{LayerWeights, QuantLinears, Transformer};

/// The element type weights are stored in on the device (`--model-param dtype=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    /// The names [`WeightDtype::parse`] accepts.
    pub const NAMES: [&'static str; 3] = ["f32", "f16", "bf16"];

    /// `f32`, `f16` or `bf16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            other => Err(Error::InvalidInput(format!(
                "dtype '{other}' is not one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
}

/// Named tensors on the host, dequantized or converted to `f32`.
pub(crate) trait HostTensors {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name` in row-major order; its shape must be `want`.
    fn read(&self, name: &str, want: &[usize]) -> Result<Vec<f32>>;
    /// The raw blocks of the 2-D tensor `name` (row-major `[rows, cols]`, blocks along
    /// `cols`) when it is stored in a format the quantized decode kernels read.
    fn quant_blocks(&self, _name: &str) -> Option<(QuantFormat, &[u8])> {
        None
    }
}

/// One weight of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    AttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    QNorm,
    KNorm,
    PostAttnNorm,
    MlpNorm,
    PostMlpNorm,
    Gate,
    Up,
    Down,
}

/// How a file format names and stores the weights.
pub(crate) struct Layout {
    /// Name of `part` of layer `layer`.
    pub layer: fn(layer: usize, part: Part) -> String,
    pub embed: &'static str,
    pub final_norm: &'static str,
    /// The output projection; absent = tied to the embeddings.
    pub lm_head: &'static str,
    /// Added to every RMSNorm gain: 1 for Hugging Face Gemma checkpoints, which store `w` of
    /// `x * (1 + w)` (llama.cpp's converter adds the 1 itself).
    pub norm_offset: f32,
    /// Undo llama.cpp's interleaved-RoPE row permutation of Q and K (GGUF Llama).
    pub unpermute_qk: bool,
}

/// Turns host data into device tensors of the chosen dtype.
struct Upload<'a, B: Backend> {
    device: &'a B::Device,
    dtype: DType,
}

impl<B: Backend> Upload<'_, B> {
    fn tensor<const D: usize>(&self, data: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(data, shape),
            TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype),
        )
    }
}

/// Transposes a row-major `[rows, cols]` matrix to `[cols, rows]`.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    // Blocked, so both sides stay in cache for the large embedding matrix.
    const B: usize = 64;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = data[r * cols + c];
                }
            }
        }
    }
    out
}

/// Builds the model `config` describes from `src`, named `name`, on `device` in `dtype`.
/// A missing or misshapen tensor is an error naming the file and the tensor.
pub(crate) fn build<B: Backend>(
    config: TransformerConfig,
    name: &str,
    src: &dyn HostTensors,
    layout: &Layout,
    dtype: WeightDtype,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let c = &config;
    c.validate()
        .map_err(|e| Error::file(src.path(), e.to_string()))?;
    let up = Upload::<B> {
        device,
        dtype: dtype.dtype(),
    };
    let (h, q, kv, f, d, vocab) = (
        c.hidden_size,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.intermediate_size,
        c.head_dim,
        c.vocab_size,
    );
    let vector = |name: &str, len: usize| -> Result<Tensor<B, 1>> {
        Ok(up.tensor(src.read(name, &[len])?, [len]))
    };
    let norm = |name: &str, len: usize| -> Result<Tensor<B, 1>> {
        let mut v = src.read(name, &[len])?;
        if layout.norm_offset != 0.0 {
            v.iter_mut().for_each(|x| *x += layout.norm_offset);
        }
        Ok(up.tensor(v, [len]))
    };
    // Stored `[out, in]` (PyTorch and GGUF alike), returned `[in, out]`.
    let linear = |name: &str, out_dim: usize, in_dim: usize, qk_heads: Option<usize>| {
        let mut v = src.read(name, &[out_dim, in_dim])?;
        if let (Some(heads), true) = (qk_heads, layout.unpermute_qk) {
            v = crate::gguf::unpermute_qk_rows(&v, out_dim, in_dim, heads);
        }
        Ok::<_, Error>(up.tensor(transpose(&v, out_dim, in_dim), [in_dim, out_dim]))
    };
    // The GGUF blocks beside the f32 weights, for decode steps on flex (f32 weights only:
    // the f16/bf16 paths keep burn's matmul). Called after `linear`/`read` checked the shape.
    let packs = dtype == WeightDtype::F32 && longctx_cpu_kernels::flex::is_flex::<B>();
    let packed = |name: &str, out_dim: usize, in_dim: usize, qk_heads: Option<usize>| {
        if !packs {
            return None;
        }
        let (format, bytes) = src.quant_blocks(name)?;
        // A tensor the kernels cannot take (e.g. rows not whole blocks) keeps the f32 path.
        let mut p = QuantMatrix::new(format, out_dim, in_dim, bytes.to_vec()).ok()?;
        if let (Some(heads), true) = (qk_heads, layout.unpermute_qk) {
            // Whole rows move, as in `unpermute_qk_rows`.
            p = p
                .permute_rows(|row| crate::gguf::qk_source_row(row, out_dim, heads))
                .ok()?;
        }
        Some(Arc::new(p))
    };

    let embed_host = src.read(layout.embed, &[vocab, h])?;
    let lm_head_host = if src.contains(layout.lm_head) {
        if c.tie_embeddings {
            // A checkpoint may carry the tied copy too; it must then equal the embeddings.
            let head = src.read(layout.lm_head, &[vocab, h])?;
            if head != embed_host {
                return Err(Error::file(
                    src.path(),
                    format!(
                        "the config ties the embeddings, but {} differs from {}",
                        layout.lm_head, layout.embed
                    ),
                ));
            }
        }
        transpose(&src.read(layout.lm_head, &[vocab, h])?, vocab, h)
    } else if c.tie_embeddings {
        transpose(&embed_host, vocab, h)
    } else {
        return Err(Error::file(
            src.path(),
            format!(
                "tensor {} is missing and the embeddings are not tied",
                layout.lm_head
            ),
        ));
    };
    let embed = up.tensor(embed_host, [vocab, h]);
    let lm_head = up.tensor(lm_head_host, [h, vocab]);
    let lm_head_quant = if src.contains(layout.lm_head) {
        packed(layout.lm_head, vocab, h, None)
    } else {
        packed(layout.embed, vocab, h, None)
    };

    let gemma = c.family == Family::Gemma3;
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |p: Part| (layout.layer)(i, p);
        layers.push(LayerWeights {
            attn_norm: norm(&n(Part::AttnNorm), h)?,
            wq: linear(&n(Part::Q), q, h, Some(c.n_heads))?,
            wk: linear(&n(Part::K), kv, h, Some(c.n_kv_heads))?,
            wv: linear(&n(Part::V), kv, h, None)?,
            wo: linear(&n(Part::O), h, q, None)?,
            qkv_bias: if c.qkv_bias {
                Some([
                    vector(&n(Part::QBias), q)?,
                    vector(&n(Part::KBias), kv)?,
                    vector(&n(Part::VBias), kv)?,
                ])
            } else {
                None
            },
            o_bias: if c.o_bias {
                Some(vector(&n(Part::OBias), h)?)
            } else {
                None
            },
            qk_norm: if gemma {
                Some([norm(&n(Part::QNorm), d)?, norm(&n(Part::KNorm), d)?])
            } else {
                None
            },
            post_attn_norm: if gemma {
                Some(norm(&n(Part::PostAttnNorm), h)?)
            } else {
                None
            },
            mlp_norm: norm(&n(Part::MlpNorm), h)?,
            post_mlp_norm: if gemma {
                Some(norm(&n(Part::PostMlpNorm), h)?)
            } else {
                None
            },
            w_gate: linear(&n(Part::Gate), f, h, None)?,
            w_up: linear(&n(Part::Up), f, h, None)?,
            w_down: linear(&n(Part::Down), h, f, None)?,
            quant: QuantLinears {
                wq: packed(&n(Part::Q), q, h, Some(c.n_heads)),
                wk: packed(&n(Part::K), kv, h, Some(c.n_kv_heads)),
                wv: packed(&n(Part::V), kv, h, None),
                wo: packed(&n(Part::O), h, q, None),
                w_gate: packed(&n(Part::Gate), f, h, None),
                w_up: packed(&n(Part::Up), f, h, None),
                w_down: packed(&n(Part::Down), h, f, None),
                ..Default::default()
            }
            .with_merged_inputs(),
        });
    }
    let final_norm = norm(layout.final_norm, h)?;
    Transformer::new(config, name, embed, layers, final_norm, lm_head)
        .and_then(|m| m.with_quantized_lm_head(lm_head_quant))
        .map_err(|e| Error::file(src.path(), e.to_string()))
}
