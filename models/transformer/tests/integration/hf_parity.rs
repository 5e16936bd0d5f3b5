//! Tiny random Hugging Face checkpoints (`tests/fixtures/hf/*`, made by
//! `tests/fixtures/make_tiny_checkpoints.py` with transformers on CPU) against the logits
//! transformers computed for a fixed 40-token input: one-shot prefill and prefill followed by
//! token-by-token decoding, on flex and wgpu, within 1e-4 relative error in f32.
//!
//! The fixtures cover GQA, tied and untied embeddings, linear and Llama-3 RoPE scaling,
//! Mistral's sliding window (16 < 40), Qwen2's q/k/v bias with a sharded checkpoint, and
//! Gemma-3 (local window 8 and global layers alternating, q/k norms, query_pre_attn_scalar,
//! linear scaling on global layers only, final logit soft-capping).

use std::path::PathBuf;

use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, ModelDescriptor, Params,
    RawParams, SequenceState,
};
use longctx_io::safetensors::{Dtype, SafetensorsFile};
use longctx_method_full::Full;
use longctx_model_transformer::hf::load_hf;
use longctx_model_transformer::{LayerType, LocalModel, Transformer, WeightDtype};

const TOLERANCE: f64 = 1e-4;
const FIXTURES: [&str; 5] = ["llama-linear", "llama3-tied", "mistral", "qwen2", "gemma3"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// The fixture's input ids `[T]` and reference logits `[T, vocab]` (flattened).
fn reference(name: &str) -> (Vec<u32>, Vec<f32>, usize) {
    let file = SafetensorsFile::open(fixture(name).join("reference.safetensors")).unwrap();
    let (dtype, shape, bytes) = file.tensor_bytes("input_ids").unwrap();
    assert_eq!(dtype, Dtype::I64);
    let ids: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    assert_eq!(shape, [ids.len()]);
    let (shape, logits) = file.tensor_f32("logits").unwrap();
    assert_eq!(shape[0], ids.len());
    (ids, logits, shape[1])
}

fn new_state<B: Backend>(model: &Transformer<B>, prompt: usize) -> SequenceState<B> {
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<B>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap()
}

fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// One-shot logits of every position, flattened.
fn one_shot<B: Backend>(model: &Transformer<B>, ids: &[u32]) -> Vec<f32> {
    let mut state = new_state(model, ids.len());
    let pos: Vec<usize> = (0..ids.len()).collect();
    host(
        model
            .forward(ids, &pos, &mut state, LogitsSelection::All)
            .unwrap(),
    )
}

/// Logits of every position from a prefill of `prefill` tokens (all positions) followed by
/// one decode step per remaining token, flattened.
fn incremental<B: Backend>(model: &Transformer<B>, ids: &[u32], prefill: usize) -> Vec<f32> {
    let mut state = new_state(model, prefill);
    let pos: Vec<usize> = (0..prefill).collect();
    let mut out = host(
        model
            .forward(&ids[..prefill], &pos, &mut state, LogitsSelection::All)
            .unwrap(),
    );
    for p in prefill..ids.len() {
        out.extend(host(
            model
                .forward(&ids[p..=p], &[p], &mut state, LogitsSelection::Last)
                .unwrap(),
        ));
    }
    out
}

fn check_backend<B: Backend>(backend: &str) {
    let device = B::Device::default();
    for name in FIXTURES {
        let (ids, want, vocab) = reference(name);
        let model = load_hf::<B>(&fixture(name), name, WeightDtype::F32, &device).unwrap();
        assert_eq!(model.config.vocab_size, vocab);
        let got = one_shot(&model, &ids);
        let e = max_relative_error(&got, &want);
        eprintln!("{backend} {name}: one-shot relative error {e:e}");
        assert!(
            e < TOLERANCE,
            "{backend} {name}: one-shot relative error {e:e}"
        );
        let got = incremental(&model, &ids, 24);
        let e = max_relative_error(&got, &want);
        eprintln!("{backend} {name}: prefill 24 + 16 decode steps relative error {e:e}");
        assert!(
            e < TOLERANCE,
            "{backend} {name}: incremental relative error {e:e}"
        );
    }
}

#[test]
fn fixtures_match_transformers_on_flex() {
    check_backend::<Flex>("flex");
}

#[test]
fn fixtures_match_transformers_on_wgpu() {
    if std::env::var("LONGCTX_SKIP_WGPU").is_ok() {
        eprintln!("LONGCTX_SKIP_WGPU is set: skipping");
        return;
    }
    check_backend::<Wgpu>("wgpu");
}

#[test]
fn configs_read_the_features_each_fixture_covers() {
    let load = |n: &str| {
        load_hf::<Flex>(&fixture(n), n, WeightDtype::F32, &Default::default())
            .unwrap()
            .config
    };
    let llama = load("llama-linear");
    assert!(!llama.tie_embeddings && llama.n_kv_heads < llama.n_heads);
    assert!(load("llama3-tied").tie_embeddings);
    let mistral = load("mistral");
    assert_eq!(mistral.sliding_window, Some(16));
    assert!(mistral.layer_types.iter().all(|t| *t == LayerType::Local));
    assert!(load("qwen2").qkv_bias);
    let gemma = load("gemma3");
    assert_eq!(gemma.architecture, "gemma3");
    assert_eq!(
        gemma.layer_types,
        [
            LayerType::Local,
            LayerType::Global,
            LayerType::Local,
            LayerType::Global
        ]
    );
    assert_eq!(gemma.sliding_window, Some(8));
    assert_eq!(gemma.local_rope_theta, Some(10000.0));
    assert_eq!(gemma.final_logit_softcap, Some(10.0));
}

#[test]
fn local_model_loads_a_directory_with_its_tokenizer() {
    let path = fixture("qwen2");
    let given = RawParams::from([("path".to_string(), path.display().to_string())]);
    let params = Params::resolve("local", &LocalModel::params(), &given).unwrap();
    let loaded = LocalModel::load::<Flex>(&params, &Default::default()).unwrap();
    assert_eq!(loaded.tokenizer.vocab_size(), 300);
    let ids = loaded
        .tokenizer
        .encode("The quick brown fox", false)
        .unwrap();
    assert!(!ids.is_empty());
    let text = loaded.tokenizer.decode(&ids).unwrap();
    assert_eq!(text, "The quick brown fox");
    assert_eq!(loaded.model.info().architecture, "qwen2");
    assert!(loaded.provenance.weights_sha256.is_some());
}
