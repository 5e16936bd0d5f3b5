//! Exports of run records for other tools: a flat CSV for pandas (one row per record) and
//! lm-evaluation-harness-style `results_<timestamp>.json` / `samples_<task>_<timestamp>.jsonl`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use longctx_core::{Error, Result};
use longctx_harness::RunRecord;

use crate::cells::{lower_is_better, overall_ci95, relative, slug, MethodFamily};

/// One CSV field, quoted (RFC 4180) when it holds a comma, a quote, a line break or leading or
/// trailing space; quotes inside are doubled.
pub fn csv_field(s: &str) -> String {
    let needs = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace);
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        // pandas reads "nan" and "inf" as floats.
        v.to_string().to_ascii_lowercase()
    }
}

/// The fixed leading columns of [`csv_export`].
pub const CSV_LEADING_COLUMNS: [&str; 8] = [
    "model",
    "method",
    "family",
    "budget",
    "backend",
    "task",
    "samples",
    "config_hash",
];

/// The fixed trailing columns of [`csv_export`] (after parameters and metrics).
pub const CSV_TRAILING_COLUMNS: [&str; 14] = [
    "kv_bytes_after_prefill",
    "kv_bytes_end",
    "host_bytes_after_prefill",
    "bytes_per_token",
    "fp16_full_bytes_per_token",
    "compression_vs_fp16",
    "prefill_tokens_per_second",
    "decode_tokens_per_second",
    "compression_seconds",
    "wall_seconds",
    "git_commit",
    "git_dirty",
    "started_at",
    "record",
];

fn mean_total(rows: impl Iterator<Item = usize>, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        rows.sum::<usize>() as f64 / n as f64
    }
}

/// A CSV of `records` for pandas (`pd.read_csv`): a header, then one row per record. Columns:
/// [`CSV_LEADING_COLUMNS`]; every task parameter as `param.NAME`, method parameter as
/// `method.NAME` and model parameter as `model.NAME` (the union over the records, in name
/// order; empty where a record's component lacks it; lists comma-joined); each overall metric
/// `M` with `M_ci_lo` and `M_ci_hi` (its bootstrap 95% interval, recomputed from the samples
/// for records made before intervals existed); then [`CSV_TRAILING_COLUMNS`] (KV bytes are the
/// mean over samples of the total over layers; `record` is the path relative to `root`).
pub fn csv_export(records: &[(PathBuf, RunRecord)], root: &Path) -> String {
    let mut task_params = BTreeSet::new();
    let mut method_params = BTreeSet::new();
    let mut model_params = BTreeSet::new();
    let mut metrics = BTreeSet::new();
    for (_, r) in records {
        task_params.extend(r.config.task.params.values.keys().cloned());
        method_params.extend(r.config.method.params.values.keys().cloned());
        model_params.extend(r.config.model.params.values.keys().cloned());
        metrics.extend(r.metrics.overall.keys().cloned());
    }
    let mut header: Vec<String> = CSV_LEADING_COLUMNS.iter().map(|s| s.to_string()).collect();
    header.extend(task_params.iter().map(|p| format!("param.{p}")));
    header.extend(method_params.iter().map(|p| format!("method.{p}")));
    header.extend(model_params.iter().map(|p| format!("model.{p}")));
    for m in &metrics {
        header.extend([m.clone(), format!("{m}_ci_lo"), format!("{m}_ci_hi")]);
    }
    header.extend(CSV_TRAILING_COLUMNS.iter().map(|s| s.to_string()));
    let mut out = String::new();
    let line = |fields: Vec<String>| {
        fields
            .iter()
            .map(|f| csv_field(f))
            .collect::<Vec<_>>()
            .join(",")
            + "\n"
    };
    out += &line(header);
    for (path, r) in records {
        let c = &r.config;
        let mut row = vec![
            c.model.name.clone(),
            c.method.name.clone(),
            MethodFamily::of(r).name().to_string(),
            c.budget.to_string(),
            c.backend.to_string(),
            c.task.name.clone(),
            r.metrics.samples.to_string(),
            r.config_hash.clone(),
        ];
        let param = |params: &longctx_core::Params, name: &String| {
            params
                .values
                .get(name)
                .map_or(String::new(), |v| v.to_string())
        };
        row.extend(task_params.iter().map(|p| param(&c.task.params, p)));
        row.extend(method_params.iter().map(|p| param(&c.method.params, p)));
        row.extend(model_params.iter().map(|p| param(&c.model.params, p)));
        let ci = overall_ci95(r);
        for m in &metrics {
            let v = r.metrics.overall.get(m);
            let i = ci.get(m);
            row.push(v.map_or(String::new(), |v| num(*v)));
            row.push(i.map_or(String::new(), |i| num(i[0])));
            row.push(i.map_or(String::new(), |i| num(i[1])));
        }
        let n = r.samples.len();
        let host = mean_total(
            r.samples
                .iter()
                .map(|s| s.host_state_bytes_after_prefill.iter().sum()),
            n,
        );
        let p = &r.provenance;
        row.extend([
            num(r.memory.mean_state_bytes_after_prefill),
            num(r.memory.mean_state_bytes_end),
            num(host),
            num(r.memory.bytes_per_token),
            r.memory.fp16_full_bytes_per_token.to_string(),
            num(r.memory.compression_vs_fp16),
            num(r.timing.mean_prefill_tokens_per_second),
            r.timing
                .mean_decode_tokens_per_second
                .map_or(String::new(), num),
            num(r.timing.total_compression_seconds),
            num(r.timing.wall_seconds),
            p.git_commit.clone(),
            p.git_dirty.clone(),
            p.started_at.clone(),
            relative(path, root).display().to_string(),
        ]);
        out += &line(row);
    }
    out
}

