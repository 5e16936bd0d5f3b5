//! The GGUF SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`) on a tiny Gemma-like
//! vocabulary written with `GgufWriter`.

use longctx_core::TextTokenizer;
use longctx_io::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use longctx_tokenize::{ChatTemplate, HfTokenizer};

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// Gemma's layout in miniature: specials, user-defined pieces, 256 byte pieces, then normal
/// pieces whose score falls with their id (multi-character ones first, single characters last).
fn vocabulary() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut v: Vec<(String, f32, i32)> = Vec::new();
    for t in ["<pad>", "<eos>", "<bos>", "<unk>"] {
        v.push((t.into(), -1000.0, CONTROL));
    }
    v.push(("<start_of_turn>".into(), -1000.0, CONTROL));
    v.push(("<end_of_turn>".into(), -1000.0, CONTROL));
    for t in ["\n", "\n\n", "  ", "   "] {
        v.push((t.into(), -1000.0, USER_DEFINED));
    }
    for b in 0..=255u8 {
        v.push((format!("<0x{b:02X}>"), 0.0, BYTE));
    }
    let pieces = [
        "▁w", "he", "ll", "or", "hell", "▁wor", "hello", "▁world", "ld", "lo", "▁", "h", "e", "l",
        "o", "w", "r", "d", "u", "s", "t",
    ];
    for (i, p) in pieces.iter().enumerate() {
        v.push((p.to_string(), -(i as f32), NORMAL));
    }
    (
        v.iter().map(|x| x.0.clone()).collect(),
        v.iter().map(|x| x.1).collect(),
        v.iter().map(|x| x.2).collect(),
    )
}

fn id(tokens: &[String], t: &str) -> u32 {
    tokens.iter().position(|x| x == t).unwrap() as u32
}

struct Options {
    architecture: &'static str,
    add_space_prefix: Option<bool>,
    chat_template: Option<&'static str>,
    scores: Option<Vec<f32>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            architecture: "gemma3",
            add_space_prefix: Some(false),
            chat_template: None,
            scores: None,
        }
    }
}

fn gguf(o: Options) -> GgufFile {
    let (tokens, scores, types) = vocabulary();
    let s = |v: &str| MetadataValue::String(v.into());
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", s(o.architecture))
        .add_metadata("tokenizer.ggml.model", s("llama"))
        .add_metadata("tokenizer.ggml.pre", s("default"))
        .add_metadata(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(tokens)),
        )
        .add_metadata(
            "tokenizer.ggml.scores",
            MetadataValue::Array(MetadataArray::F32(o.scores.unwrap_or(scores))),
        )
        .add_metadata(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(types)),
        )
        .add_metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(2))
        .add_metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(1))
        .add_metadata("tokenizer.ggml.unknown_token_id", MetadataValue::U32(3))
        .add_metadata("tokenizer.ggml.padding_token_id", MetadataValue::U32(0))
        .add_metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(true));
    if let Some(p) = o.add_space_prefix {
        w.add_metadata("tokenizer.ggml.add_space_prefix", MetadataValue::Bool(p));
    }
    if let Some(t) = o.chat_template {
        w.add_metadata("tokenizer.chat_template", s(t));
    }
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

fn gemma_like() -> HfTokenizer {
    HfTokenizer::from_gguf(&gguf(Options::default())).unwrap()
}

fn pieces(t: &HfTokenizer, text: &str) -> Vec<String> {
    let (tokens, _, _) = vocabulary();
    t.encode(text, false)
        .unwrap()
        .iter()
        .map(|&i| tokens[i as usize].clone())
        .collect()
}

#[test]
fn merges_by_score_with_bos_and_spaces_as_u2581() {
    let t = gemma_like();
    let (tokens, _, _) = vocabulary();
    assert_eq!(pieces(&t, "hello world"), ["hello", "▁world"]);
    assert_eq!(
        t.encode("hello world", true).unwrap(),
        vec![2, id(&tokens, "hello"), id(&tokens, "▁world")]
    );
    // No space prefix: a leading space is its own "▁".
    assert_eq!(pieces(&t, " hello"), ["▁", "hello"]);
    // "ll" outranks "lo" ("ll" has the higher score), so "llo" is "ll" + "o".
    assert_eq!(pieces(&t, "llo"), ["ll", "o"]);
    assert_eq!(t.vocab_size(), tokens.len());
}

