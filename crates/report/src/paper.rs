//! The paper-layout table: per model, one row per method and budget, one column per task
//! category as "KV Cache Compression, But What Must We Give in Return?" (Yuan et al., arXiv
//! 2407.01527) groups its tasks, each cell the category's mean score.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use longctx_core::Budget;
use longctx_harness::RunRecord;

use crate::cells::{join_setting, lower_is_better, method_settings, task_settings, MethodFamily};
use crate::primary_metric;

/// The category of each task, LongBench dataset and RULER subtask: `(task, unit, category)`,
/// where `unit` is a LongBench dataset (samples' `dataset`), a RULER task (samples' `task`), or
/// empty for a task scored as a whole.
///
/// - LongBench: the paper's six categories, LongBench's own grouping of its 16 English
///   datasets (Single-Doc QA, Multi-Doc QA, Summarization, Few-shot, Synthetic, Code). As the
///   authors' `visualization/longbench_results_summary/long_bench_tasks_summary.py` does,
///   "Synthetic" is PassageRetrieval-en alone: passage_count (every model scores below 10%) is
///   left out of it and of the average, and gets a column of its own.
/// - The needle (the paper's seventh category): `niah`, the paper's passkey-in-essays test,
///   and `passkey`, the repeated-noise passkey.
/// - RULER (Hsieh et al., arXiv 2404.06654, §3): Retrieval (the eight NIAH tasks), Multi-hop
///   Tracing (variable tracking), Aggregation (common and frequent words), Question Answering.
/// - Perplexity, not in the paper, is its own column.
///
/// A task or unit missing here is its own category, named after it.
pub const CATEGORY_OF: [(&str, &str, &str); 34] = [
    ("longbench", "narrativeqa", "Single-Doc QA"),
    ("longbench", "qasper", "Single-Doc QA"),
    ("longbench", "multifieldqa_en", "Single-Doc QA"),
    ("longbench", "hotpotqa", "Multi-Doc QA"),
    ("longbench", "2wikimqa", "Multi-Doc QA"),
    ("longbench", "musique", "Multi-Doc QA"),
    ("longbench", "gov_report", "Summarization"),
    ("longbench", "qmsum", "Summarization"),
    ("longbench", "multi_news", "Summarization"),
    ("longbench", "trec", "Few-shot"),
    ("longbench", "triviaqa", "Few-shot"),
    ("longbench", "samsum", "Few-shot"),
    ("longbench", "passage_retrieval_en", "Synthetic"),
    ("longbench", "passage_count", "PassageCount"),
    ("longbench", "lcc", "Code"),
    ("longbench", "repobench-p", "Code"),
    ("niah", "", "Needle"),
    ("passkey", "", "Needle"),
    ("ruler", "niah_single_1", "RULER Retrieval"),
    ("ruler", "niah_single_2", "RULER Retrieval"),
    ("ruler", "niah_single_3", "RULER Retrieval"),
    ("ruler", "niah_multikey_1", "RULER Retrieval"),
    ("ruler", "niah_multikey_2", "RULER Retrieval"),
    ("ruler", "niah_multikey_3", "RULER Retrieval"),
    ("ruler", "niah_multivalue", "RULER Retrieval"),
    ("ruler", "niah_multiquery", "RULER Retrieval"),
    ("ruler", "vt", "RULER Multi-hop Tracing"),
    ("ruler", "cwe", "RULER Aggregation"),
    ("ruler", "fwe", "RULER Aggregation"),
    ("ruler", "qa_1", "RULER QA"),
    ("ruler", "qa_2", "RULER QA"),
    ("perplexity", "", "Perplexity"),
    // Averages over units: every LongBench dataset but passage_count (the paper's "Avg"),
    // and every RULER task (RULER's average).
    ("longbench", "*", "LongBench Avg"),
    ("ruler", "*", "RULER Avg"),
];

/// Column order: the paper's LongBench categories and average, the needle, RULER's
/// categories and average, perplexity. Categories not listed come after, by name.
pub const CATEGORY_ORDER: [&str; 14] = [
    "Single-Doc QA",
    "Multi-Doc QA",
    "Summarization",
    "Few-shot",
    "Synthetic",
    "Code",
    "LongBench Avg",
    "PassageCount",
    "Needle",
    "RULER Retrieval",
    "RULER Multi-hop Tracing",
    "RULER Aggregation",
    "RULER QA",
    "RULER Avg",
];