/// lm-eval's standard error of a mean: the sample standard deviation (n - 1) over sqrt(n);
/// `None` for fewer than two values.
fn mean_stderr(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((var / n as f64).sqrt())
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
fn unix_seconds(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut hms = time.split(':');
    let (h, mi) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let s: f64 = hms.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60) as f64 + s)
}

/// lm-eval's file-name timestamp (`datetime.isoformat()` with `:` as `-`) of the record's
/// finish time (its start time if it has none): `2026-11-28T20-57-08`.
pub fn lm_eval_timestamp(record: &RunRecord) -> String {
    let p = &record.provenance;
    let t = if p.finished_at.is_empty() {
        &p.started_at
    } else {
        &p.finished_at
    };
    t.trim_end_matches('Z').replace(':', "-")
}

fn params_json(params: &longctx_core::Params) -> Value {
    serde_json::to_value(&params.values).unwrap_or(Value::Null)
}

fn model_args(params: &longctx_core::Params) -> String {
    params
        .values
        .iter()
        .filter(|(_, v)| !v.to_string().is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// lm-evaluation-harness's `results_<timestamp>.json` for one record. The task's entry in
/// `results` holds `alias`, `"<metric>,none"` (the mean) and `"<metric>_stderr,none"` (sample
/// standard error, `"N/A"` for one sample), the filter being `none` as lm-eval writes for
/// unfiltered output; `configs`, `versions`, `n-shot`, `higher_is_better`, `n-samples`
/// (`original`, `effective`), `config` (model, model_args, method, method_args, budget,
/// backend, device, gen_kwargs), `git_hash`, `date`, `model_name` and
/// `total_evaluation_time_seconds` follow lm-eval's key names. What lm-eval has no key for
/// (bootstrap intervals, KV bytes, speed, the record's hash and path) is under `longctx`.
pub fn lm_eval_results(record: &RunRecord, record_path: &str) -> Value {
    let c = &record.config;
    let task = &c.task.name;
    let mut entry = Map::new();
    entry.insert("alias".into(), json!(task));
    let mut higher = Map::new();
    let mut metric_list = Vec::new();
    for (metric, mean) in &record.metrics.overall {
        let values: Vec<f64> = record
            .samples
            .iter()
            .filter_map(|s| s.scores.get(metric).copied())
            .collect();
        entry.insert(format!("{metric},none"), json!(mean));
        entry.insert(
            format!("{metric}_stderr,none"),
            mean_stderr(&values).map_or(json!("N/A"), |e| json!(e)),
        );
        higher.insert(metric.clone(), json!(!lower_is_better(metric)));
        metric_list.push(json!({
            "metric": metric,
            "aggregation": "mean",
            "higher_is_better": !lower_is_better(metric),
        }));
    }
    let n = record.samples.len();
    let p = &record.provenance;
    json!({
        "results": { task: Value::Object(entry) },
        "group_subtasks": { task: [] },
        "configs": {
            task: {
                "task": task,
                "task_params": params_json(&c.task.params),
                "output_type": "generate_until",
                "num_fewshot": 0,
                "metric_list": metric_list,
                "generation_kwargs": serde_json::to_value(c.sampling).unwrap_or(Value::Null),
                "metadata": { "version": p.longctx_version },
            }
        },
        "versions": { task: p.longctx_version },
        "n-shot": { task: 0 },
        "higher_is_better": { task: Value::Object(higher) },
        "n-samples": { task: { "original": n, "effective": n } },
        "config": {
            "model": c.model.name,
            "model_args": model_args(&c.model.params),
            "method": c.method.name,
            "method_args": model_args(&c.method.params),
            "method_family": MethodFamily::of(record).name(),
            "budget": c.budget.to_string(),
            "backend": c.backend.to_string(),
            "device": p.backend.device,
            "batch_size": 1,
            "gen_kwargs": serde_json::to_value(c.sampling).unwrap_or(Value::Null),
        },
        "git_hash": p.git_commit.get(..7).unwrap_or(&p.git_commit),
        "date": unix_seconds(&p.started_at),
        "model_name": c.model.name,
        "model_name_sanitized": slug(&c.model.name),
        "total_evaluation_time_seconds": record.timing.wall_seconds.to_string(),
        "longctx": {
            "schema": record.schema,
            "config_hash": record.config_hash,
            "record": record_path,
            "ci95": overall_ci95(record),
            "memory": serde_json::to_value(&record.memory).unwrap_or(Value::Null),
            "timing": serde_json::to_value(&record.timing).unwrap_or(Value::Null),
            "provenance": serde_json::to_value(&record.provenance).unwrap_or(Value::Null),
        },
    })
}

/// lm-evaluation-harness's `samples_<task>_<timestamp>.jsonl` lines for one record, one per
/// sample: `doc_id` (the index), `doc` (the sample's id and metadata), `target` (the reference,
/// or the list where there are several), `resps` (`[[prediction]]`), `filtered_resps`
/// (`[prediction]`), `filter` (`none`), `metrics` (the metric names), `prompt_hash` (SHA-256 of
/// the prompt text, as lm-eval hashes it), then each metric's score and the prompt and
/// generated token counts.
pub fn lm_eval_samples(record: &RunRecord) -> String {
    let mut out = String::new();
    for (i, s) in record.samples.iter().enumerate() {
        let mut doc = Map::new();
        doc.insert("id".into(), json!(s.id));
        for (k, v) in &s.metadata {
            doc.insert(k.clone(), v.clone());
        }
        let target = match s.references.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut line = Map::new();
        line.insert("doc_id".into(), json!(i));
        line.insert("doc".into(), Value::Object(doc));
        line.insert("target".into(), target);
        line.insert("resps".into(), json!([[s.prediction]]));
        line.insert("filtered_resps".into(), json!([s.prediction]));
        line.insert("filter".into(), json!("none"));
        line.insert("metrics".into(), json!(s.scores.keys().collect::<Vec<_>>()));
        line.insert("prompt_hash".into(), json!(s.prompt_sha256));
        for (k, v) in &s.scores {
            line.insert(k.clone(), json!(v));
        }
        line.insert("prompt_tokens".into(), json!(s.prompt_tokens));
        line.insert("generated_tokens".into(), json!(s.generated_tokens));
        let _ = writeln!(out, "{}", Value::Object(line));
    }
    out
}

/// Writes each record's lm-eval export under `out_dir/<task>/<record file stem>/`:
/// `results_<timestamp>.json` and `samples_<task>_<timestamp>.jsonl`. Returns the files.
pub fn write_lm_eval(
    records: &[(PathBuf, RunRecord)],
    root: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (path, r) in records {
        let stem = path
            .file_stem()
            .map_or("record".into(), |s| s.to_string_lossy().into_owned());
        let dir = out_dir.join(slug(&r.config.task.name)).join(stem);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let ts = lm_eval_timestamp(r);
        let rel = relative(path, root).display().to_string();
        let results = dir.join(format!("results_{ts}.json"));
        let json = serde_json::to_string_pretty(&lm_eval_results(r, &rel))
            .map_err(|e| Error::Other(format!("serialising lm-eval results: {e}")))?;
        std::fs::write(&results, json + "\n").map_err(|e| Error::io(&results, e))?;
        let samples = dir.join(format!("samples_{}_{ts}.jsonl", slug(&r.config.task.name)));
        std::fs::write(&samples, lm_eval_samples(r)).map_err(|e| Error::io(&samples, e))?;
        files.extend([results, samples]);
    }
    Ok(files)
}
