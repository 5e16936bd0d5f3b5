//! `longbench`: LongBench (v1, THUDM) on the 16 English datasets the paper runs, read from the
//! official JSONL files in a user-supplied directory (`<data_dir>/<dataset>.jsonl`, fields
//! `input, context, answers, length, all_classes, language, dataset, _id`).
//!
//! As the official `pred.py` and `eval.py` do:
//! - the prompt is `dataset2prompt[dataset].format(context=..., input=...)`, kept apart as
//!   instruction (before the context), context, and question (after it);
//! - a prompt longer than `max_length` tokens (with BOS) keeps its first and last
//!   `max_length / 2` tokens, each half decoded on its own and joined;
//! - the chat template is skipped for trec, triviaqa, samsum, lcc and repobench-p;
//! - tokens to generate come from `dataset2maxlen`;
//! - trec, triviaqa and samsum are scored on the first line of the prediction; each sample
//!   takes the max over its answers of the dataset's metric ([`longctx_metrics::longbench`]).
//!
//! Not reproduced: SAMSum's generation settings (`min_length` = prompt + 1 and `"\n"` as an
//! extra stop), which a [`Sample`] cannot express; its scoring keeps only the first line.
//!
//! Scores are per sample in `[0, 1]` under the key `score`; [`dataset_score`] gives the
//! official per-dataset number (`round(100 * mean, 2)`) and [`category_averages`] the paper's
//! category and overall averages (15 datasets, passage_count excluded).

pub mod datasets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use longctx_core::{Error, ParamSpec, Params, Result, Sample, Task, TaskDescriptor, TextTokenizer};
use longctx_metrics::longbench as m;

pub use datasets::{dataset, Dataset, Metric, DATASETS};

/// One line of an official LongBench JSONL file.
#[derive(Clone, Debug, Deserialize)]
pub struct Record {
    pub input: String,
    pub context: String,
    pub answers: Vec<String>,
    pub length: u64,
    pub all_classes: Option<Vec<String>>,
    pub language: String,
    pub dataset: String,
    #[serde(rename = "_id")]
    pub id: String,
}

/// Reads `<dir>/<dataset>.jsonl`; a missing file or a malformed line is an error naming the
/// file (and line).
pub fn read_records(dir: &Path, ds: &Dataset) -> Result<Vec<Record>> {
    let path = dir.join(format!("{}.jsonl", ds.name));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| Error::file(&path, format!("line {}: {msg}", i + 1));
        let rec: Record =
            serde_json::from_str(line).map_err(|e| at(format!("not a LongBench record: {e}")))?;
        if rec.answers.is_empty() {
            return Err(at("`answers` is empty".into()));
        }
        if ds.metric == Metric::Classification
            && rec.all_classes.as_ref().is_none_or(|c| c.is_empty())
        {
            return Err(at(format!("{} needs `all_classes`", ds.name)));
        }
        if ds.metric == Metric::Retrieval {
            if let Some(a) = rec
                .answers
                .iter()
                .find(|a| m::retrieval_target(a).is_none())
            {
                return Err(at(format!("answer {a:?} names no `Paragraph <n>`")));
            }
        }
        out.push(rec);
    }
    Ok(out)
}

/// The registered task.
pub struct LongBench;

/// A configured LongBench task.
#[derive(Clone, Debug)]
pub struct LongBenchTask {
    data_dir: PathBuf,
    datasets: Vec<&'static Dataset>,
    max_length: usize,
    limit: usize,
}

impl TaskDescriptor for LongBench {
    const NAME: &'static str = "longbench";
    const DESCRIPTION: &'static str =
        "LongBench v1, 16 English datasets, official prompts and metrics (needs data_dir)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::string(
                "data_dir",
                "",
                "directory of the official <dataset>.jsonl files (required)",
            ),
            ParamSpec::string(
                "datasets",
                "all",
                "comma-separated dataset names, or `all` (the paper's 16)",
            ),
            ParamSpec::int(
                "max_length",
                7500,
                "prompt cap in tokens; longer prompts keep their first and last halves",
            ),
            ParamSpec::int("limit", 0, "samples per dataset, the first ones (0 = all)"),
        ]
    }

    fn build(params: &Params) -> Result<Box<dyn Task>> {
        Ok(Box::new(LongBenchTask::from_params(params)?))
    }
}