/// The sample metadata key naming a task's units (LongBench datasets, RULER tasks); `None`
/// for a task scored as a whole.
pub fn unit_key(task: &str) -> Option<&'static str> {
    match task {
        "longbench" => Some("dataset"),
        "ruler" => Some("task"),
        _ => None,
    }
}

/// The categories a unit of `task` counts in (`unit` empty for a whole task): its category
/// from [`CATEGORY_OF`] and the task's average where it has one (passage_count has no
/// average, as in the paper); an unknown task or unit is its own category.
pub fn categories_of(task: &str, unit: &str) -> Vec<String> {
    let own = CATEGORY_OF
        .iter()
        .find(|(t, u, _)| *t == task && *u == unit)
        .map(|(_, _, c)| c.to_string());
    let mut out = vec![own.unwrap_or_else(|| {
        if unit.is_empty() {
            task.to_string()
        } else {
            format!("{task} {unit}")
        }
    })];
    if !unit.is_empty() && out[0] != "PassageCount" {
        if let Some((_, _, avg)) = CATEGORY_OF.iter().find(|(t, u, _)| *t == task && *u == "*") {
            out.push(avg.to_string());
        }
    }
    out
}

fn category_rank(category: &str) -> usize {
    CATEGORY_ORDER
        .iter()
        .position(|c| *c == category)
        .unwrap_or(if category == "Perplexity" {
            usize::MAX
        } else {
            CATEGORY_ORDER.len()
        })
}

/// `(unit, value)` of `metric` for each unit of `record` (one empty-named unit for a task
/// scored as a whole): the record's own per-unit aggregate (`metrics.by[key]`), or, where it
/// has none, the mean over the samples whose metadata names the unit.
pub fn unit_scores(record: &RunRecord, metric: &str) -> Vec<(String, f64)> {
    let task = record.config.task.name.as_str();
    let Some(key) = unit_key(task) else {
        return record
            .metrics
            .overall
            .get(metric)
            .map(|v| vec![(String::new(), *v)])
            .unwrap_or_default();
    };
    if let Some(by) = record.metrics.by.get(key) {
        return by
            .iter()
            .filter_map(|(unit, m)| Some((unit.clone(), *m.get(metric)?)))
            .collect();
    }
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for s in &record.samples {
        let (Some(unit), Some(v)) = (
            s.metadata.get(key).and_then(|u| u.as_str()),
            s.scores.get(metric),
        ) else {
            continue;
        };
        let e = sums.entry(unit.to_string()).or_default();
        e.0 += v;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(u, (sum, n))| (u, sum / n as f64))
        .collect()
}

/// One column: a category measured by one task with one setting.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperColumn {
    pub category: String,
    pub task: String,
    /// The task parameters that tell this column's records from the same task's other columns
    /// (as the per-length tables' `setting`; `datasets`/`tasks` and data paths left out).
    pub setting: Vec<(String, String)>,
    pub metric: String,
    /// `Needle`, or `Needle (a)`, `Needle (b)`... where a category has several columns.
    pub header: String,
    /// 100 for scores in [0, 1] (shown as the paper shows them), else 1.
    pub scale: f64,
}

/// One row: a method with its settings and budget.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperRow {
    /// `method (params)`, plus ` [backend]` off the model's most common backend.
    pub method: String,
    pub budget: String,
    pub family: MethodFamily,
    /// Whether this is a `full` row (the rows the differences are taken against).
    pub is_full: bool,
    /// Per column, the category mean (unscaled), `None` without records.
    pub values: Vec<Option<f64>>,
}

/// The paper-layout table of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperTable {
    pub model: String,
    pub columns: Vec<PaperColumn>,
    /// `full` first, then by family, method and budget.
    pub rows: Vec<PaperRow>,
}

impl PaperTable {
    /// Per column, the `full` value the other rows are compared with: the first `full` row
    /// (the most common backend first) that has one.
    pub fn baseline(&self) -> Vec<Option<f64>> {
        (0..self.columns.len())
            .map(|c| {
                self.rows
                    .iter()
                    .filter(|r| r.is_full)
                    .find_map(|r| r.values[c])
            })
            .collect()
    }
}

/// Task parameters that select which units run (not how), and data file paths.
const UNIT_SELECTORS: [&str; 4] = ["datasets", "tasks", "squad_file", "hotpotqa_file"];

/// Budgets in order of increasing compression within each kind: unlimited, ratios ascending,
/// token and byte budgets descending.
fn budget_key(b: &Budget) -> (u8, i64) {
    match *b {
        Budget::Unlimited => (0, 0),
        Budget::Ratio(r) => (1, (r * 1000.0).round() as i64),
        Budget::Tokens(t) => (2, -(t as i64)),
        Budget::Bytes(n) => (3, -(n as i64)),
    }
}

