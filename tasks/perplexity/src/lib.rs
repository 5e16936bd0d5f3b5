//! `perplexity`: how a KV method changes the language model itself, measured without generation.
//!
//! For each context length `L` (in the evaluated model's tokens) and each window, the text is cut
//! to `L` tokens; the first `L - scored_tokens` are the prompt (prefilled, and compressed as the
//! method does after prefill) and the last `scored_tokens` are fed one by one as decode steps
//! under teacher forcing (so decode-time compression applies), and their mean negative
//! log-likelihood is recorded. Scores: `nll` (nats per token), `perplexity` = exp(nll) and
//! `token_accuracy`; results are grouped by `length`.
//!
//! The text is the Paul Graham essays (the needle haystack, in its documented file order) unless
//! `text_file` names a UTF-8 file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use longctx_core::{Error, ParamSpec, Params, Result, Sample, Task, TaskDescriptor, TextTokenizer};
use longctx_fetch::default_cache_dir;
use longctx_task_data::essays::{ensure_essays, essay_text};

/// The registered task.
pub struct Perplexity;

/// A configured perplexity task.
#[derive(Clone, Debug)]
pub struct PerplexityTask {
    lengths: Vec<usize>,
    scored_tokens: usize,
    windows: usize,
    text_file: Option<PathBuf>,
}

impl TaskDescriptor for Perplexity {
    const NAME: &'static str = "perplexity";
    const DESCRIPTION: &'static str =
        "Perplexity of the last tokens of a long text (default: Paul Graham essays) at given context lengths";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int_list(
                "lengths",
                &[2000],
                "context lengths in the model's tokens (prompt + scored tokens)",
            ),
            ParamSpec::int(
                "scored_tokens",
                256,
                "tokens at the end of each context whose likelihood is measured (decode steps)",
            ),
            ParamSpec::int(
                "windows",
                1,
                "samples per length, from consecutive non-overlapping stretches of the text",
            ),
            ParamSpec::string(
                "text_file",
                "",
                "UTF-8 text to measure (empty = the Paul Graham essays)",
            ),
        ]
    }

    fn build(params: &Params) -> Result<Box<dyn Task>> {
        let bad = |param: &str, reason: String| Error::InvalidParam {
            owner: "task perplexity".into(),
            param: param.into(),
            reason,
        };
        let lengths: Vec<usize> = params
            .int_list("lengths")?
            .into_iter()
            .map(|l| usize::try_from(l).map_err(|_| bad("lengths", format!("{l} is negative"))))
            .collect::<Result<_>>()?;
        let scored_tokens = usize::try_from(params.int("scored_tokens")?)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("scored_tokens", "must be at least 1".into()))?;
        if let Some(&l) = lengths.iter().find(|&&l| l <= scored_tokens) {
            return Err(bad(
                "lengths",
                format!("{l} leaves no prompt before the {scored_tokens} scored tokens"),
            ));
        }
        let windows = usize::try_from(params.int("windows")?)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("windows", "must be at least 1".into()))?;
        let text_file = Some(params.str("text_file")?)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Ok(Box::new(PerplexityTask {
            lengths,
            scored_tokens,
            windows,
            text_file,
        }))
    }
}

impl PerplexityTask {
    fn text(&self) -> Result<String> {
        match &self.text_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| Error::io(path, e)),
            None => {
                let dir = ensure_essays(&default_cache_dir())?;
                essay_text(&dir)
            }
        }
    }
}

