//! Loading Llama-architecture GGUF files (llama.cpp's format) into a [`Transformer`].
//!
//! Every tensor is dequantized to `f32` on the host. Two layout differences are undone:
//!
//! - Linear weights are stored `[out, in]` (Hugging Face / PyTorch); [`LayerWeights`] holds
//!   `[in, out]`, so they are transposed.
//! - llama.cpp's converter permutes the rows of the query and key projections so that its
//!   RoPE, which rotates adjacent pairs `(2i, 2i+1)`, matches Hugging Face's "rotate half",
//!   which rotates `(i, i + D/2)`. [`unpermute_qk_rows`] restores the Hugging Face order, which
//!   is what [`Rope`](crate::Rope) implements.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use longctx_core::{Error, Result};
use longctx_io::gguf::GgufFile;

use crate::config::TransformerConfig;
use crate::model::{LayerWeights, Transformer};

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

/// Hyper-parameters of a `llama` GGUF file. Every missing key is an error naming the file and
/// the key.
pub fn llama_config(file: &GgufFile) -> Result<TransformerConfig> {
    let err = |e: longctx_io::Error| Error::Other(e.to_string());
    let arch = file.architecture().map_err(err)?;
    if arch != "llama" {
        return Err(Error::file(
            file.path(),
            format!("general.architecture is '{arch}'; only 'llama' is supported"),
        ));
    }
    let uint = |k: &str| -> Result<usize> { file.get_uint(k).map(|v| v as usize).map_err(err) };
    let hidden = uint("llama.embedding_length")?;
    let n_heads = uint("llama.attention.head_count")?;
    let n_kv_heads = match file.metadata_value("llama.attention.head_count_kv") {
        Some(_) => uint("llama.attention.head_count_kv")?,
        None => n_heads,
    };
    let head_dim = match file.metadata_value("llama.attention.key_length") {
        Some(_) => uint("llama.attention.key_length")?,
        None if n_heads > 0 && hidden.is_multiple_of(n_heads) => hidden / n_heads,
        None => {
            return Err(Error::file(
                file.path(),
                format!("llama.embedding_length ({hidden}) is not a multiple of llama.attention.head_count ({n_heads})"),
            ))
        }
    };
    let vocab_size = file.get_array("tokenizer.ggml.tokens").map_err(err)?.len();
    let rope_theta = match file.metadata_value("llama.rope.freq_base") {
        Some(_) => file.get_float("llama.rope.freq_base").map_err(err)?,
        None => 10000.0,
    };
    let config = TransformerConfig {
        vocab_size,
        hidden_size: hidden,
        intermediate_size: uint("llama.feed_forward_length")?,
        n_layers: uint("llama.block_count")?,
        n_heads,
        n_kv_heads,
        head_dim,
        rope_theta,
        rms_norm_eps: file
            .get_float("llama.attention.layer_norm_rms_epsilon")
            .map_err(err)?,
        max_context: uint("llama.context_length")?,
        tie_embeddings: file.tensor_info("output.weight").is_err(),
        sliding_window: None,
    };
    config
        .validate()
        .map_err(|e| Error::file(file.path(), e.to_string()))?;
    Ok(config)
}

/// Reads tensors of one file, checking shapes and naming the file and tensor in errors.
struct Reader<'a, B: Backend> {
    file: &'a GgufFile,
    device: &'a B::Device,
}

impl<B: Backend> Reader<'_, B> {
    /// The tensor `name` dequantized, after checking its row-major shape is `want`.
    fn host(&self, name: &str, want: &[usize]) -> Result<Vec<f32>> {
        let info = self
            .file
            .tensor_info(name)
            .map_err(|e| Error::Other(e.to_string()))?;
        let got = info.shape();
        if got != want {
            return Err(Error::file(
                self.file.path(),
                format!("tensor {name} has shape {got:?}, expected {want:?}"),
            ));
        }
        self.file
            .dequantize_f32(name)
            .map_err(|e| Error::Other(e.to_string()))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>> {
        let v = self.host(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(v, [len]), self.device))
    }

    /// A linear weight stored `[out, in]`, returned `[in, out]`; `qk_heads` undoes the
    /// converter's RoPE row permutation for query/key projections.
    fn linear(
        &self,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        qk_heads: Option<usize>,
    ) -> Result<Tensor<B, 2>> {
        let mut v = self.host(name, &[out_dim, in_dim])?;
        if let Some(h) = qk_heads {
            v = unpermute_qk_rows(&v, out_dim, in_dim, h);
        }
        let t = transpose(&v, out_dim, in_dim);
        Ok(Tensor::from_data(
            TensorData::new(t, [in_dim, out_dim]),
            self.device,
        ))
    }
}

/// Loads the Llama-architecture model of an opened GGUF file onto `device`, named `name`.
pub fn load_llama<B: Backend>(
    file: &GgufFile,
    name: &str,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let c = llama_config(file)?;
    let r = Reader::<B> { file, device };
    let (h, q, kv, f, vocab) = (
        c.hidden_size,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.intermediate_size,
        c.vocab_size,
    );
    let embed_host = r.host("token_embd.weight", &[vocab, h])?;
    let lm_head_host = if c.tie_embeddings {
        transpose(&embed_host, vocab, h)
    } else {
        transpose(&r.host("output.weight", &[vocab, h])?, vocab, h)
    };
    let embed = Tensor::from_data(TensorData::new(embed_host, [vocab, h]), device);
    let lm_head = Tensor::from_data(TensorData::new(lm_head_host, [h, vocab]), device);
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        layers.push(LayerWeights {
            attn_norm: r.vector(&n("attn_norm"), h)?,
            wq: r.linear(&n("attn_q"), q, h, Some(c.n_heads))?,
            wk: r.linear(&n("attn_k"), kv, h, Some(c.n_kv_heads))?,
            wv: r.linear(&n("attn_v"), kv, h, None)?,
            wo: r.linear(&n("attn_output"), h, q, None)?,
            mlp_norm: r.vector(&n("ffn_norm"), h)?,
            w_gate: r.linear(&n("ffn_gate"), f, h, None)?,
            w_up: r.linear(&n("ffn_up"), f, h, None)?,
            w_down: r.linear(&n("ffn_down"), h, f, None)?,
        });
    }
    let final_norm = r.vector("output_norm.weight", h)?;
    Transformer::new(c, name, embed, layers, final_norm, lm_head)
        .map_err(|e| Error::file(file.path(), e.to_string()))
}

/// Opens the GGUF file at `path` and loads its model (named after the file stem).
pub fn load_llama_file<B: Backend>(path: &Path, device: &B::Device) -> Result<Transformer<B>> {
    let file = GgufFile::open(path).map_err(|e| Error::Other(e.to_string()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gguf".into());
    load_llama(&file, &name, device)
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
    fn transpose_is_row_major() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        let big: Vec<f32> = (0..70 * 130).map(|x| x as f32).collect();
        assert_eq!(transpose(&transpose(&big, 70, 130), 130, 70), big);
    }
}
