//! What the tables, plots and exports share: method families, the parameters that tell cells
//! apart, metric directions and intervals, all derived from the records themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use longctx_core::Params;
use longctx_harness::{Aggregate, RunRecord};

/// The kind of method (or model) a record measures, for colouring plots, grouping exports and
/// ordering the paper-layout table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MethodFamily {
    /// The uncompressed cache (`full`).
    Baseline,
    /// Quantized storage that keeps every token (`kivi`, `flexgen`, `int8`).
    Quantization,
    /// Token dropping (eviction) or offloading under a token budget (`snapkv`, `h2o`, `infllm`,
    /// ...).
    TokenDropping,
    /// Prompt compression before the model sees the text (the LLMLingua family).
    PromptCompression,
    /// A `SELECT+STORE` composition (`snapkv+kivi`).
    Composite,
    /// A recurrent (SSM, RNN) or hybrid model: what it holds per sequence is a fixed-size state
    /// (plus any attention layers' KV cache), whatever the method.
    Recurrent,
    /// A method this lookup does not know, without a limited budget.
    Other,
}

/// Substrings of architecture (or, for records without [`longctx_harness::RecordKind`], model)
/// names of recurrent and hybrid models: Mamba, RWKV, RecurrentGemma / Griffin / Hawk, Jamba,
/// Zamba, xLSTM.
const RECURRENT_NAMES: [&str; 8] = [
    "mamba",
    "rwkv",
    "recurrent",
    "griffin",
    "hawk",
    "jamba",
    "zamba",
    "xlstm",
];

fn recurrent_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    RECURRENT_NAMES.iter().any(|n| name.contains(n))
}

impl MethodFamily {
    /// Every family, in legend (and table) order.
    pub const ALL: [MethodFamily; 7] = [
        MethodFamily::Baseline,
        MethodFamily::Quantization,
        MethodFamily::TokenDropping,
        MethodFamily::PromptCompression,
        MethodFamily::Composite,
        MethodFamily::Recurrent,
        MethodFamily::Other,
    ];

    /// The family of a method name, for records that do not say theirs: `A+B` is a
    /// composition, `full` the baseline, the quantizers and prompt compressors by name; an
    /// unknown name is token dropping when the record's budget is limited (only budgeted methods
    /// take one) and [`MethodFamily::Other`] otherwise.
    pub fn of_method(name: &str, budget_limited: bool) -> Self {
        match name {
            _ if name.contains('+') => Self::Composite,
            "full" => Self::Baseline,
            "kivi" | "flexgen" | "int8" => Self::Quantization,
            "streaming-llm" | "h2o" | "snapkv" | "pyramidkv" | "tova" | "knorm" | "infllm"
            | "adakv" => Self::TokenDropping,
            _ if name.contains("lingua") || name == "selective-context" => Self::PromptCompression,
            _ if budget_limited => Self::TokenDropping,
            _ => Self::Other,
        }
    }

    /// The family a record declares (`kind.method_family`, the method's
    /// `MethodCapabilities::family` in snake case), if it is one this crate knows.
    pub fn of_declared(name: &str) -> Option<Self> {
        Some(match name {
            "baseline" => Self::Baseline,
            "quantization" => Self::Quantization,
            "token_dropping" | "token_eviction" => Self::TokenDropping,
            "prompt_compression" => Self::PromptCompression,
            "composite" => Self::Composite,
            "recurrent" => Self::Recurrent,
            _ => return None,
        })
    }

    /// The family of `record`: [`MethodFamily::Recurrent`] when its model has recurrent layers
    /// (`kind.recurrent_layers`) or a recurrent architecture (`kind.architecture`, or the model's
    /// name in records without `kind`); otherwise the method's declared family
    /// (`kind.method_family`), falling back to [`MethodFamily::of_method`].
    pub fn of(record: &RunRecord) -> Self {
        let kind = record.kind.as_ref();
        let recurrent = match kind {
            Some(k) => k.recurrent_layers > 0 || recurrent_name(&k.architecture),
            None => recurrent_name(&record.config.model.name),
        };
        if recurrent {
            return Self::Recurrent;
        }
        kind.and_then(|k| Self::of_declared(&k.method_family))
            .unwrap_or_else(|| {
                Self::of_method(
                    &record.config.method.name,
                    record.config.budget.is_limited(),
                )
            })
    }

    /// Lower-case name, as in CSV columns and legends.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Quantization => "quantization",
            Self::TokenDropping => "token dropping",
            Self::PromptCompression => "prompt compression",
            Self::Composite => "composite",
            Self::Recurrent => "recurrent/hybrid model",
            Self::Other => "other",
        }
    }
}

/// Whether a smaller value of `metric` is better (NLL, perplexity, losses); every other metric
/// (matches, accuracies, F1, ROUGE) is better when larger.
pub fn lower_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    m == "nll"
        || m == "ppl"
        || m.contains("perplexity")
        || m.ends_with("_nll")
        || m.contains("loss")
        || m.contains("error")
}

/// The axis caption of `metric`: its name and which way is better.
pub fn metric_caption(metric: &str) -> String {
    if lower_is_better(metric) {
        format!("{metric} (lower is better)")
    } else {
        format!("{metric} (higher is better)")
    }
}