impl Task for PerplexityTask {
    fn name(&self) -> &str {
        Perplexity::NAME
    }

    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>> {
        let text = self.text()?;
        let ids = tokenizer.encode(&text, false)?;
        let longest = self.lengths.iter().copied().max().unwrap_or(0);
        let needed = longest * self.windows;
        if ids.len() < needed {
            return Err(Error::InvalidInput(format!(
                "the text has {} tokens; {} windows of {longest} tokens need {needed}",
                ids.len(),
                self.windows
            )));
        }
        let mut out = Vec::new();
        for &length in &self.lengths {
            for window in 0..self.windows {
                let start = window * longest;
                let split = start + length - self.scored_tokens;
                let end = start + length;
                let metadata = BTreeMap::from([
                    ("length".to_string(), serde_json::json!(length)),
                    ("window".to_string(), serde_json::json!(window)),
                    (
                        "scored_tokens".to_string(),
                        serde_json::json!(self.scored_tokens),
                    ),
                ]);
                out.push(Sample {
                    id: format!("len{length}-w{window}"),
                    instruction: String::new(),
                    context: tokenizer.decode(&ids[start..split])?,
                    question: String::new(),
                    answer_prefix: String::new(),
                    references: Vec::new(),
                    max_new_tokens: 0,
                    chat_template: false,
                    metadata,
                    continuation: Some(tokenizer.decode(&ids[split..end])?),
                });
            }
        }
        Ok(out)
    }

    /// Likelihood samples are scored by the runner (`nll`, `perplexity`, `token_accuracy`).
    fn score(&self, _sample: &Sample, _prediction: &str) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    fn group_by(&self) -> Vec<&'static str> {
        vec!["length"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longctx_core::{ByteTokenizer, RawParams};

    fn task(extra: &[(&str, &str)], text: &str) -> (Box<dyn Task>, tempfile_path::TempText) {
        let file = tempfile_path::TempText::new(text);
        let mut raw = RawParams::from([("text_file".to_string(), file.path())]);
        for (k, v) in extra {
            raw.insert(k.to_string(), v.to_string());
        }
        let params = Params::resolve("perplexity", &Perplexity::params(), &raw).unwrap();
        (Perplexity::build(&params).unwrap(), file)
    }

    /// A text file under the system temp dir, removed on drop.
    mod tempfile_path {
        pub struct TempText(std::path::PathBuf);
        impl TempText {
            pub fn new(text: &str) -> Self {
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let p = std::env::temp_dir().join(format!("ppl-{}-{n}.txt", std::process::id()));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
            pub fn path(&self) -> String {
                self.0.display().to_string()
            }
        }
        impl Drop for TempText {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn samples_cut_the_text_into_prompt_and_scored_continuation() {
        let text: String = (0..400).map(|i| format!("word{i} ")).collect();
        let (t, _f) = task(
            &[
                ("lengths", "300,600"),
                ("scored_tokens", "100"),
                ("windows", "2"),
            ],
            &text,
        );
        let tok = ByteTokenizer;
        let samples = t.samples(&tok).unwrap();
        assert_eq!(samples.len(), 4);
        let bytes = text.as_bytes();
        for s in &samples {
            let length = s.metadata["length"].as_u64().unwrap() as usize;
            let window = s.metadata["window"].as_u64().unwrap() as usize;
            let cont = s.continuation.as_ref().unwrap();
            // Byte tokenizer: one token per byte, so the cut is exact.
            assert_eq!(s.context.len() + cont.len(), length);
            assert_eq!(cont.len(), 100);
            let start = window * 600;
            assert_eq!(s.context.as_bytes(), &bytes[start..start + length - 100]);
            assert_eq!(s.prompt(), s.context);
        }
        assert_eq!(t.group_by(), vec!["length"]);
    }

    #[test]
    fn a_short_text_or_bad_parameters_are_clear_errors() {
        let (t, _f) = task(&[("lengths", "500")], "too short");
        let err = t.samples(&ByteTokenizer).unwrap_err().to_string();
        assert!(err.contains("the text has 9 tokens"), "{err}");
        for (k, v, needle) in [
            ("scored_tokens", "0", "at least 1"),
            ("lengths", "100", "leaves no prompt"),
            ("windows", "0", "at least 1"),
        ] {
            let raw = RawParams::from([(k.to_string(), v.to_string())]);
            let params = Params::resolve("perplexity", &Perplexity::params(), &raw).unwrap();
            let err = Perplexity::build(&params).err().unwrap().to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
        let raw = RawParams::from([("text_file".to_string(), "/nonexistent/x.txt".to_string())]);
        let params = Params::resolve("perplexity", &Perplexity::params(), &raw).unwrap();
        let err = Perplexity::build(&params)
            .unwrap()
            .samples(&ByteTokenizer)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.txt"), "{err}");
    }
}
