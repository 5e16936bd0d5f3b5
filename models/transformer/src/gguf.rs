//! Loading GGUF files (llama.cpp's format) into a [`Transformer`]: the `llama` and `gemma3`
//! architectures.
//!
//! Every tensor is dequantized to `f32` on the host, then stored in the chosen dtype. Layout
//! differences from Hugging Face checkpoints:
//!
//! - Linear weights are stored `[out, in]` (Hugging Face / PyTorch); [`LayerWeights`] holds
//!   `[in, out]`, so they are transposed.
//! - For `llama`, llama.cpp's converter permutes the rows of the query and key projections so
//!   that its RoPE, which rotates adjacent pairs `(2i, 2i+1)`, matches Hugging Face's "rotate
//!   half", which rotates `(i, i + D/2)`. [`unpermute_qk_rows`] restores the Hugging Face
//!   order, which is what [`Rope`](crate::Rope) implements. The converter's `Gemma3Model` does
//!   not permute, so `gemma3` weights are used as they are.
//! - For `gemma3`, the converter stores every RMSNorm gain with the 1 of `x * (1 + w)` already
//!   added (`norm_shift = 1.0`), so the gains are used as they are.
//! - `gemma3` files do not record everything the Hugging Face config has; llama.cpp fixes the
//!   rest for the architecture, and so does [`gemma3_config`]: every 6th layer is global, local
//!   layers use RoPE base 10000 without scaling, and attention scores are scaled by
//!   `head_dim^-0.5` (transformers' `query_pre_attn_scalar`, equal to `head_dim` for every
//!   Gemma-3 size except 27B).
//!
//! [`LayerWeights`]: crate::LayerWeights

use std::path::Path;

use burn::tensor::backend::Backend;
use longctx_core::{Error, Result};
use longctx_cpu_kernels::QuantFormat;
use longctx_io::gguf::{GgmlType, GgufFile};

use crate::config::{Family, LayerType, TransformerConfig};
use crate::model::Transformer;
use crate::rope::RopeScaling;
pub use crate::weights::transpose;
use crate::weights::{build, HostTensors, Layout, Part, WeightDtype};

