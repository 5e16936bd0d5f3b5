//! Prompt compressors (the LLMLingua family): text in, shorter text out, before tokenization
//! by the evaluated model.

use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::error::Result;

/// The outcome of compressing one text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompressedPrompt {
    pub text: String,
    /// Length of the input in the compressor's own units (tokens or words).
    pub original_units: usize,
    /// Length of the output in the same units.
    pub compressed_units: usize,
    /// Wall-clock seconds spent compressing.
    pub seconds: f64,
}

/// Compresses text to fit a budget (usually a ratio, as LLMLingua-2's `rate = 1/ratio`).
pub trait PromptCompressor: Send + Sync {
    /// Registered name.
    fn name(&self) -> &str;
    /// Compresses `text`.
    fn compress(&self, text: &str, budget: Budget) -> Result<CompressedPrompt>;
}
