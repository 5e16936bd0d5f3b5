//! Real GGUF models against transformers: last-position logits of three fixed prompts (one of
//! 4,096 tokens) within 1e-3 relative error, identical 32-token greedy continuations, and (for
//! SmolLM2) identical tokenization of the short prompts.
//!
//! The references were computed by `tests/fixtures/gguf-reference/make_gguf_references.py`
//! (transformers reading the same GGUF, float32 on CPU). Skipped with a message when the model
//! is not cached; CI fetches it and sets `LONGCTX_REQUIRE_MODELS=1`, which turns a missing
//! model into a failure.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use longctx_core::tensor_util::max_relative_error;
use longctx_core::LoadedModel;
use longctx_model_transformer::pretrained::{default_cache_dir, load_gguf_model, GEMMA3_270M};
use longctx_model_transformer::SmolLm2;
use serde_json::Value;

use crate::common;
use common::logits_and_greedy;

const LOGITS_TOLERANCE: f64 = 1e-3;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf-reference")
}

fn require_or_skip(path: &Path, fetch: &str) -> bool {
    if path.is_file() {
        return true;
    }
    assert!(
        std::env::var("LONGCTX_REQUIRE_MODELS").is_err(),
        "LONGCTX_REQUIRE_MODELS is set but {} is missing",
        path.display()
    );
    eprintln!("skipping: {} not found (run `{fetch}`)", path.display());
    false
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Checks `model` against the reference record `NAME.json` in the fixture folder; with
/// `compare_tokenization`, also that our tokenizer gives the reference's ids for the short prompts.
fn check_against_reference(m: &LoadedModel<Flex>, name: &str, compare_tokenization: bool) {
    let dir = fixture_dir();
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        m.provenance.weights_sha256.as_deref(),
        record["gguf_sha256"].as_str(),
        "the cached GGUF is not the file the references were made from"
    );
    for prompt in record["prompts"].as_array().unwrap() {
        let label = prompt["name"].as_str().unwrap();
        let prompt_ids = ids(&prompt["ids"]);
        if let Some(text) = prompt["text"].as_str().filter(|_| compare_tokenization) {
            let ours = m.tokenizer.encode(text, true).unwrap();
            assert_eq!(ours, prompt_ids, "{name}/{label}: tokenization differs");
        }
        let expected_greedy = ids(&prompt["greedy"]);
        let reference = read_f32(&dir.join(prompt["logits_file"].as_str().unwrap()));
        let (logits, greedy) = logits_and_greedy(m, &prompt_ids, expected_greedy.len());
        let err = max_relative_error(&logits, &reference);
        eprintln!(
            "{name}/{label}: {} prompt tokens, logits relative error {err:.2e}, greedy {:?}",
            prompt_ids.len(),
            m.tokenizer.decode(&greedy).unwrap()
        );
        assert!(
            err <= LOGITS_TOLERANCE,
            "{name}/{label}: relative error {err} > {LOGITS_TOLERANCE}"
        );
        assert_eq!(
            greedy, expected_greedy,
            "{name}/{label}: greedy continuation differs"
        );
    }
}

#[test]
fn smollm2_matches_transformers() {
    let path = SmolLm2::cached_path(&default_cache_dir());
    if !require_or_skip(&path, "longctx fetch smollm2-135m") {
        return;
    }
    let m = load_gguf_model::<Flex>(&path, "smollm2-135m", &Default::default()).unwrap();
    check_against_reference(&m, "smollm2-135m", true);
}

/// Gemma-3-270M: the model against transformers on the same ids. Tokenization is not compared:
/// transformers 5.17's `AutoTokenizer` on this GGUF gives other ids than SentencePiece (10 ids
/// and no BOS for "The capital of France is"), so our SentencePiece tokenizer is checked against
/// sentencepiece itself in `crates/tokenize/tests/integration/gemma3_gguf.rs` instead.
#[test]
fn gemma3_matches_transformers() {
    let path = GEMMA3_270M.cached_path(&default_cache_dir());
    if !require_or_skip(&path, "longctx fetch gemma3-270m") {
        return;
    }
    let m = load_gguf_model::<Flex>(&path, "gemma3-270m", &Default::default()).unwrap();
    check_against_reference(&m, "gemma3-270m", false);
}
