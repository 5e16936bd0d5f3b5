//! A small random Llama written as a GGUF file the way llama.cpp's converter writes it
//! (`[out, in]` weights, Q/K rows permuted for interleaved RoPE) loads back into exactly the
//! model built from the Hugging Face-layout weights; bad files are errors naming the tensor.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_io::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use longctx_method_full::Full;
use longctx_model_transformer::gguf::{load_llama, transpose};
use longctx_model_transformer::{LayerWeights, Transformer, TransformerConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};

const VOCAB: usize = 40;
const HIDDEN: usize = 16;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 4;
const FFN: usize = 24;
const LAYERS: usize = 2;

/// llama.cpp converter's `permute`: `w.reshape(n_head, 2, D/2, cols).swapaxes(1, 2)`.
fn converter_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let d = rows / n_head;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..d / 2 {
                let (src, dst) = (h * d + s * (d / 2) + i, h * d + 2 * i + s);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Hugging Face-layout weights: name -> ([out, in] or [n] shape, data).
struct HfWeights(Vec<(String, Vec<usize>, Vec<f32>)>);

impl HfWeights {
    fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let n = shape.iter().product();
            let v = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
            w.push((name, shape, v));
        };
        add("token_embd.weight".into(), vec![VOCAB, HIDDEN]);
        for l in 0..LAYERS {
            let n = |t: &str| format!("blk.{l}.{t}.weight");
            add(n("attn_norm"), vec![HIDDEN]);
            add(n("attn_q"), vec![HEADS * HEAD_DIM, HIDDEN]);
            add(n("attn_k"), vec![KV_HEADS * HEAD_DIM, HIDDEN]);
            add(n("attn_v"), vec![KV_HEADS * HEAD_DIM, HIDDEN]);
            add(n("attn_output"), vec![HIDDEN, HEADS * HEAD_DIM]);
            add(n("ffn_norm"), vec![HIDDEN]);
            add(n("ffn_gate"), vec![FFN, HIDDEN]);
            add(n("ffn_up"), vec![FFN, HIDDEN]);
            add(n("ffn_down"), vec![HIDDEN, FFN]);
        }
        add("output_norm.weight".into(), vec![HIDDEN]);
        Self(w)
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.0.iter().find(|(n, _, _)| n == name).unwrap().2
    }

    /// The GGUF bytes, Q/K permuted as the converter does; `skip`/`reshape` break the file.
    fn gguf(&self, skip: Option<&str>, bad_shape: Option<&str>) -> Vec<u8> {
        let mut w = GgufWriter::new();
        let u = MetadataValue::U32;
        w.add_metadata(
            "general.architecture",
            MetadataValue::String("llama".into()),
        )
        .add_metadata("llama.block_count", u(LAYERS as u32))
        .add_metadata("llama.context_length", u(256))
        .add_metadata("llama.embedding_length", u(HIDDEN as u32))
        .add_metadata("llama.feed_forward_length", u(FFN as u32))
        .add_metadata("llama.attention.head_count", u(HEADS as u32))
        .add_metadata("llama.attention.head_count_kv", u(KV_HEADS as u32))
        .add_metadata("llama.rope.freq_base", MetadataValue::F32(10000.0))
        .add_metadata(
            "llama.attention.layer_norm_rms_epsilon",
            MetadataValue::F32(1e-5),
        )
        .add_metadata(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(
                (0..VOCAB).map(|i| format!("t{i}")).collect(),
            )),
        );
        for (name, shape, data) in &self.0 {
            if Some(name.as_str()) == skip {
                continue;
            }
            let data = if name.ends_with("attn_q.weight") {
                converter_permute(data, shape[0], shape[1], HEADS)
            } else if name.ends_with("attn_k.weight") {
                converter_permute(data, shape[0], shape[1], KV_HEADS)
            } else {
                data.clone()
            };
            if Some(name.as_str()) == bad_shape {
                let swapped: Vec<usize> = shape.iter().rev().copied().collect();
                w.add_f32_tensor(name.clone(), &swapped, &data).unwrap();
            } else {
                w.add_f32_tensor(name.clone(), shape, &data).unwrap();
            }
        }
        w.to_bytes()
    }

    /// The model built directly from the Hugging Face layout (transposed to `[in, out]`).
    fn reference(&self) -> Transformer<Flex> {
        let dev = Default::default();
        let vec1 = |n: &str| {
            Tensor::<Flex, 1>::from_data(TensorData::new(self.get(n).to_vec(), [HIDDEN]), &dev)
        };
        let lin = |n: &str, out: usize, inp: usize| {
            Tensor::<Flex, 2>::from_data(
                TensorData::new(transpose(self.get(n), out, inp), [inp, out]),
                &dev,
            )
        };
        let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
        let layers = (0..LAYERS)
            .map(|l| {
                let n = |t: &str| format!("blk.{l}.{t}.weight");
                LayerWeights::llama(
                    vec1(&n("attn_norm")),
                    lin(&n("attn_q"), q, HIDDEN),
                    lin(&n("attn_k"), kv, HIDDEN),
                    lin(&n("attn_v"), kv, HIDDEN),
                    lin(&n("attn_output"), HIDDEN, q),
                    vec1(&n("ffn_norm")),
                    lin(&n("ffn_gate"), FFN, HIDDEN),
                    lin(&n("ffn_up"), FFN, HIDDEN),
                    lin(&n("ffn_down"), HIDDEN, FFN),
                )
            })
            .collect();
        let embed = self.get("token_embd.weight").to_vec();
        let config = TransformerConfig::llama(
            VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, 10000.0, 1e-5, 256, true, None,
        );
        Transformer::new(
            config,
            "reference",
            Tensor::from_data(TensorData::new(embed.clone(), [VOCAB, HIDDEN]), &dev),
            layers,
            vec1("output_norm.weight"),
            Tensor::from_data(
                TensorData::new(transpose(&embed, VOCAB, HIDDEN), [HIDDEN, VOCAB]),
                &dev,
            ),
        )
        .unwrap()
    }
}

