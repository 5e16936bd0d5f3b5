//! Tokenizers of real models, behind [`longctx_core::TextTokenizer`].
//!
//! [`HfTokenizer`] wraps a Hugging Face `tokenizers` pipeline built from either
//!
//! - a `tokenizer.json` file ([`HfTokenizer::from_json_file`]), with the special tokens and
//!   chat template of a sibling `tokenizer_config.json` when there is one, or
//! - the vocabulary stored in a GGUF file's metadata ([`HfTokenizer::from_gguf`]):
//!   `tokenizer.ggml.model == "gpt2"`, byte-level BPE with the pre-tokenizer named by
//!   `tokenizer.ggml.pre` (SmolLM2, StarCoder, GPT-2, Llama 3, Qwen2 families), or `"llama"`,
//!   SentencePiece BPE with merges recovered from the piece scores and byte fallback (Gemma,
//!   Llama 2, Mistral).
//!
//! Both decode without special tokens, stop on end-of-sequence and end-of-turn tokens, expose
//! the model's [`ChatTemplate`] through [`TextTokenizer::chat_prompt`], and carry a SHA-256 of
//! the tokenizer definition for provenance records.

mod chat;
mod gguf;
mod spm;

use std::path::Path;

use longctx_core::{Error, Result, TextTokenizer};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

pub use chat::ChatTemplate;
pub use gguf::SUPPORTED_GGUF_PRE_TOKENIZERS;

/// A Hugging Face `tokenizers` pipeline plus what longctx needs around it.
pub struct HfTokenizer {
    inner: Tokenizer,
    /// Prepended by `encode(.., add_special = true)` when the pipeline does not add it itself.
    bos_to_add: Option<u32>,
    stop: Vec<u32>,
    chat: Option<ChatTemplate>,
    vocab_size: usize,
    sha256: String,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_to_add", &self.bos_to_add)
            .field("stop", &self.stop)
            .field("chat", &self.chat)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// End-of-sequence / end-of-turn tokens recognised in a `tokenizer.json` without a config.
pub(crate) const KNOWN_STOP_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "</s>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<eos>",
];

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    /// Loads a Hugging Face `tokenizer.json`. If a `tokenizer_config.json` sits next to it,
    /// its `eos_token` and `chat_template` are used; otherwise stop tokens are the well-known
    /// end-of-sequence/end-of-turn tokens present in the vocabulary. BOS handling is whatever
    /// the file's post-processor does.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config: Option<serde_json::Value> = if config_path.is_file() {
            let text = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
            Some(
                serde_json::from_slice(&text)
                    .map_err(|e| Error::file(&config_path, format!("not valid JSON: {e}")))?,
            )
        } else {
            None
        };
        let chat = config
            .as_ref()
            .and_then(|c| c.get("chat_template")?.as_str().map(str::to_string))
            .and_then(|t| ChatTemplate::detect(&t));
        let mut stop: Vec<u32> = match config.as_ref().and_then(|c| config_token(c, "eos_token")) {
            Some(eos) => inner.token_to_id(&eos).into_iter().collect(),
            None => KNOWN_STOP_TOKENS
                .iter()
                .filter_map(|t| inner.token_to_id(t))
                .collect(),
        };
        if let Some(eot) = chat
            .as_ref()
            .and_then(|c| inner.token_to_id(c.end_of_turn()))
        {
            if !stop.contains(&eot) {
                stop.push(eot);
            }
        }
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self {
            inner,
            bos_to_add: None,
            stop,
            chat,
            vocab_size,
            sha256: sha256_hex(&bytes),
        })
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`): byte-level
    /// BPE (`tokenizer.ggml.model == "gpt2"`) or SentencePiece BPE (`"llama"`); the error names
    /// the file and the key otherwise. The chat template comes from `tokenizer.chat_template`,
    /// or for Gemma architectures without one, Gemma's turn format.
    pub fn from_gguf(file: &longctx_io::gguf::GgufFile) -> Result<Self> {
        gguf::build(file)
    }

    /// SHA-256 of the tokenizer definition: the `tokenizer.json` bytes, or for GGUF a
    /// canonical serialisation of the `tokenizer.ggml.*` entries that define the tokenizer.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The model's chat template, if it has one that longctx recognises.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The id of `token` (a vocabulary entry, e.g. `"<|im_end|>"` or `"ĠParis"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| Error::InvalidInput(format!("tokenizing failed: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if add_special {
            ids.extend(self.bos_to_add);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::InvalidInput(format!("decoding failed: {e}")))
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn stop_tokens(&self) -> Vec<u32> {
        self.stop.clone()
    }

    fn chat_prompt(&self, user_message: &str) -> Option<String> {
        self.chat.as_ref().map(|c| c.apply(user_message))
    }
}