#[test]
fn lower_scores_change_the_segmentation() {
    // The same vocabulary with "lo" scored above "ll": "llo" becomes "l" + "lo".
    let (tokens, mut scores, _) = vocabulary();
    scores[id(&tokens, "lo") as usize] = 10.0;
    let t = HfTokenizer::from_gguf(&gguf(Options {
        scores: Some(scores),
        ..Options::default()
    }))
    .unwrap();
    assert_eq!(pieces(&t, "llo"), ["l", "lo"]);
    assert_ne!(t.sha256(), gemma_like().sha256());
}

#[test]
fn byte_fallback_for_characters_outside_the_vocabulary() {
    let t = gemma_like();
    assert_eq!(pieces(&t, "hé"), ["h", "<0xC3>", "<0xA9>"]);
    assert_eq!(pieces(&t, "🚀"), ["<0xF0>", "<0x9F>", "<0x9A>", "<0x80>"]);
    let ids = t.encode("hé 🚀 world", true).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), "hé 🚀 world");
}

#[test]
fn control_and_user_defined_tokens_stay_whole() {
    let t = gemma_like();
    assert_eq!(
        pieces(&t, "<start_of_turn>hello\n\nworld<end_of_turn>\n"),
        [
            "<start_of_turn>",
            "hello",
            "\n\n",
            "w",
            "or",
            "ld",
            "<end_of_turn>",
            "\n"
        ]
    );
    // Runs of spaces are user-defined pieces matched in the raw text, longest first.
    assert_eq!(pieces(&t, "he   wor"), ["he", "   ", "w", "or"]);
    assert_eq!(pieces(&t, "he  wor"), ["he", "  ", "w", "or"]);
    let ids = t.encode("<start_of_turn>he   wor\n", true).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), "he   wor\n");
}

#[test]
fn gemma_turn_format_and_stop_tokens() {
    let t = gemma_like();
    assert_eq!(t.chat_template(), Some(&ChatTemplate::Gemma));
    assert_eq!(
        t.chat_prompt(" hello ").unwrap(),
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(t.stop_tokens(), vec![1, 5]);
    // A template in the file wins; a non-Gemma architecture without one has none.
    let chatml = HfTokenizer::from_gguf(&gguf(Options {
        chat_template: Some("{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>'}}"),
        ..Options::default()
    }))
    .unwrap();
    assert_eq!(chatml.chat_template(), Some(&ChatTemplate::chatml()));
    let llama = HfTokenizer::from_gguf(&gguf(Options {
        architecture: "llama",
        ..Options::default()
    }))
    .unwrap();
    assert_eq!(llama.chat_prompt("x"), None);
    // <end_of_turn> still stops: a well-known end token that is a control token.
    assert_eq!(llama.stop_tokens(), vec![1, 5]);
}

#[test]
fn space_prefix_when_the_file_asks_or_is_silent() {
    for add_space_prefix in [Some(true), None] {
        let t = HfTokenizer::from_gguf(&gguf(Options {
            architecture: "llama",
            add_space_prefix,
            ..Options::default()
        }))
        .unwrap();
        assert_eq!(pieces(&t, "world"), ["▁world"]);
        assert_eq!(pieces(&t, "hello world"), ["▁", "hello", "▁world"]);
        let ids = t.encode("hello world", true).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "hello world");
    }
}

#[test]
fn bad_vocabularies_are_named() {
    let err = |o: Options| HfTokenizer::from_gguf(&gguf(o)).unwrap_err().to_string();
    let e = err(Options {
        scores: Some(vec![0.0; 3]),
        ..Options::default()
    });
    assert!(
        e.contains("tokenizer.ggml.scores has 3 entries but tokenizer.ggml.tokens has"),
        "{e}"
    );

    let mut w = GgufWriter::new();
    w.add_metadata(
        "tokenizer.ggml.model",
        MetadataValue::String("llama".into()),
    )
    .add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(vec!["a".into()])),
    );
    let e = HfTokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");

    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.ggml.model", MetadataValue::String("t5".into()));
    let e = HfTokenizer::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.ggml.model is 't5'"), "{e}");
}
