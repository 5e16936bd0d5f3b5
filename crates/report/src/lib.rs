//! Reports rendered from result records only: the paper-layout table (per model, method x task
//! category, [`paper`]), a markdown summary of every cell (with bootstrap 95% intervals and the
//! task parameters that tell cells apart), per-length tables, needle
//! heatmaps (length x depth), Pareto plots (KV bytes per token against the main metric) and
//! per-length curves as SVG and PNG; and exports of the records as CSV and in
//! lm-evaluation-harness's format ([`export`]).
//!
//! Nothing here runs a model; a figure can always be regenerated from the committed records.

mod cells;
pub mod export;
mod heatmap;
pub mod paper;
mod plots;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use longctx_core::{Error, Result};
use longctx_harness::RunRecord;

pub use cells::{
    join_setting, lower_is_better, method_label, method_settings, metric_caption, overall_ci95,
    task_settings, MethodFamily, Setting,
};
pub use heatmap::{score_color, write_heatmap_png, write_heatmap_svg, NeedleGrid};
pub use paper::{paper_markdown, paper_tables, PaperColumn, PaperRow, PaperTable};
pub use plots::{
    family_color, family_marker, length_curves, pareto_front, pareto_plots, write_curves,
    write_pareto, CurveLine, LengthCurves, Marker, ParetoPlot, ParetoPoint,
};

/// The `schema` of the records this crate reads.
pub const RUN_RECORD_SCHEMA: &str = "longctx.run/1";

/// Every run record under `dir` (recursively), with its path, sorted by path. JSON files of
/// another kind (perf or backend records) are skipped; a file that claims to be a run record but
/// does not parse is an error naming it.
pub fn load_records(dir: &Path) -> Result<Vec<(PathBuf, RunRecord)>> {
    let mut files = Vec::new();
    collect_json_files(dir, &mut files)?;
    files.sort();
    let mut records = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if value.get("schema").and_then(|s| s.as_str()) != Some(RUN_RECORD_SCHEMA) {
            continue;
        }
        let record: RunRecord = serde_json::from_value(value).map_err(|e| {
            Error::file(
                &path,
                format!("not a valid {RUN_RECORD_SCHEMA} record: {e}"),
            )
        })?;
        records.push((path, record));
    }
    Ok(records)
}

fn collect_json_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// The metric a table or heatmap shows for a record: exact match where the task has it
/// (needle, passkey), otherwise the first of its overall metrics in name order.
pub fn primary_metric(record: &RunRecord) -> Option<String> {
    if record.metrics.overall.contains_key("exact_match") {
        return Some("exact_match".into());
    }
    record.metrics.overall.keys().next().cloned()
}

