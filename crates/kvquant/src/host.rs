//! Dequantization as one plain loop on the host, for backends whose tensors live in host memory.
//!
//! On CPU backends (flex, ndarray) the tensor-op formulation of unpacking (broadcast shifts,
//! masks, interleaving stacks and broadcast scale multiplies) runs on strided iterators at about
//! 50 ns per element, which made every decode step with a quantized cache dequantize the whole
//! store at ~2 s per step on SmolLM2. Reading the buffers out (a copy of the packed words, not
//! of the dequantized values) and decoding them in one pass costs about 2 ns per element
//! (`results/kvquant/dequant_speed.txt`). On GPU
//! backends the tensor ops stay on the device and this path is not used.

use burn::tensor::{backend::Backend, DType, FloatDType, Tensor, TensorData};

use crate::quantizer::{QuantAxis, QuantScheme, QuantizedChunk, Quantizer};

/// Whether backend `B` keeps tensors in host memory, so reading buffers out is only a copy.
pub fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    matches!(B::name(device).as_str(), "flex" | "ndarray")
}

/// Packed words of a chunk as `i64`, whatever integer width the backend stores.
fn words_as_i64(data: TensorData) -> Vec<i64> {
    match data.dtype {
        DType::I32 => data
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect()),
        _ => data.convert::<i64>().into_vec::<i64>(),
    }
    .expect("integer tensor data converts to i64")
}

fn params_as_f32(t: &Tensor<impl Backend, 4>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor data converts to f32")
}

/// [`Quantizer::dequantize`] on the host: the same values, computed as `q·s + min` (asymmetric)
/// or `(q - offset)·s` (symmetric) in f32 from the stored codes and 16-bit parameters.
///
/// `chunk.codes`: `[1, H, T, words]`; returns `[1, H, tokens, head_dim]` in `float_dtype`.
pub fn dequantize<B: Backend>(
    quantizer: &Quantizer,
    chunk: &QuantizedChunk<B>,
    tokens: usize,
    head_dim: usize,
    float_dtype: FloatDType,
) -> Tensor<B, 4> {
    let [_, heads, _, words_per_token] = chunk.codes.dims();
    let device = chunk.codes.device();
    let spec = quantizer.spec;
    let bits = spec.bits;
    let per_word = quantizer.layout.codes_per_word();
    let mask = (1i64 << bits) - 1;
    let words = words_as_i64(chunk.codes.clone().into_data());
    let scales = params_as_f32(&chunk.scales);
    let mins = chunk.mins.as_ref().map(params_as_f32);
    let param_cols = chunk.scales.dims()[3];
    let param_rows = chunk.scales.dims()[2];
    let offset = match spec.scheme {
        QuantScheme::Asymmetric => 0.0,
        QuantScheme::Symmetric => ((1u32 << (bits - 1)) - 1) as f32,
    };
    let group = spec.token_group(head_dim);
    let mut out = vec![0f32; heads * tokens * head_dim];
    let mut codes = vec![0f32; head_dim];
    for (row, out_row) in out.chunks_mut(head_dim).enumerate() {
        let (h, t) = (row / tokens, row % tokens);
        let word_row = &words[row * words_per_token..][..words_per_token];
        // This token's parameter row, and how channels map to its columns.
        let (param_row, channels_per_col) = match spec.axis {
            QuantAxis::Token => (h * param_rows + t, group),
            QuantAxis::Channel => (h * param_rows + t / spec.group_size, 1),
        };
        let scale_row = &scales[param_row * param_cols..][..param_cols];
        let min_row = mins
            .as_ref()
            .map(|m| &m[param_row * param_cols..][..param_cols]);
        // Unpack the row's codes word by word (no per-element division), then apply each
        // group's parameters to its run of channels.
        let mut c = 0;
        'words: for &word in word_row {
            let mut w = word;
            for _ in 0..per_word {
                if c == head_dim {
                    break 'words;
                }
                codes[c] = (w & mask) as f32;
                w >>= bits;
                c += 1;
            }
        }
        if channels_per_col == 1 {
            // One parameter per channel (channel axis): a straight element-wise pass.
            let q_s = out_row.iter_mut().zip(codes.iter()).zip(scale_row);
            match min_row {
                Some(min_row) => q_s
                    .zip(min_row)
                    .for_each(|(((x, &q), &s), &m)| *x = q * s + m),
                None => q_s.for_each(|((x, &q), &s)| *x = (q - offset) * s),
            }
            continue;
        }
        for (col, (xs, qs)) in out_row
            .chunks_mut(channels_per_col)
            .zip(codes.chunks(channels_per_col))
            .enumerate()
        {
            let scale = scale_row[col];
            match min_row {
                Some(min_row) => {
                    let min = min_row[col];
                    xs.iter_mut()
                        .zip(qs)
                        .for_each(|(x, &q)| *x = q * scale + min);
                }
                None => xs
                    .iter_mut()
                    .zip(qs)
                    .for_each(|(x, &q)| *x = (q - offset) * scale),
            }
        }
    }
    let x = Tensor::<B, 4>::from_data(TensorData::new(out, [1, heads, tokens, head_dim]), &device);
    if float_dtype == FloatDType::F32 {
        x
    } else {
        x.cast(float_dtype)
    }
}