/// The overall bootstrap 95% intervals of `record`: those it stores, or, for a record written
/// before intervals existed, the same bootstrap recomputed from its samples' scores.
pub fn overall_ci95(record: &RunRecord) -> BTreeMap<String, [f64; 2]> {
    if !record.metrics.ci95.is_empty() || record.samples.is_empty() {
        return record.metrics.ci95.clone();
    }
    Aggregate::from_samples(&record.samples, &[]).ci95
}

/// Task parameters that never tell cells apart: local directories holding the same data sets.
fn ignored_task_param(name: &str) -> bool {
    name.ends_with("_dir")
}

/// For each item, the parameters whose values differ among the items of its group, as sorted
/// `(name, value)` pairs (a parameter an item lacks reads `-`).
fn differing<'a>(
    items: &[(String, &'a Params)],
    skip: &dyn Fn(&str) -> bool,
) -> Vec<Vec<(String, String)>> {
    let mut values: BTreeMap<&str, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (group, params) in items {
        names
            .entry(group)
            .or_default()
            .extend(params.values.keys().map(|k| k.as_str()));
    }
    for (group, params) in items {
        for name in &names[group.as_str()] {
            let v = params
                .values
                .get(*name)
                .map_or("-".to_string(), |v| v.to_string());
            values
                .entry(group)
                .or_default()
                .entry(name)
                .or_default()
                .insert(v);
        }
    }
    items
        .iter()
        .map(|(group, params)| {
            values
                .get(group.as_str())
                .into_iter()
                .flatten()
                .filter(|(name, vs)| vs.len() > 1 && !skip(name))
                .map(|(name, _)| {
                    let v = params
                        .values
                        .get(*name)
                        .map_or("-".to_string(), |v| v.to_string());
                    (name.to_string(), v)
                })
                .collect()
        })
        .collect()
}

/// `name=value` pairs joined by ", ".
pub fn join_setting(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For each record, the task parameters whose values differ among the records of the same task
/// (e.g. needle `digits` 7 vs 64), minus those named in `exclude` and local `*_dir` paths.
pub fn task_settings(records: &[&RunRecord], exclude: &[&str]) -> Vec<Vec<(String, String)>> {
    let items: Vec<(String, &Params)> = records
        .iter()
        .map(|r| (r.config.task.name.clone(), &r.config.task.params))
        .collect();
    differing(&items, &|n| ignored_task_param(n) || exclude.contains(&n))
}

/// For each record, the method parameters whose values differ among the records of the same
/// method name (e.g. `kivi` `bits` 2 vs 4).
pub fn method_settings(records: &[&RunRecord]) -> Vec<Vec<(String, String)>> {
    let items: Vec<(String, &Params)> = records
        .iter()
        .map(|r| (r.config.method.name.clone(), &r.config.method.params))
        .collect();
    differing(&items, &|_| false)
}

/// `method (settings) budget`: how a record is named in legends and point labels.
pub fn method_label(record: &RunRecord, method_setting: &[(String, String)]) -> String {
    let c = &record.config;
    if method_setting.is_empty() {
        format!("{} {}", c.method.name, c.budget)
    } else {
        format!(
            "{} ({}) {}",
            c.method.name,
            join_setting(method_setting),
            c.budget
        )
    }
}

/// A file-name-safe slug: letters, digits, `.` and `-` kept, `=` as `-`, the rest `_`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = match c {
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c,
            '=' | ',' => '-',
            _ => '_',
        };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    out.trim_matches('_').to_string()
}

/// Distinguishing parameters: sorted `(name, value)` pairs.
pub type Setting = Vec<(String, String)>;

/// Records sharing a task, a model and a setting: one Pareto plot or one set of curves.
#[derive(Clone, Debug)]
pub struct CellGroup {
    pub task: String,
    pub model: String,
    /// The distinguishing task parameters shared by the group.
    pub setting: Vec<(String, String)>,
    /// Indices into the record list.
    pub members: Vec<usize>,
}

impl CellGroup {
    /// `task | setting | model`.
    pub fn title(&self) -> String {
        if self.setting.is_empty() {
            format!("{} | {}", self.task, self.model)
        } else {
            format!(
                "{} | {} | {}",
                self.task,
                join_setting(&self.setting),
                self.model
            )
        }
    }

    /// `<task>__<model>[__<setting>]`, file-name safe.
    pub fn file_stem(&self) -> String {
        let mut s = format!("{}__{}", slug(&self.task), slug(&self.model));
        if !self.setting.is_empty() {
            s += "__";
            s += &slug(
                &self
                    .setting
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("_"),
            );
        }
        s
    }
}

/// Groups `records` by task, model and the distinguishing task parameters (less `exclude`).
pub fn group_cells(records: &[&RunRecord], exclude: &[&str]) -> Vec<CellGroup> {
    let settings = task_settings(records, exclude);
    let mut groups: BTreeMap<(String, String, Setting), Vec<usize>> = BTreeMap::new();
    for (i, (r, setting)) in records.iter().zip(settings).enumerate() {
        groups
            .entry((
                r.config.task.name.clone(),
                r.config.model.name.clone(),
                setting,
            ))
            .or_default()
            .push(i);
    }
    groups
        .into_iter()
        .map(|((task, model, setting), members)| CellGroup {
            task,
            model,
            setting,
            members,
        })
        .collect()
}

/// Paths relative to `root` where they lie under it.
pub(crate) fn relative(path: &std::path::Path, root: &std::path::Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}
