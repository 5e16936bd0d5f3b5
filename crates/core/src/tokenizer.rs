//! Tokenizers: the trait models hand to tasks and the runner, and a byte-level one for tests.

use crate::error::{Error, Result};

/// Text to token ids and back.
pub trait TextTokenizer: Send + Sync {
    /// Encodes `text`; `add_special` adds the model's beginning-of-sequence token if it uses one.
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>>;
    /// Decodes ids to text, skipping special tokens.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Tokens that end generation.
    fn stop_tokens(&self) -> Vec<u32>;
    /// Wraps one user message in the model's chat template, ending where the assistant's
    /// reply begins; `None` for models without one (base models, the byte tokenizer). The
    /// result is meant for [`encode`](Self::encode), which keeps special tokens in it whole.
    fn chat_prompt(&self, _user_message: &str) -> Option<String> {
        None
    }
}

/// A byte-level tokenizer: id 0 = `<pad>`, 1 = `<bos>`, 2 = `<eos>`, byte `b` = `b + 3`.
/// Used by the tiny built-in model, so tests need no downloaded tokenizer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const PAD: u32 = 0;
    pub const BOS: u32 = 1;
    pub const EOS: u32 = 2;
    pub const OFFSET: u32 = 3;
    pub const VOCAB: usize = 256 + Self::OFFSET as usize;
}

impl TextTokenizer for ByteTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 1);
        if add_special {
            ids.push(Self::BOS);
        }
        ids.extend(text.bytes().map(|b| b as u32 + Self::OFFSET));
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            if id as usize >= Self::VOCAB {
                return Err(Error::InvalidInput(format!(
                    "token id {id} is outside the byte tokenizer's vocabulary of {}",
                    Self::VOCAB
                )));
            }
            if id >= Self::OFFSET {
                bytes.push((id - Self::OFFSET) as u8);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocab_size(&self) -> usize {
        Self::VOCAB
    }

    fn stop_tokens(&self) -> Vec<u32> {
        vec![Self::EOS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips() {
        let t = ByteTokenizer;
        let ids = t.encode("pass key 42 é", true).unwrap();
        assert_eq!(ids[0], ByteTokenizer::BOS);
        assert_eq!(t.decode(&ids).unwrap(), "pass key 42 é");
        assert!(t.decode(&[999]).is_err());
    }
}