fn logits(model: &Transformer<Flex>, tokens: &[u32]) -> Vec<f32> {
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<Flex>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: tokens.len(),
        n_layers: LAYERS,
    };
    let mut state = SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap();
    let positions: Vec<usize> = (0..tokens.len()).collect();
    model
        .forward(tokens, &positions, &mut state, LogitsSelection::All)
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn converter_layout_loads_back_to_the_hugging_face_model() {
    let w = HfWeights::random(7);
    let file = GgufFile::from_bytes(w.gguf(None, None)).unwrap();
    let loaded = load_llama::<Flex>(&file, "tiny-gguf", &Default::default()).unwrap();
    assert!(loaded.config.tie_embeddings);
    assert_eq!(loaded.config.head_dim, HEAD_DIM);
    let reference = w.reference();
    for l in 0..LAYERS {
        let data = |t: &Tensor<Flex, 2>| t.clone().into_data().to_vec::<f32>().unwrap();
        assert_eq!(data(&loaded.layers[l].wq), data(&reference.layers[l].wq));
        assert_eq!(data(&loaded.layers[l].wk), data(&reference.layers[l].wk));
        assert_eq!(
            data(&loaded.layers[l].w_down),
            data(&reference.layers[l].w_down)
        );
    }
    let tokens = [3, 1, 4, 1, 5, 9, 2, 6];
    let (a, b) = (logits(&loaded, &tokens), logits(&reference, &tokens));
    assert_eq!(a.len(), tokens.len() * VOCAB);
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-5, "max |diff| = {max_diff}");
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let w = HfWeights::random(1);
    let file = GgufFile::from_bytes(w.gguf(Some("blk.1.ffn_up.weight"), None)).unwrap();
    let err = load_llama::<Flex>(&file, "x", &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("<memory>"),
        "{err}"
    );

    let file = GgufFile::from_bytes(w.gguf(None, Some("blk.0.attn_k.weight"))).unwrap();
    let err = load_llama::<Flex>(&file, "x", &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_k.weight") && err.contains("has shape [16, 8], expected [8, 16]"),
        "{err}"
    );
}