/// Inverse of llama.cpp's `permute(w, n_head, n_head_kv)` on a row-major `[rows, cols]` matrix
/// whose rows are `n_heads` heads of `head_dim = rows / n_heads` rows each.
///
/// The converter maps the Hugging Face row `h*D + s*(D/2) + i` (`s` in {0, 1}, `i < D/2`) to
/// row `h*D + 2*i + s` (it reshapes to `[n_heads, 2, D/2, cols]` and swaps axes 1 and 2). So
/// the Hugging Face row `h*D + s*(D/2) + i` is read back from GGUF row `h*D + 2*i + s`.
///
/// Panics if `rows` is not `n_heads` times an even head dimension or `data` is not
/// `rows * cols` long (callers check shapes first).
pub fn unpermute_qk_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    assert_eq!(data.len(), rows * cols, "data is not rows * cols long");
    assert!(
        n_heads > 0 && rows.is_multiple_of(n_heads) && (rows / n_heads).is_multiple_of(2),
        "rows ({rows}) must be n_heads ({n_heads}) times an even head dimension"
    );
    let d = rows / n_heads;
    let half = d / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for s in 0..2 {
            for i in 0..half {
                let hf_row = h * d + s * half + i;
                let gguf_row = h * d + 2 * i + s;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

/// The GGUF row that [`unpermute_qk_rows`] moves to row `row` of a `[rows, _]` matrix of
/// `n_heads` heads, for reordering whole rows of blocks the same way. `rows` must be
/// `n_heads` times an even head dimension.
pub fn qk_source_row(row: usize, rows: usize, n_heads: usize) -> usize {
    let d = rows / n_heads;
    let half = d / 2;
    let (h, r) = (row / d, row % d);
    let (s, i) = (r / half, r % half);
    h * d + 2 * i + s
}

/// llama.cpp's period of global layers in `gemma3` (`hparams.set_swa_pattern(6)`).
pub const GEMMA3_GLOBAL_EVERY: usize = 6;
/// llama.cpp's RoPE base of `gemma3` local layers.
pub const GEMMA3_LOCAL_ROPE_THETA: f64 = 10000.0;

fn io_err(e: longctx_io::Error) -> Error {
    Error::Other(e.to_string())
}

/// Reads the `{arch}.*` hyper-parameters common to both architectures.
struct Keys<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn has(&self, k: &str) -> bool {
        self.file.metadata_value(&self.key(k)).is_some()
    }
    fn uint(&self, k: &str) -> Result<usize> {
        self.file
            .get_uint(&self.key(k))
            .map(|v| v as usize)
            .map_err(io_err)
    }
    fn float(&self, k: &str) -> Result<f64> {
        self.file.get_float(&self.key(k)).map_err(io_err)
    }
    fn float_or(&self, k: &str, default: f64) -> Result<f64> {
        if self.has(k) {
            self.float(k)
        } else {
            Ok(default)
        }
    }

    /// The Llama-shaped part of the configuration.
    fn base(&self) -> Result<TransformerConfig> {
        let hidden = self.uint("embedding_length")?;
        let n_heads = self.uint("attention.head_count")?;
        let n_kv_heads = if self.has("attention.head_count_kv") {
            self.uint("attention.head_count_kv")?
        } else {
            n_heads
        };
        let head_dim = if self.has("attention.key_length") {
            self.uint("attention.key_length")?
        } else if n_heads > 0 && hidden.is_multiple_of(n_heads) {
            hidden / n_heads
        } else {
            return Err(Error::file(
                self.file.path(),
                format!(
                    "{} ({hidden}) is not a multiple of {} ({n_heads})",
                    self.key("embedding_length"),
                    self.key("attention.head_count")
                ),
            ));
        };
        let mut c = TransformerConfig::llama(
            self.file
                .get_array("tokenizer.ggml.tokens")
                .map_err(io_err)?
                .len(),
            hidden,
            self.uint("feed_forward_length")?,
            self.uint("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            self.float_or("rope.freq_base", 10000.0)?,
            self.float("attention.layer_norm_rms_epsilon")?,
            self.uint("context_length")?,
            self.file.tensor_info("output.weight").is_err(),
            None,
        );
        c.architecture = self.arch.to_string();
        c.rope_scaling = self.rope_scaling()?;
        Ok(c)
    }

    /// `{arch}.rope.scaling.type` (absent or `none` = no scaling; `linear` supported).
    fn rope_scaling(&self) -> Result<RopeScaling> {
        let key = self.key("rope.scaling.type");
        match self.file.metadata_value(&key) {
            None => Ok(RopeScaling::None),
            Some(_) => match self.file.get_str(&key).map_err(io_err)? {
                "none" => Ok(RopeScaling::None),
                "linear" => Ok(RopeScaling::Linear {
                    factor: self.float("rope.scaling.factor")?,
                }),
                other => Err(Error::file(
                    self.file.path(),
                    format!("{key} is '{other}'; only 'none' and 'linear' are supported"),
                )),
            },
        }
    }
}

/// Hyper-parameters of a `llama` GGUF file. Every missing key is an error naming the file and
/// the key.
pub fn llama_config(file: &GgufFile) -> Result<TransformerConfig> {
    let arch = file.architecture().map_err(io_err)?;
    if arch != "llama" {
        return Err(Error::file(
            file.path(),
            format!("general.architecture is '{arch}', not 'llama'"),
        ));
    }
    let c = Keys { file, arch }.base()?;
    c.validate()
        .map_err(|e| Error::file(file.path(), e.to_string()))?;
    Ok(c)
}

/// Hyper-parameters of a `gemma3` GGUF file (see the module documentation for the values
/// llama.cpp fixes rather than stores).
pub fn gemma3_config(file: &GgufFile) -> Result<TransformerConfig> {
    let arch = file.architecture().map_err(io_err)?;
    if arch != "gemma3" {
        return Err(Error::file(
            file.path(),
            format!("general.architecture is '{arch}', not 'gemma3'"),
        ));
    }
    let keys = Keys { file, arch };
    let mut c = keys.base()?;
    c.family = Family::Gemma3;
    c.rope_theta = keys.float_or("rope.freq_base", 1_000_000.0)?;
    c.local_rope_theta = Some(GEMMA3_LOCAL_ROPE_THETA);
    c.sliding_window = Some(keys.uint("attention.sliding_window")?);
    c.layer_types = (0..c.n_layers)
        .map(|i| {
            if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 {
                LayerType::Global
            } else {
                LayerType::Local
            }
        })
        .collect();
    c.query_pre_attn_scalar = Some(c.head_dim as f64);
    if keys.has("final_logit_softcapping") {
        c.final_logit_softcap = Some(keys.float("final_logit_softcapping")?);
    }
    c.validate()
        .map_err(|e| Error::file(file.path(), e.to_string()))?;
    Ok(c)
}

impl HostTensors for GgufFile {
    fn path(&self) -> &Path {
        GgufFile::path(self)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_ok()
    }
    fn read(&self, name: &str, want: &[usize]) -> Result<Vec<f32>> {
        let got = self.tensor_info(name).map_err(io_err)?.shape();
        if got != want {
            return Err(Error::file(
                GgufFile::path(self),
                format!("tensor {name} has shape {got:?}, expected {want:?}"),
            ));
        }
        self.dequantize_f32(name).map_err(io_err)
    }
    fn quant_blocks(&self, name: &str) -> Option<(QuantFormat, &[u8])> {
        let info = self.tensor_info(name).ok()?;
        let format = match info.ggml_type() {
            GgmlType::Q4_0 => QuantFormat::Q4_0,
            GgmlType::Q4_1 => QuantFormat::Q4_1,
            GgmlType::Q8_0 => QuantFormat::Q8_0,
            _ => return None,
        };
        if info.shape_ggml().len() != 2 {
            return None;
        }
        Some((format, self.tensor_bytes(name).ok()?))
    }
}

/// llama.cpp's tensor names (`blk.N.attn_q.weight`, ...).
fn gguf_layer_name(layer: usize, part: Part) -> String {
    let (base, kind) = match part {
        Part::AttnNorm => ("attn_norm", "weight"),
        Part::Q => ("attn_q", "weight"),
        Part::K => ("attn_k", "weight"),
        Part::V => ("attn_v", "weight"),
        Part::O => ("attn_output", "weight"),
        Part::QBias => ("attn_q", "bias"),
        Part::KBias => ("attn_k", "bias"),
        Part::VBias => ("attn_v", "bias"),
        Part::OBias => ("attn_output", "bias"),
        Part::QNorm => ("attn_q_norm", "weight"),
        Part::KNorm => ("attn_k_norm", "weight"),
        Part::PostAttnNorm => ("post_attention_norm", "weight"),
        Part::MlpNorm => ("ffn_norm", "weight"),
        Part::PostMlpNorm => ("post_ffw_norm", "weight"),
        Part::Gate => ("ffn_gate", "weight"),
        Part::Up => ("ffn_up", "weight"),
        Part::Down => ("ffn_down", "weight"),
    };
    format!("blk.{layer}.{base}.{kind}")
}

/// Loads the model of an opened GGUF file (`llama` or `gemma3`) onto `device` in `dtype`.
pub fn load_gguf<B: Backend>(
    file: &GgufFile,
    name: &str,
    dtype: WeightDtype,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let arch = file.architecture().map_err(io_err)?;
    let (config, unpermute_qk) = match arch {
        "llama" => (llama_config(file)?, true),
        "gemma3" => (gemma3_config(file)?, false),
        other => {
            return Err(Error::file(
                file.path(),
                format!("general.architecture is '{other}'; supported: llama, gemma3"),
            ))
        }
    };
    let layout = Layout {
        layer: gguf_layer_name,
        embed: "token_embd.weight",
        final_norm: "output_norm.weight",
        lm_head: "output.weight",
        norm_offset: 0.0,
        unpermute_qk,
    };
    build(config, name, file, &layout, dtype, device)
}

/// Loads the Llama-architecture model of an opened GGUF file onto `device`, in f32.
pub fn load_llama<B: Backend>(
    file: &GgufFile,
    name: &str,
    device: &B::Device,
) -> Result<Transformer<B>> {
    llama_config(file)?;
    load_gguf(file, name, WeightDtype::F32, device)
}

/// Opens the GGUF file at `path` and loads its model (named after the file stem) in f32.
pub fn load_gguf_file<B: Backend>(path: &Path, device: &B::Device) -> Result<Transformer<B>> {
    let file = GgufFile::open(path).map_err(io_err)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf".into());
    load_gguf(&file, &name, WeightDtype::F32, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter `permute`, written out for the test: HF row `h*D + s*D/2 + i`
    /// goes to row `h*D + 2i + s`.
    fn permute(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
        let d = rows / n_heads;
        let mut out = vec![0.0; data.len()];
        for h in 0..n_heads {
            for s in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + s * (d / 2) + i;
                    let dst = h * d + 2 * i + s;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&data[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation_by_hand() {
        // Two heads of dimension 4, one column: HF rows [a0 a1 b0 b1 | c0 c1 d0 d1] where
        // (a_i, b_i) are rotate-half pairs. The converter interleaves each head's halves:
        // [a0 b0 a1 b1 | c0 d0 c1 d1].
        let hf = [10.0, 11.0, 20.0, 21.0, 30.0, 31.0, 40.0, 41.0];
        let gguf = [10.0, 20.0, 11.0, 21.0, 30.0, 40.0, 31.0, 41.0];
        assert_eq!(permute(&hf, 8, 1, 2), gguf);
        assert_eq!(unpermute_qk_rows(&gguf, 8, 1, 2), hf);
    }

    #[test]
    fn unpermute_inverts_permute_with_several_columns() {
        let (rows, cols, heads) = (12, 3, 2);
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let p = permute(&data, rows, cols, heads);
        assert_ne!(p, data);
        assert_eq!(unpermute_qk_rows(&p, rows, cols, heads), data);
        // Columns travel with their row.
        assert_eq!(&p[3..6], &data[9..12]); // gguf row 1 = hf row 3 (h0, s=1, i=0)
    }

    #[test]
    fn qk_source_rows_reorder_like_unpermute() {
        let (rows, cols, heads) = (24, 2, 3);
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let want = unpermute_qk_rows(&data, rows, cols, heads);
        for row in 0..rows {
            let src = qk_source_row(row, rows, heads);
            assert_eq!(
                &want[row * cols..(row + 1) * cols],
                &data[src * cols..(src + 1) * cols]
            );
        }
    }

    #[test]
    fn transpose_is_row_major() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        let big: Vec<f32> = (0..70 * 130).map(|x| x as f32).collect();
        assert_eq!(transpose(&transpose(&big, 70, 130), 130, 70), big);
    }
}
