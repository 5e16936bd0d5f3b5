//! Tasks: samples with their parts kept apart, and a scorer with named metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::params::{ParamSpec, Params};
use crate::tokenizer::TextTokenizer;

/// One evaluation prompt. The parts are kept apart so that a method or a prompt compressor can
/// treat the question apart from the context; [`Sample::prompt`] joins them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Stable identifier within the task.
    pub id: String,
    /// Text before the context (an instruction).
    pub instruction: String,
    /// The long context.
    pub context: String,
    /// Text after the context (the question).
    pub question: String,
    /// Text the answer starts with; appended after any chat template.
    pub answer_prefix: String,
    /// Acceptable answers.
    pub references: Vec<String>,
    /// Generation length.
    pub max_new_tokens: usize,
    /// Whether the model's chat template should wrap `instruction + context + question`.
    pub chat_template: bool,
    /// Values to group scores by (e.g. `length`, `depth`), and anything else worth recording.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// For likelihood tasks (perplexity): text whose log-likelihood after the prompt is measured
    /// under teacher forcing instead of generating. Scores are then `nll` (nats per token),
    /// `perplexity` and `token_accuracy` (greedy choice equals the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

impl Sample {
    /// The text the model sees when no chat template is applied.
    pub fn prompt(&self) -> String {
        format!(
            "{}{}{}{}",
            self.instruction, self.context, self.question, self.answer_prefix
        )
    }
}

/// A scored prediction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScoredSample {
    pub id: String,
    pub prediction: String,
    pub scores: BTreeMap<String, f64>,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// A configured task.
pub trait Task: Send + Sync {
    /// Registered name.
    fn name(&self) -> &str;
    /// The samples, generated deterministically (for a seed) with the evaluated model's tokenizer
    /// where lengths are in tokens.
    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>>;
    /// Named metric values for one prediction, each in `[0, 1]` unless documented otherwise.
    fn score(&self, sample: &Sample, prediction: &str) -> BTreeMap<String, f64>;
    /// Metadata keys that results are broken down by (e.g. `["length", "depth"]`).
    fn group_by(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The registration side of a task.
pub trait TaskDescriptor: 'static {
    /// Registered name, e.g. `passkey`, `niah`.
    const NAME: &'static str;
    /// One line for `longctx list`.
    const DESCRIPTION: &'static str;
    /// Declared parameters with defaults.
    fn params() -> Vec<ParamSpec>;
    /// Builds the task from validated parameters.
    fn build(params: &Params) -> Result<Box<dyn Task>>;
}