/// `(not full, family, method label, budget, backend)`: `full` first, then by family.
type RowKey = (bool, MethodFamily, String, (u8, i64), String);
type ColumnKey = (usize, String, String, Vec<(String, String)>);

/// Settings in order, values compared as numbers where both are (`digits=7` before `64`).
fn natural_cmp(a: &[(String, String)], b: &[(String, String)]) -> std::cmp::Ordering {
    let value =
        |x: &(String, String), y: &(String, String)| match (x.1.parse::<f64>(), y.1.parse::<f64>())
        {
            (Ok(p), Ok(q)) => p.total_cmp(&q),
            _ => x.1.cmp(&y.1),
        };
    a.iter()
        .zip(b)
        .map(|(x, y)| x.0.cmp(&y.0).then_with(|| value(x, y)))
        .find(|o| o.is_ne())
        .unwrap_or(a.len().cmp(&b.len()))
}

/// The paper-layout tables of `records`, one per model (by name).
pub fn paper_tables(records: &[&RunRecord]) -> Vec<PaperTable> {
    let mut by_model: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        by_model.entry(&r.config.model.name).or_default().push(r);
    }
    by_model
        .into_iter()
        .filter_map(|(model, rs)| model_table(model, &rs))
        .collect()
}

fn model_table(model: &str, rs: &[&RunRecord]) -> Option<PaperTable> {
    let settings = task_settings(rs, &UNIT_SELECTORS);
    let method_params = method_settings(rs);
    let mut backends: BTreeMap<String, usize> = BTreeMap::new();
    for r in rs {
        *backends.entry(r.config.backend.to_string()).or_default() += 1;
    }
    let common = backends
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(b, _)| b.clone())
        .unwrap_or_default();

    // (row, column) -> unit -> values of the records in that cell.
    type Cell = BTreeMap<String, Vec<f64>>;
    let mut cells: BTreeMap<(RowKey, ColumnKey), Cell> = BTreeMap::new();
    let mut rows: BTreeMap<RowKey, (String, String, MethodFamily)> = BTreeMap::new();
    let mut metrics: BTreeMap<ColumnKey, String> = BTreeMap::new();
    for (i, r) in rs.iter().enumerate() {
        let Some(metric) = primary_metric(r) else {
            continue;
        };
        let c = &r.config;
        let mut method = if method_params[i].is_empty() {
            c.method.name.clone()
        } else {
            format!("{} ({})", c.method.name, join_setting(&method_params[i]))
        };
        let backend = c.backend.to_string();
        if backend != common {
            method = format!("{method} [{backend}]");
        }
        let family = MethodFamily::of(r);
        let row: RowKey = (
            c.method.name != "full",
            family,
            method.clone(),
            budget_key(&c.budget),
            backend.clone(),
        );
        rows.insert(row.clone(), (method, c.budget.to_string(), family));
        for (unit, v) in unit_scores(r, &metric) {
            if !v.is_finite() {
                continue;
            }
            for category in categories_of(&c.task.name, &unit) {
                let column: ColumnKey = (
                    category_rank(&category),
                    category,
                    c.task.name.clone(),
                    settings[i].clone(),
                );
                metrics.entry(column.clone()).or_insert(metric.clone());
                cells
                    .entry((row.clone(), column))
                    .or_default()
                    .entry(unit.clone())
                    .or_default()
                    .push(v);
            }
        }
    }
    if cells.is_empty() {
        return None;
    }
    // Order a category's columns by the rows they cover (the main study's settings first).
    let mut coverage: BTreeMap<&ColumnKey, usize> = BTreeMap::new();
    for (_, column) in cells.keys() {
        *coverage.entry(column).or_default() += 1;
    }
    let mut column_keys: Vec<&ColumnKey> = metrics.keys().collect();
    column_keys.sort_by(|a, b| {
        (a.0, &a.1)
            .cmp(&(b.0, &b.1))
            .then(coverage[b].cmp(&coverage[a]))
            .then(a.2.cmp(&b.2))
            .then(natural_cmp(&a.3, &b.3))
    });
    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &column_keys {
        *per_category.entry(k.1.as_str()).or_default() += 1;
    }
    let mut seen: BTreeMap<&str, u8> = BTreeMap::new();
    let row_keys: Vec<&RowKey> = rows.keys().collect();
    let mut columns = Vec::new();
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::new(); row_keys.len()];
    for key in &column_keys {
        let n = seen.entry(key.1.as_str()).or_default();
        let header = if per_category[key.1.as_str()] > 1 {
            format!("{} ({})", key.1, (b'a' + *n) as char)
        } else {
            key.1.clone()
        };
        *n += 1;
        let metric = metrics[*key].clone();
        let mut column_values = Vec::new();
        for (r, row) in row_keys.iter().enumerate() {
            // The category mean: over its units, each unit the mean of its records' values.
            let v = cells.get(&((*row).clone(), (*key).clone())).map(|units| {
                units
                    .values()
                    .map(|vs| vs.iter().sum::<f64>() / vs.len() as f64)
                    .sum::<f64>()
                    / units.len() as f64
            });
            values[r].push(v);
            column_values.extend(v);
        }
        let unit_interval = column_values.iter().all(|v| (0.0..=1.0).contains(v));
        columns.push(PaperColumn {
            category: key.1.clone(),
            task: key.2.clone(),
            setting: key.3.clone(),
            scale: if !lower_is_better(&metric) && unit_interval {
                100.0
            } else {
                1.0
            },
            metric,
            header,
        });
    }
    let rows = row_keys
        .iter()
        .zip(values)
        .map(|(key, values)| {
            let (method, budget, family) = rows[*key].clone();
            PaperRow {
                is_full: !key.0,
                method,
                budget,
                family,
                values,
            }
        })
        .collect();
    Some(PaperTable {
        model: model.to_string(),
        columns,
        rows,
    })
}