impl LongBenchTask {
    /// Validates `params` (declared by [`LongBench::params`]).
    pub fn from_params(params: &Params) -> Result<Self> {
        let bad = |param: &str, reason: String| Error::InvalidParam {
            owner: "task longbench".into(),
            param: param.into(),
            reason,
        };
        let data_dir = params.str("data_dir")?;
        if data_dir.is_empty() {
            return Err(bad(
                "data_dir",
                "give the directory of LongBench's <dataset>.jsonl files (data.zip of the \
                 official release), e.g. --task-param data_dir=/data/longbench"
                    .into(),
            ));
        }
        let names = params.str("datasets")?;
        let datasets = if names == "all" {
            DATASETS.iter().collect()
        } else {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    dataset(n).ok_or_else(|| Error::UnknownName {
                        kind: "LongBench dataset",
                        name: n.to_string(),
                        valid: DATASETS.iter().map(|d| d.name.to_string()).collect(),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        if datasets.is_empty() {
            return Err(bad("datasets", "name at least one dataset".into()));
        }
        Ok(Self {
            data_dir: PathBuf::from(data_dir),
            datasets,
            max_length: params.usize_at_least("max_length", 2)?,
            limit: params.int("limit")?.max(0) as usize,
        })
    }

    /// The sample for one record, truncated to `max_length` tokens.
    pub fn sample(
        &self,
        ds: &Dataset,
        rec: &Record,
        tokenizer: &dyn TextTokenizer,
    ) -> Result<Sample> {
        let (before, after) = ds
            .prompt
            .split_once("{context}")
            .expect("every prompt has a {context}");
        let mut instruction = before.to_string();
        let mut context = rec.context.clone();
        let mut question = after.replace("{input}", &rec.input);
        let prompt = format!("{instruction}{context}{question}");
        let ids = tokenizer.encode(&prompt, true)?;
        let truncated = ids.len() > self.max_length;
        if truncated {
            let half = self.max_length / 2;
            let kept = format!(
                "{}{}",
                tokenizer.decode(&ids[..half])?,
                tokenizer.decode(&ids[ids.len() - half..])?
            );
            // Usually the cut falls inside the context; if it reaches the instruction or the
            // question, the whole kept text becomes the context.
            match kept
                .strip_prefix(instruction.as_str())
                .and_then(|rest| rest.strip_suffix(question.as_str()))
            {
                Some(middle) => context = middle.to_string(),
                None => {
                    context = kept;
                    instruction.clear();
                    question.clear();
                }
            }
        }
        let bucket = match rec.length {
            0..4000 => "0-4k",
            4000..8000 => "4-8k",
            _ => "8k+",
        };
        let mut metadata = BTreeMap::from([
            ("dataset".to_string(), ds.name.into()),
            ("category".to_string(), ds.category.into()),
            ("length".to_string(), rec.length.into()),
            ("length_bucket".to_string(), bucket.into()),
            ("truncated".to_string(), truncated.into()),
            ("language".to_string(), rec.language.clone().into()),
        ]);
        if let Some(classes) = &rec.all_classes {
            metadata.insert("all_classes".into(), classes.clone().into());
        }
        Ok(Sample {
            id: format!("{}-{}", ds.name, rec.id),
            instruction,
            context,
            question,
            answer_prefix: String::new(),
            references: rec.answers.clone(),
            max_new_tokens: ds.max_new_tokens,
            chat_template: ds.chat_template,
            metadata,
            continuation: None,
        })
    }
}

/// A sample's score with the official rules: first line for trec/triviaqa/samsum, the
/// dataset's metric, max over the answers. `all_classes` is used by classification only.
pub fn score_prediction(
    ds: &Dataset,
    prediction: &str,
    answers: &[String],
    all_classes: &[String],
) -> f64 {
    let prediction = if ds.first_line_only {
        prediction
            .trim_start_matches('\n')
            .split('\n')
            .next()
            .unwrap_or("")
    } else {
        prediction
    };
    answers
        .iter()
        .map(|gt| match ds.metric {
            Metric::QaF1 => m::qa_f1(prediction, gt),
            Metric::RougeL => m::rouge_l_f(prediction, gt),
            Metric::Classification => m::classification(prediction, gt, all_classes),
            Metric::Retrieval => m::retrieval(prediction, gt),
            Metric::Count => m::count(prediction, gt),
            Metric::CodeSim => m::code_sim(prediction, gt),
        })
        .fold(0.0, f64::max)
}

/// The official per-dataset score: `round(100 * mean, 2)` (Python rounds half to even).
pub fn dataset_score(sample_scores: &[f64]) -> f64 {
    if sample_scores.is_empty() {
        return 0.0;
    }
    let mean = sample_scores.iter().sum::<f64>() / sample_scores.len() as f64;
    (100.0 * mean * 100.0).round_ties_even() / 100.0
}

/// The paper's averages from per-dataset scores: each category's mean over its datasets
/// present, and `"Average"` over the datasets present, passage_count excluded from both (the
/// paper's "Synthetic" is passage_retrieval_en alone).
pub fn category_averages(per_dataset: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut cats: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut all = Vec::new();
    for d in DATASETS.iter().filter(|d| d.name != "passage_count") {
        if let Some(&s) = per_dataset.get(d.name) {
            cats.entry(d.category.to_string()).or_default().push(s);
            all.push(s);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let mut out: BTreeMap<String, f64> = cats.iter().map(|(k, v)| (k.clone(), mean(v))).collect();
    if !all.is_empty() {
        out.insert("Average".into(), mean(&all));
    }
    out
}

impl Task for LongBenchTask {
    fn name(&self) -> &str {
        LongBench::NAME
    }

    fn samples(&self, tokenizer: &dyn TextTokenizer) -> Result<Vec<Sample>> {
        let mut out = Vec::new();
        for ds in &self.datasets {
            let records = read_records(&self.data_dir, ds)?;
            let take = if self.limit == 0 {
                records.len()
            } else {
                self.limit
            };
            for rec in records.iter().take(take) {
                out.push(self.sample(ds, rec, tokenizer)?);
            }
        }
        Ok(out)
    }

    fn score(&self, sample: &Sample, prediction: &str) -> BTreeMap<String, f64> {
        let Some(ds) = sample
            .metadata
            .get("dataset")
            .and_then(|v| v.as_str())
            .and_then(dataset)
        else {
            return BTreeMap::new();
        };
        let classes: Vec<String> = sample
            .metadata
            .get("all_classes")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let s = score_prediction(ds, prediction, &sample.references, &classes);
        BTreeMap::from([("score".to_string(), s)])
    }

    fn group_by(&self) -> Vec<&'static str> {
        vec!["dataset", "category", "length_bucket"]
    }
}

#[cfg(test)]
mod tests;
