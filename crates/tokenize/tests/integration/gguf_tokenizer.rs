//! The GGUF byte-level BPE tokenizer on a tiny hand-made vocabulary.

use longctx_core::TextTokenizer;
use longctx_io::gguf::{GgufFile, GgufWriter, MetadataArray, MetadataValue};
use longctx_tokenize::HfTokenizer;

/// GPT-2's byte-to-character map: printable bytes map to themselves, the others to 256 + n.
fn byte_chars() -> Vec<char> {
    let mut n = 0;
    (0u32..256)
        .map(|b| {
            if (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b) {
                char::from_u32(b).unwrap()
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap()
            }
        })
        .collect()
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [&str; 5] = ["Ġ t", "h e", "Ġt he", "t he", "2 0"];

/// Specials 0..3, then the 256 byte characters, then the merged tokens.
fn vocabulary() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (tokens, types)
}

fn id(tokens: &[String], t: &str) -> u32 {
    tokens.iter().position(|x| x == t).unwrap() as u32
}

fn gguf(model: &str, pre: &str, add_bos: bool, merges: &[&str]) -> GgufFile {
    let (tokens, types) = vocabulary();
    let s = |v: &str| MetadataValue::String(v.into());
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", s("llama"))
        .add_metadata("tokenizer.ggml.model", s(model))
        .add_metadata("tokenizer.ggml.pre", s(pre))
        .add_metadata(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(tokens)),
        )
        .add_metadata(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(types)),
        )
        .add_metadata(
            "tokenizer.ggml.merges",
            MetadataValue::Array(MetadataArray::String(
                merges.iter().map(|m| m.to_string()).collect(),
            )),
        )
        .add_metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(1))
        .add_metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(0))
        .add_metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(add_bos))
        .add_metadata(
            "tokenizer.chat_template",
            s("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"),
        );
    GgufFile::from_bytes(w.to_bytes()).unwrap()
}

fn smollm_like() -> HfTokenizer {
    HfTokenizer::from_gguf(&gguf("gpt2", "smollm", false, &MERGES)).unwrap()
}

#[test]
fn merges_apply_in_rank_order() {
    let t = smollm_like();
    let (tokens, _) = vocabulary();
    assert_eq!(
        t.encode("the the", true).unwrap(),
        vec![id(&tokens, "the"), id(&tokens, "Ġthe")]
    );
    assert_eq!(t.vocab_size(), tokens.len());
}

#[test]
fn special_tokens_stay_whole_and_decode_skips_them() {
    let t = smollm_like();
    let (tokens, _) = vocabulary();
    let ids = t.encode("<|im_start|>the<|im_end|>", false).unwrap();
    assert_eq!(ids, vec![1, id(&tokens, "the"), 2]);
    assert_eq!(t.decode(&ids).unwrap(), "the");
    assert!(t.decode(&[tokens.len() as u32]).is_err());
}

#[test]
fn digits_are_split_one_by_one() {
    let t = smollm_like();
    // The merge "2 0" exists but SmolLM's pre-tokenizer isolates every digit first.
    assert_eq!(t.encode("2024", false).unwrap().len(), 4);
    let gpt2 = HfTokenizer::from_gguf(&gguf("gpt2", "gpt-2", false, &MERGES)).unwrap();
    assert_eq!(gpt2.encode("2024", false).unwrap().len(), 3);
}

#[test]
fn round_trips_unicode_and_whitespace() {
    let t = smollm_like();
    for text in [
        "the the",
        "héllo wörld",
        "東京 🚀 naïve café",
        "  two  spaces\nand\ttabs\r\n",
        "x = 2024; // done!",
        "",
    ] {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text, "{ids:?}");
    }
}

#[test]
fn bos_stop_tokens_and_chat_template() {
    let t = smollm_like();
    assert_eq!(
        t.encode("the", true).unwrap().len(),
        1,
        "add_bos_token is false"
    );
    assert_eq!(t.stop_tokens(), vec![0, 2]);
    assert_eq!(
        t.chat_prompt("hi").unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let with_bos = HfTokenizer::from_gguf(&gguf("gpt2", "smollm", true, &MERGES)).unwrap();
    assert_eq!(with_bos.encode("the", true).unwrap()[0], 1);
    assert_eq!(with_bos.encode("the", false).unwrap().len(), 1);
}

#[test]
fn sha256_identifies_the_definition() {
    let a = smollm_like();
    let b = smollm_like();
    let c = HfTokenizer::from_gguf(&gguf("gpt2", "smollm", false, &MERGES[..4])).unwrap();
    assert_eq!(a.sha256(), b.sha256());
    assert_ne!(a.sha256(), c.sha256());
    assert_eq!(a.sha256().len(), 64);
}

#[test]
fn unsupported_vocabularies_are_named() {
    let err = HfTokenizer::from_gguf(&gguf("rwkv", "default", false, &MERGES))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.model is 'rwkv'"), "{err}");
    let err = HfTokenizer::from_gguf(&gguf("gpt2", "mystery", false, &MERGES))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported pre-tokenizer 'mystery'"), "{err}");
    let err = HfTokenizer::from_gguf(&gguf("gpt2", "smollm", false, &["Ġt"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.ggml.merges[0]"), "{err}");
}

#[test]
fn tokenizer_json_with_config_matches_the_gguf_tokenizer() {
    let from_gguf = smollm_like();
    let dir = std::env::temp_dir().join(format!("longctx-tokenize-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, from_gguf.inner().to_string(false).unwrap()).unwrap();
    // Without a config: the well-known end tokens present in the vocabulary stop.
    let bare = HfTokenizer::from_json_file(&json).unwrap();
    assert_eq!(bare.stop_tokens(), vec![0, 2]);
    assert_eq!(bare.chat_prompt("x"), None);
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<|endoftext|>"}, "chat_template": "{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>'}}"}"#,
    )
    .unwrap();
    let t = HfTokenizer::from_json_file(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for text in ["the the", "<|im_start|>héllo 2024<|im_end|>", "東京 🚀"] {
        let ids = t.encode(text, false).unwrap();
        assert_eq!(ids, from_gguf.encode(text, false).unwrap());
        assert_eq!(t.decode(&ids).unwrap(), from_gguf.decode(&ids).unwrap());
    }
    assert_eq!(t.stop_tokens(), vec![0, 2]);
    assert_eq!(t.chat_prompt("x"), from_gguf.chat_prompt("x"));
    assert_eq!(t.sha256().len(), 64);
    let err = HfTokenizer::from_json_file(dir.join("missing.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
}