fn fmt_value(v: f64, scale: f64) -> String {
    if scale == 100.0 {
        format!("{:.2}", v * scale)
    } else {
        format!("{v:.3}")
    }
}

fn fmt_delta(d: f64, scale: f64) -> String {
    let s = fmt_value(d.abs(), scale);
    if s.trim_start_matches(['0', '.']).is_empty() {
        format!("±{s}")
    } else if d < 0.0 {
        format!("−{s}")
    } else {
        format!("+{s}")
    }
}

/// The markdown of `tables`: per model a table (rows: method, budget, family; one column per
/// category and setting; each cell the mean, and for rows other than `full` the difference
/// from `full` in brackets; `–` without records), then what each column measures, and the
/// categories of the paper's layout this model has no records for.
pub fn paper_markdown(tables: &[PaperTable]) -> String {
    let mut s = String::new();
    for t in tables {
        let _ = write!(s, "\n### {}\n\n| method | budget | family |", t.model);
        for c in &t.columns {
            let arrow = if lower_is_better(&c.metric) {
                " ↓"
            } else {
                ""
            };
            let _ = write!(s, " {}{arrow} |", c.header);
        }
        s += "\n|---|---|---|";
        s += &"---|".repeat(t.columns.len());
        s += "\n";
        let baseline = t.baseline();
        for r in &t.rows {
            let _ = write!(s, "| {} | {} | {} |", r.method, r.budget, r.family.name());
            for (c, v) in r.values.iter().enumerate() {
                let scale = t.columns[c].scale;
                let cell = match (v, baseline[c]) {
                    (None, _) => "–".to_string(),
                    (Some(v), Some(b)) if !r.is_full => {
                        format!("{} ({})", fmt_value(*v, scale), fmt_delta(v - b, scale))
                    }
                    (Some(v), _) => fmt_value(*v, scale),
                };
                let _ = write!(s, " {cell} |");
            }
            s += "\n";
        }
        s += "\n";
        for c in &t.columns {
            let scale = if c.scale == 100.0 { " x100" } else { "" };
            let direction = if lower_is_better(&c.metric) {
                ", lower is better"
            } else {
                ""
            };
            let setting = if c.setting.is_empty() {
                String::new()
            } else {
                format!("; {}", join_setting(&c.setting))
            };
            let _ = writeln!(
                s,
                "- {}: `{}` {}{scale}{direction}{setting}",
                c.header, c.task, c.metric
            );
        }
        let present: BTreeSet<&str> = t.columns.iter().map(|c| c.category.as_str()).collect();
        let absent: Vec<&str> = CATEGORY_ORDER
            .iter()
            .copied()
            .chain(["Perplexity"])
            .filter(|c| *c != "PassageCount" && !present.contains(c))
            .collect();
        if !absent.is_empty() {
            let _ = writeln!(s, "- No records for: {}.", absent.join(", "));
        }
    }
    s
}