fn fmt_metrics(m: &BTreeMap<String, f64>, ci: &BTreeMap<String, [f64; 2]>) -> String {
    m.iter()
        .map(|(k, v)| match ci.get(k) {
            Some([lo, hi]) if lo != hi => format!("{k} {v:.3} [{lo:.3}, {hi:.3}]"),
            _ => format!("{k} {v:.3}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The paper-layout tables (method x task category, [`paper_tables`]) as markdown, with their
/// heading; empty when no record falls in a category.
pub fn paper_section(records: &[&RunRecord]) -> String {
    let tables = paper_tables(records);
    if tables.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "## Results by task category (the paper's layout)\n\nAs the paper's tables: per model, one row per method and budget (`full` first), one column per task category (LongBench's six, the needle, RULER's four, perplexity; see `paper::CATEGORY_OF`), each cell the category's mean of the task's main metric (LongBench and RULER: the mean over the category's datasets / tasks, each the mean over its samples), scores in [0, 1] shown x100 as the paper shows them. In brackets, the difference from `full` on the same model. A category measured with different task settings gets one column per setting, listed under the table. `–`: no record.\n",
    );
    s += &paper_markdown(&tables);
    s += "\n";
    s
}

/// A markdown report of `records`: first the paper-layout tables ([`paper_tables`]), then one
/// summary row per cell (metrics with their bootstrap 95% intervals; `setting` lists the task
/// parameters whose values differ among the task's records, `method params` those that differ
/// among records of the same method), then per task a table of the primary metric per length
/// (rows: model / method / budget / backend / setting).
pub fn markdown_report(records: &[(PathBuf, RunRecord)], root: &Path) -> String {
    let rs: Vec<&RunRecord> = records.iter().map(|(_, r)| r).collect();
    let settings = task_settings(&rs, &[]);
    let method_params = method_settings(&rs);
    let mut s = String::from(
        "# longctx report\n\nGenerated by `longctx report` from the records alone. Metrics are means over samples, with percentile bootstrap 95% intervals over samples in brackets (1,000 resamples; omitted where all samples agree). `setting` lists the task parameters that differ between records of the same task.\n\n",
    );
    s += &paper_section(&rs);
    s += "## Cells\n\n| task | model | method | budget | backend | setting | method params | samples | metrics | KV bytes/token | vs fp16 | prefill tok/s | decode tok/s | record |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (i, (path, r)) in records.iter().enumerate() {
        let c = &r.config;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2}x | {:.0} | {} | {} |",
            c.task.name,
            c.model.name,
            c.method.name,
            c.budget,
            c.backend,
            or_dash(join_setting(&settings[i])),
            or_dash(join_setting(&method_params[i])),
            r.metrics.samples,
            fmt_metrics(&r.metrics.overall, &overall_ci95(r)),
            r.memory.bytes_per_token,
            r.memory.compression_vs_fp16,
            r.timing.mean_prefill_tokens_per_second,
            r.timing
                .mean_decode_tokens_per_second
                .map_or("-".into(), |d| format!("{d:.1}")),
            path.strip_prefix(root).unwrap_or(path).display()
        );
    }
    s += &per_length_section(records, &settings, &method_params);
    s
}

/// Per task whose records have per-length metrics, a markdown table of the main metric per
/// length (one row per record). `settings` and `method_params` are [`task_settings`] and
/// [`method_settings`] of `records`.
fn per_length_section(
    records: &[(PathBuf, RunRecord)],
    settings: &[Vec<(String, String)>],
    method_params: &[Vec<(String, String)>],
) -> String {
    let mut s = String::new();
    let mut by_task: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, r)) in records.iter().enumerate() {
        if r.metrics.by.contains_key("length") {
            by_task.entry(&r.config.task.name).or_default().push(i);
        }
    }
    for (task, rows) in by_task {
        let Some(metric) = primary_metric(&records[rows[0]].1) else {
            continue;
        };
        let mut lengths: Vec<u64> = rows
            .iter()
            .flat_map(|&i| records[i].1.metrics.by["length"].keys())
            .filter_map(|l| l.parse().ok())
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        let _ = write!(
            s,
            "\n## {task}: {metric} per length\n\n| model | method | budget | backend | setting |"
        );
        for l in &lengths {
            let _ = write!(s, " {l} |");
        }
        s += "\n|---|---|---|---|---|";
        s += &"---|".repeat(lengths.len());
        s += "\n";
        for i in rows {
            let r = &records[i].1;
            let c = &r.config;
            let method = if method_params[i].is_empty() {
                c.method.name.clone()
            } else {
                format!("{} ({})", c.method.name, join_setting(&method_params[i]))
            };
            let _ = write!(
                s,
                "| {} | {} | {} | {} | {} |",
                c.model.name,
                method,
                c.budget,
                c.backend,
                or_dash(join_setting(&settings[i]))
            );
            for l in &lengths {
                let v = r.metrics.by["length"]
                    .get(&l.to_string())
                    .and_then(|m| m.get(&metric));
                let _ = write!(s, " {} |", v.map_or("-".into(), |v| format!("{v:.3}")));
            }
            s += "\n";
        }
    }
    s
}

