//! The SentencePiece tokenizer of the real Gemma-3-270M GGUF against reference ids computed by
//! `scripts/gemma3_reference_ids.py` (Google's sentencepiece and transformers' GGUF converter,
//! which agree). Skipped with a message when the GGUF is absent, unless
//! `LONGCTX_REQUIRE_MODELS` is set.
//!
//! The file: `$LONGCTX_GEMMA3_GGUF`, else `gemma3-270m/gemma-3-270m-q4_k_m.gguf` under
//! `$LONGCTX_CACHE` or `~/.cache/longctx`.

use std::path::PathBuf;
use std::sync::OnceLock;

use longctx_core::TextTokenizer;
use longctx_io::gguf::GgufFile;
use longctx_tokenize::{ChatTemplate, HfTokenizer};

const FILE_NAME: &str = "gemma-3-270m-q4_k_m.gguf";
const FIXTURE: &str = include_str!("../fixtures/gemma3_270m_ids.json");

fn gguf_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LONGCTX_GEMMA3_GGUF").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("LONGCTX_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache")
                .join("longctx")
        });
    cache.join("gemma3-270m").join(FILE_NAME)
}

/// The tokenizer, built once for all tests (the 262k-piece vocabulary takes a moment).
fn tokenizer() -> Option<&'static HfTokenizer> {
    static TOKENIZER: OnceLock<Option<HfTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = gguf_path();
            if !path.is_file() {
                assert!(
                    std::env::var_os("LONGCTX_REQUIRE_MODELS").is_none(),
                    "LONGCTX_REQUIRE_MODELS is set but {} is missing",
                    path.display()
                );
                eprintln!(
                    "skipping: {} not found (set LONGCTX_GEMMA3_GGUF)",
                    path.display()
                );
                return None;
            }
            let file = GgufFile::open(&path).unwrap();
            Some(HfTokenizer::from_gguf(&file).unwrap())
        })
        .as_ref()
}

struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let json: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(json["bos_prepended"], true);
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect(),
        })
        .collect()
}

#[test]
fn encodes_like_sentencepiece() {
    let Some(t) = tokenizer() else { return };
    let cases = cases();
    assert!(cases.len() >= 10);
    let mut wrong = Vec::new();
    for c in &cases {
        let got = t.encode(&c.text, true).unwrap();
        if got != c.ids {
            wrong.push(format!(
                "{:?}\n  expected {:?}\n  got      {got:?}",
                c.text, c.ids
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn decodes_back_to_the_text() {
    let Some(t) = tokenizer() else { return };
    for c in cases() {
        // Control tokens (<bos>, <start_of_turn>, ...) are skipped when decoding.
        let expected = c
            .text
            .replace("<start_of_turn>", "")
            .replace("<end_of_turn>", "");
        assert_eq!(t.decode(&c.ids).unwrap(), expected, "{:?}", c.ids);
        let ids = t.encode(&c.text, false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), expected);
    }
}

#[test]
fn gemma_specials_bos_stop_tokens_and_chat() {
    let Some(t) = tokenizer() else { return };
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!(t.token_to_id("<bos>"), Some(2));
    assert_eq!(t.encode("", true).unwrap(), vec![2]);
    assert_eq!(t.encode("", false).unwrap(), Vec::<u32>::new());
    // <eos>, then <end_of_turn> from the turn format.
    assert_eq!(t.stop_tokens(), vec![1, 106]);
    // The base model's GGUF has no tokenizer.chat_template: chosen by architecture.
    assert_eq!(t.chat_template(), Some(&ChatTemplate::Gemma));
    let prompt = t.chat_prompt("What is the pass key?").unwrap();
    let fixture = cases()
        .into_iter()
        .find(|c| {
            c.text
                .starts_with("<start_of_turn>user\nWhat is the pass key?")
        })
        .unwrap();
    assert_eq!(prompt, fixture.text);
    assert_eq!(t.encode(&prompt, true).unwrap(), fixture.ids);
    assert_eq!(t.sha256().len(), 64);
}
