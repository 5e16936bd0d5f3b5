//! SmolLM2-135M-Instruct from the cache: tokenizer and greedy generation on the flex CPU
//! backend. Skipped (with a message) when the GGUF has not been fetched
//! (`longctx fetch smollm2-135m`).

use burn::backend::Flex;
use longctx_core::LoadedModel;
use longctx_model_transformer::pretrained::{default_cache_dir, load_gguf_model};
use longctx_model_transformer::SmolLm2;

use crate::common;

fn cached() -> Option<LoadedModel<Flex>> {
    let path = SmolLm2::cached_path(&default_cache_dir());
    if !path.is_file() {
        // CI fetches the model first and sets this, so a missing model fails there.
        assert!(
            std::env::var("LONGCTX_REQUIRE_MODELS").is_err(),
            "LONGCTX_REQUIRE_MODELS is set but {} is missing",
            path.display()
        );
        eprintln!(
            "skipping: {} not found (run `longctx fetch smollm2-135m`)",
            path.display()
        );
        return None;
    }
    Some(load_gguf_model::<Flex>(&path, "smollm2-135m", &Default::default()).unwrap())
}

/// Greedy decoding of `n` tokens after `prompt` with a full KV cache.
fn greedy(m: &LoadedModel<Flex>, prompt: &[u32], n: usize) -> Vec<u32> {
    common::logits_and_greedy(m, prompt, n).1
}

#[test]
fn smollm2_tokenizes_and_answers() {
    let Some(m) = cached() else { return };
    let tok = m.tokenizer.as_ref();
    let info = m.model.info();
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.layers.len(), 30);
    assert_eq!(info.max_context, 8192);

    // Whole words of the vocabulary are single tokens: The=504, Ġcapital=3575, Ġof=282,
    // ĠFrance=4649, Ġis=314, ĠParis=7042 (ids from tokenizer.ggml.tokens).
    let ids = tok.encode("The capital of France is", true).unwrap();
    assert_eq!(ids, vec![504, 3575, 282, 4649, 314]);
    assert_eq!(tok.encode(" Paris", false).unwrap(), vec![7042]);
    assert_eq!(tok.encode("The", false).unwrap(), vec![504]);
    // SmolLM's pre-tokenizer splits digits one by one.
    assert_eq!(tok.encode("2024", false).unwrap().len(), 4);
    for text in [
        "The capital of France is",
        "héllo wörld — naïve café",
        "東京タワー 🚀 Привет",
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        "  leading and trailing  ",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    // Chat: ChatML with SmolLM2's default system message; <|im_end|> (2) stops.
    let chat = tok.chat_prompt("Hi").unwrap();
    assert!(chat.starts_with("<|im_start|>system\n"), "{chat}");
    assert!(chat.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    let chat_ids = tok.encode(&chat, true).unwrap();
    assert_eq!(chat_ids[0], 1, "<|im_start|> is one token");
    assert!(tok.stop_tokens().contains(&2));
    assert!(m.provenance.weights_sha256.is_some());

    let generated = greedy(&m, &ids, 8);
    let text = tok.decode(&generated).unwrap();
    eprintln!("The capital of France is|{text}");
    assert!(text.contains("Paris"), "{text:?}");
}