/// What [`write_report`] wrote.
#[derive(Debug, Default)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    /// `heatmaps/<task>/<record>.{svg,png}`.
    pub heatmaps: Vec<PathBuf>,
    /// `pareto/<task>__<model>[__<setting>].{svg,png}`.
    pub pareto: Vec<PathBuf>,
    /// `curves/<task>__<model>[__<setting>].{svg,png}`.
    pub curves: Vec<PathBuf>,
    pub records: usize,
    /// The paper-layout tables and the per-length tables, as in `report.md` (what `longctx
    /// grid` prints when its study asks for a report).
    pub summary: String,
}

/// Reads every run record under `records_dir` and writes `out_dir/report.md`; for each
/// needle-style record `out_dir/heatmaps/<task>/<record name>.{svg,png}`; per task, model and
/// setting a Pareto plot `out_dir/pareto/<task>__<model>[__<setting>].{svg,png}` and, where the
/// records cover several lengths, per-length curves under `out_dir/curves/` named the same way
/// (the setting there leaves out `lengths`).
pub fn write_report(records_dir: &Path, out_dir: &Path) -> Result<ReportFiles> {
    let records = load_records(records_dir)?;
    if records.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no {RUN_RECORD_SCHEMA} records under {}",
            records_dir.display()
        )));
    }
    let mut files = ReportFiles {
        records: records.len(),
        ..Default::default()
    };
    let mut md = markdown_report(&records, records_dir);
    {
        let rs: Vec<&RunRecord> = records.iter().map(|(_, r)| r).collect();
        files.summary = paper_section(&rs)
            + &per_length_section(&records, &task_settings(&rs, &[]), &method_settings(&rs));
    }
    let mut figures = String::new();
    for (path, record) in &records {
        let Some(metric) = primary_metric(record) else {
            continue;
        };
        let Some(grid) = NeedleGrid::from_record(record, &metric) else {
            continue;
        };
        let dir = out_dir.join("heatmaps").join(&record.config.task.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let stem = path
            .file_stem()
            .map_or("record".into(), |s| s.to_string_lossy().into_owned());
        let svg = dir.join(format!("{stem}.svg"));
        let png = dir.join(format!("{stem}.png"));
        write_heatmap_svg(&grid, &svg)?;
        write_heatmap_png(&grid, &png)?;
        let rel = svg.strip_prefix(out_dir).unwrap_or(&svg);
        let _ = writeln!(
            figures,
            "\n### {}\n\n![{}]({})",
            grid.title,
            grid.title,
            rel.display()
        );
        files.heatmaps.push(svg);
        files.heatmaps.push(png);
    }
    if !figures.is_empty() {
        md += "\n## Needle heatmaps (length x depth)\n";
        md += &figures;
    }
    let rs: Vec<&RunRecord> = records.iter().map(|(_, r)| r).collect();
    let (pareto, curves) = plots::write_plots(&rs, out_dir)?;
    let section = |title: &str, intro: &str, figs: &[(String, PathBuf)]| {
        let mut t = format!("\n## {title}\n\n{intro}\n");
        for (caption, svg) in figs {
            let rel = svg.strip_prefix(out_dir).unwrap_or(svg);
            let _ = writeln!(t, "\n### {caption}\n\n![{caption}]({})", rel.display());
        }
        t
    };
    if !pareto.is_empty() {
        md += &section(
            "Pareto plots (KV bytes per token vs main metric)",
            "One point per record, coloured by method family; the line joins the records no other record beats on both bytes and metric.",
            &pareto,
        );
    }
    if !curves.is_empty() {
        md += &section(
            "Per-length curves",
            "The main metric per context length, one line per method and budget.",
            &curves,
        );
    }
    for (_, svg) in &pareto {
        files.pareto.push(svg.clone());
        files.pareto.push(svg.with_extension("png"));
    }
    for (_, svg) in &curves {
        files.curves.push(svg.clone());
        files.curves.push(svg.with_extension("png"));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let markdown = out_dir.join("report.md");
    std::fs::write(&markdown, md).map_err(|e| Error::io(&markdown, e))?;
    files.markdown = markdown;
    Ok(files)
}

#[cfg(test)]
mod tests;
