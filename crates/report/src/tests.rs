use super::*;

/// The committed SmolLM2 needle record (3 lengths x 5 depths x 1 iteration).
fn committed_niah_record() -> (PathBuf, RunRecord) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results/runs/niah");
    load_records(&dir)
        .unwrap()
        .into_iter()
        .find(|(_, r)| r.config.model.name == "smollm2-135m" && r.config.method.name == "full")
        .expect("a committed smollm2-135m full niah record")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("longctx-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn grid_agrees_with_the_records_own_aggregates() {
    let (_, record) = committed_niah_record();
    let grid = NeedleGrid::from_record(&record, "exact_match").unwrap();
    assert_eq!(grid.length_unit, "words");
    assert_eq!(grid.lengths.len(), record.metrics.by["length"].len());
    assert_eq!(grid.depths.len(), record.metrics.by["depth"].len());
    assert!(grid.depths.windows(2).all(|w| w[0] < w[1]));
    // Each column's mean is the record's per-length mean (one sample per cell).
    for (l, length) in grid.lengths.iter().enumerate() {
        let column: Vec<f64> = grid.cells.iter().map(|row| row[l].unwrap()).collect();
        let mean = column.iter().sum::<f64>() / column.len() as f64;
        let expected = record.metrics.by["length"][&length.to_string()]["exact_match"];
        assert!(
            (mean - expected).abs() < 1e-12,
            "{length}: {mean} vs {expected}"
        );
    }
}

#[test]
fn iterations_are_averaged_and_missing_cells_stay_empty() {
    let (_, mut record) = committed_niah_record();
    // Keep two samples of one cell (scores 1 and 0) and one of another.
    let first = record.samples[0].clone();
    let mut second = first.clone();
    second.scores.insert("exact_match".into(), 0.0);
    let mut other = record
        .samples
        .iter()
        .find(|s| {
            s.metadata["length"] != first.metadata["length"]
                && s.metadata["depth"] != first.metadata["depth"]
        })
        .unwrap()
        .clone();
    other.scores.insert("exact_match".into(), 0.25);
    let mut first = first;
    first.scores.insert("exact_match".into(), 1.0);
    record.samples = vec![first, second, other];
    let grid = NeedleGrid::from_record(&record, "exact_match").unwrap();
    assert_eq!((grid.lengths.len(), grid.depths.len()), (2, 2));
    let filled: Vec<f64> = grid.cells.iter().flatten().flatten().copied().collect();
    assert_eq!(filled.len(), 2);
    assert!(
        filled.contains(&0.5) && filled.contains(&0.25),
        "{filled:?}"
    );
    assert_eq!(
        grid.cells.iter().flatten().filter(|c| c.is_none()).count(),
        2
    );
    // A metric no sample has, or samples without depth: no grid.
    assert!(NeedleGrid::from_record(&record, "rouge").is_none());
    for s in &mut record.samples {
        s.metadata.remove("depth");
    }
    assert!(NeedleGrid::from_record(&record, "exact_match").is_none());
}

#[test]
fn palette_runs_from_red_to_green() {
    assert_eq!(score_color(0.0), RGBColor(215, 48, 39));
    assert_eq!(score_color(1.0), RGBColor(26, 152, 80));
    assert_eq!(score_color(0.5), RGBColor(254, 224, 102));
}

use plotters::style::RGBColor;

#[test]
fn report_writes_markdown_and_heatmaps_and_skips_other_json() {
    let (path, _) = committed_niah_record();
    let records = temp_dir("records");
    std::fs::create_dir_all(records.join("niah")).unwrap();
    std::fs::copy(&path, records.join("niah").join(path.file_name().unwrap())).unwrap();
    std::fs::write(records.join("perf.json"), r#"{"schema": "longctx.perf/1"}"#).unwrap();
    let out = temp_dir("out");
    let files = write_report(&records, &out).unwrap();
    assert_eq!(files.records, 1);
    assert_eq!(files.heatmaps.len(), 2);
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(
        md.contains("| niah | smollm2-135m | full | unlimited | flex |"),
        "{md}"
    );
    assert!(md.contains("## niah: exact_match per length"), "{md}");
    assert!(md.contains("| 1000 | 2000 | 4000 |"), "{md}");
    assert_eq!(files.pareto.len(), 2);
    assert!(files.curves.len() == 2, "{:?}", files.curves);
    assert!(md.contains("![smollm2-135m | full"), "{md}");
    let svg = std::fs::read_to_string(&files.heatmaps[0]).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(
        svg.contains("\n4000\n") && svg.contains("\n50%\n"),
        "axis labels missing"
    );
    let png = std::fs::read(&files.heatmaps[1]).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // A file that claims to be a run record but is not one names itself.
    std::fs::write(
        records.join("bad.json"),
        r#"{"schema": "longctx.run/1", "config": 3}"#,
    )
    .unwrap();
    let err = write_report(&records, &out).unwrap_err().to_string();
    assert!(
        err.contains("bad.json") && err.contains("not a valid"),
        "{err}"
    );
    // An empty directory is an error, not an empty report.
    let empty = temp_dir("empty");
    assert!(write_report(&empty, &out).is_err());
    for d in [records, out, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// A variant of the committed needle record: another method, budget, needle length, KV bytes
/// per token and exact match (every sample's score set to it, so aggregates stay consistent).
fn variant(method: &str, budget: &str, digits: i64, bytes: f64, em: f64) -> RunRecord {
    let (_, mut r) = committed_niah_record();
    r.config.method.name = method.into();
    r.config.budget = budget.parse().unwrap();
    r.config
        .task
        .params
        .values
        .insert("digits".into(), longctx_core::ParamValue::Int(digits));
    r.memory.bytes_per_token = bytes;
    for (i, s) in r.samples.iter_mut().enumerate() {
        // Alternate 1/0 around `em` so intervals are not degenerate.
        let v = if em > 0.0 && em < 1.0 {
            (i % 2) as f64
        } else {
            em
        };
        s.scores.insert("exact_match".into(), v);
    }
    r.metrics = longctx_harness::Aggregate::from_samples(&r.samples, &["length", "depth"]);
    r.metrics.overall.insert("exact_match".into(), em);
    r.config_hash = format!("{method}{budget}{digits}");
    r
}

#[test]
fn pareto_front_keeps_undominated_points_and_ties() {
    // Higher is better: (1, .5) twice (a tie: both stay), (2, .8), (4, .9) are the front;
    // (2, .5) and (4, .8) are dominated.
    let pts = [
        (1.0, 0.5),
        (2.0, 0.5),
        (2.0, 0.8),
        (4.0, 0.8),
        (4.0, 0.9),
        (1.0, 0.5),
    ];
    assert_eq!(pareto_front(&pts, false), vec![0, 5, 2, 4]);
    // Lower is better (NLL): (1, 3.0) and (2, 2.5) only; NaN is never on the front.
    let nll = [
        (1.0, 3.0),
        (2.0, 2.5),
        (3.0, 2.6),
        (0.5, f64::NAN),
        (2.0, 2.5),
    ];
    assert_eq!(pareto_front(&nll, true), vec![0, 1, 4]);
    // Equal cost, different quality: only the better one.
    assert_eq!(pareto_front(&[(1.0, 0.2), (1.0, 0.4)], false), vec![1]);
    assert!(pareto_front(&[], false).is_empty());
}

#[test]
fn families_and_distinguishing_parameters_come_from_the_records() {
    assert_eq!(
        MethodFamily::of_method("full", false),
        MethodFamily::Baseline
    );
    assert_eq!(
        MethodFamily::of_method("kivi", false),
        MethodFamily::Quantization
    );
    assert_eq!(
        MethodFamily::of_method("snapkv", true),
        MethodFamily::TokenDropping
    );
    assert_eq!(
        MethodFamily::of_method("snapkv+kivi", true),
        MethodFamily::Composite
    );
    assert_eq!(
        MethodFamily::of_method("newthing", true),
        MethodFamily::TokenDropping
    );
    assert_eq!(
        MethodFamily::of_method("newthing", false),
        MethodFamily::Other
    );
    assert_eq!(
        MethodFamily::of_method("llmlingua2", true),
        MethodFamily::PromptCompression
    );
    assert_eq!(
        MethodFamily::of_declared("composite"),
        Some(MethodFamily::Composite)
    );
    assert_eq!(MethodFamily::of_declared("unheard_of"), None);
    assert!(lower_is_better("nll") && lower_is_better("perplexity"));
    assert!(!lower_is_better("exact_match"));

    let a = variant("full", "unlimited", 7, 9000.0, 0.6);
    let b = variant("full", "unlimited", 64, 9000.0, 0.2);
    let mut c = variant("kivi", "unlimited", 64, 2000.0, 0.0);
    c.config.task.params.values.insert(
        "essays_dir".into(),
        longctx_core::ParamValue::Str("/elsewhere".into()),
    );
    let settings = task_settings(&[&a, &b, &c], &[]);
    assert_eq!(settings[0], vec![("digits".to_string(), "7".to_string())]);
    assert_eq!(settings[2], vec![("digits".to_string(), "64".to_string())]);
    // A single record has nothing to tell apart.
    assert!(task_settings(&[&a], &[])[0].is_empty());
}

#[test]
fn report_writes_pareto_plots_curves_settings_and_intervals() {
    let records = temp_dir("pareto-records");
    let cells = [
        variant("full", "unlimited", 7, 9000.0, 0.6),
        variant("kivi", "unlimited", 7, 2000.0, 0.6),
        variant("snapkv", "4x", 7, 3000.0, 0.2),
        variant("snapkv+kivi", "4x", 7, 800.0, 0.0),
        variant("full", "unlimited", 64, 9000.0, 0.4),
        variant("h2o", "2x", 64, 9000.0, 0.0),
    ];
    for (i, r) in cells.iter().enumerate() {
        let dir = records.join("niah");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("r{i}.json"));
        longctx_harness::write_record_atomically(&path, r).unwrap();
    }
    let out = temp_dir("pareto-out");
    let files = write_report(&records, &out).unwrap();
    assert_eq!(files.records, 6);
    let stem7 = "niah__smollm2-135m__digits-7";
    let stem64 = "niah__smollm2-135m__digits-64";
    for stem in [stem7, stem64] {
        for ext in ["svg", "png"] {
            assert!(out.join("pareto").join(format!("{stem}.{ext}")).is_file());
            assert!(out.join("curves").join(format!("{stem}.{ext}")).is_file());
        }
    }
    assert_eq!(files.pareto.len(), 4);
    assert_eq!(files.curves.len(), 4);
    let svg = std::fs::read_to_string(out.join("pareto").join(format!("{stem7}.svg"))).unwrap();
    for needle in [
        "KV bytes per token",
        "exact_match (higher is better)",
        "snapkv 4x",
        "kivi unlimited",
        "Pareto front",
        "token dropping",
    ] {
        assert!(
            svg.contains(needle),
            "{needle} missing from the Pareto plot"
        );
    }
    let png = std::fs::read(out.join("curves").join(format!("{stem7}.png"))).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    // The data behind the plot: the front is kivi (cheapest at 0.6) and snapkv+kivi.
    let rs: Vec<&RunRecord> = cells.iter().collect();
    let plots = pareto_plots(&rs);
    assert_eq!(plots.len(), 2);
    let p7 = plots.iter().find(|p| p.file_stem == stem7).unwrap();
    let front: Vec<&str> = p7
        .front
        .iter()
        .map(|&i| p7.points[i].label.as_str())
        .collect();
    assert_eq!(front, ["snapkv+kivi 4x", "kivi unlimited"]);
    assert_eq!(p7.title, "niah | digits=7 | smollm2-135m");
    let curves = length_curves(&rs);
    assert_eq!(curves.len(), 2);
    assert_eq!(curves[0].lines.len() + curves[1].lines.len(), 6);

    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(
        md.contains("| niah | smollm2-135m | full | unlimited | flex | digits=7 |"),
        "{md}"
    );
    assert!(
        md.contains("| niah | smollm2-135m | full | unlimited | flex | digits=64 |"),
        "{md}"
    );
    // A bootstrap interval beside a metric whose samples disagree.
    assert!(md.contains("exact_match 0.200 ["), "{md}");
    assert!(md.contains("## Pareto plots"), "{md}");
    assert!(md.contains(&format!("(pareto/{stem64}.svg)")), "{md}");
    assert!(md.contains(&format!("(curves/{stem7}.svg)")), "{md}");
    for d in [records, out] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Splits CSV text into rows of fields (RFC 4180 quoting).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

#[test]
fn csv_has_one_row_per_record_with_parameter_metric_and_cost_columns() {
    assert_eq!(export::csv_field("plain"), "plain");
    assert_eq!(export::csv_field("a,b"), "\"a,b\"");
    assert_eq!(export::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(export::csv_field("two\nlines"), "\"two\nlines\"");
    assert_eq!(export::csv_field(" pad"), "\" pad\"");

    let root = Path::new("/records");
    let mut odd = variant("snapkv", "4x", 64, 3000.0, 0.5);
    odd.config.method.name = "odd,\"name\"".into();
    let records = vec![
        (
            root.join("niah/a.json"),
            variant("full", "unlimited", 7, 9000.0, 0.6),
        ),
        (root.join("niah/b.json"), odd),
    ];
    let text = export::csv_export(&records, root);
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 3);
    let header = &rows[0];
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    for (i, name) in ["model", "method", "family", "budget", "backend", "task"]
        .iter()
        .enumerate()
    {
        assert_eq!(col(name), i);
    }
    assert_eq!(header.last().unwrap(), "record");
    assert_eq!(rows[1][col("method")], "full");
    assert_eq!(rows[1][col("family")], "baseline");
    assert_eq!(rows[2][col("method")], "odd,\"name\"");
    assert_eq!(rows[2][col("budget")], "4x");
    assert_eq!(rows[1][col("param.digits")], "7");
    assert_eq!(rows[2][col("param.digits")], "64");
    assert_eq!(rows[1][col("param.lengths")], "1000,2000,4000");
    assert_eq!(rows[1][col("exact_match")], "0.6");
    let lo: f64 = rows[2][col("exact_match_ci_lo")].parse().unwrap();
    let hi: f64 = rows[2][col("exact_match_ci_hi")].parse().unwrap();
    assert!(lo < hi && lo >= 0.0 && hi <= 1.0, "[{lo}, {hi}]");
    assert!(col("partial_match_ci_hi") > col("partial_match"));
    assert_eq!(rows[1][col("bytes_per_token")], "9000");
    for name in [
        "kv_bytes_after_prefill",
        "kv_bytes_end",
        "compression_vs_fp16",
        "prefill_tokens_per_second",
        "decode_tokens_per_second",
        "config_hash",
        "git_commit",
    ] {
        assert!(!rows[1][col(name)].is_empty(), "{name} empty");
    }
    assert!(
        header.iter().any(|h| h.starts_with("method."))
            || header.contains(&"model.dtype".to_string())
    );
    assert_eq!(rows[2][col("record")], "niah/b.json");
}

#[test]
fn lm_eval_export_uses_the_harness_key_names() {
    let r = variant("snapkv", "4x", 7, 3000.0, 0.5);
    let results = export::lm_eval_results(&r, "niah/x.json");
    let task = &results["results"]["niah"];
    assert_eq!(task["alias"], "niah");
    assert_eq!(task["exact_match,none"], 0.5);
    assert!(task["exact_match_stderr,none"].as_f64().unwrap() > 0.0);
    assert!(task["partial_match,none"].is_number());
    let n = r.samples.len();
    assert_eq!(results["n-samples"]["niah"]["original"], n);
    assert_eq!(results["n-samples"]["niah"]["effective"], n);
    assert_eq!(results["versions"]["niah"], r.provenance.longctx_version);
    assert_eq!(results["higher_is_better"]["niah"]["exact_match"], true);
    assert_eq!(results["configs"]["niah"]["task"], "niah");
    assert_eq!(results["configs"]["niah"]["task_params"]["digits"], 7);
    assert_eq!(results["config"]["model"], "smollm2-135m");
    assert_eq!(results["config"]["method"], "snapkv");
    assert_eq!(results["config"]["budget"], "4x");
    assert!(results["date"].as_f64().unwrap() > 1.7e9);
    assert_eq!(results["longctx"]["record"], "niah/x.json");
    assert!(results["longctx"]["ci95"]["exact_match"].is_array());

    let samples = export::lm_eval_samples(&r);
    let lines: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n);
    let first = &lines[0];
    assert_eq!(first["doc_id"], 0);
    assert_eq!(first["doc"]["id"], r.samples[0].id.as_str());
    assert_eq!(first["doc"]["length"], r.samples[0].metadata["length"]);
    assert_eq!(first["target"], r.samples[0].references[0].as_str());
    assert_eq!(first["resps"][0][0], r.samples[0].prediction.as_str());
    assert_eq!(first["filtered_resps"][0], r.samples[0].prediction.as_str());
    assert_eq!(first["filter"], "none");
    assert_eq!(first["exact_match"], r.samples[0].scores["exact_match"]);
    assert!(first["metrics"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("exact_match")));

    // Files: results_<timestamp>.json and samples_<task>_<timestamp>.jsonl per record.
    let out = temp_dir("lm-eval");
    let root = Path::new("/records");
    let files =
        export::write_lm_eval(&[(root.join("niah/cell.json"), r.clone())], root, &out).unwrap();
    let ts = export::lm_eval_timestamp(&r);
    assert!(!ts.contains(':'), "{ts}");
    let dir = out.join("niah").join("cell");
    assert_eq!(
        files,
        vec![
            dir.join(format!("results_{ts}.json")),
            dir.join(format!("samples_niah_{ts}.jsonl"))
        ]
    );
    let back: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(back["results"]["niah"]["exact_match,none"], 0.5);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn categories_follow_the_papers_grouping() {
    use paper::{categories_of, CATEGORY_OF};
    let cats = |task: &str, unit: &str| categories_of(task, unit);
    assert_eq!(
        cats("longbench", "qasper"),
        ["Single-Doc QA", "LongBench Avg"]
    );
    assert_eq!(
        cats("longbench", "2wikimqa"),
        ["Multi-Doc QA", "LongBench Avg"]
    );
    assert_eq!(
        cats("longbench", "qmsum"),
        ["Summarization", "LongBench Avg"]
    );
    assert_eq!(cats("longbench", "samsum"), ["Few-shot", "LongBench Avg"]);
    assert_eq!(
        cats("longbench", "passage_retrieval_en"),
        ["Synthetic", "LongBench Avg"]
    );
    assert_eq!(cats("longbench", "repobench-p"), ["Code", "LongBench Avg"]);
    // The paper leaves passage_count out of "Synthetic" and of the average.
    assert_eq!(cats("longbench", "passage_count"), ["PassageCount"]);
    assert_eq!(
        cats("ruler", "niah_multikey_3"),
        ["RULER Retrieval", "RULER Avg"]
    );
    assert_eq!(
        cats("ruler", "vt"),
        ["RULER Multi-hop Tracing", "RULER Avg"]
    );
    assert_eq!(cats("ruler", "fwe"), ["RULER Aggregation", "RULER Avg"]);
    assert_eq!(cats("ruler", "qa_2"), ["RULER QA", "RULER Avg"]);
    assert_eq!(cats("niah", ""), ["Needle"]);
    assert_eq!(cats("passkey", ""), ["Needle"]);
    assert_eq!(cats("perplexity", ""), ["Perplexity"]);
    // Unknown tasks and units are their own category.
    assert_eq!(cats("newtask", ""), ["newtask"]);
    assert_eq!(cats("ruler", "new_sub"), ["ruler new_sub", "RULER Avg"]);
    // LongBench's 16 English datasets in 6 categories (+ passage_count), RULER's 13 tasks in 4.
    let units = |task: &str| -> std::collections::BTreeSet<&str> {
        CATEGORY_OF
            .iter()
            .filter(|(t, u, _)| *t == task && *u != "*")
            .map(|(_, _, c)| *c)
            .collect()
    };
    let count = |task: &str| {
        CATEGORY_OF
            .iter()
            .filter(|(t, u, _)| *t == task && *u != "*")
            .count()
    };
    assert_eq!((count("longbench"), units("longbench").len()), (16, 7));
    assert_eq!((count("ruler"), units("ruler").len()), (13, 4));
}

/// A LongBench-style record: per-dataset `score` means in `metrics.by["dataset"]`.
fn longbench_record(method: &str, budget: &str, scores: &[(&str, f64)]) -> RunRecord {
    let mut r = variant(method, budget, 7, 5000.0, 0.5);
    r.config.task.name = "longbench".into();
    r.metrics.overall = [("score".to_string(), 0.0)].into();
    r.metrics.ci95.clear();
    r.metrics.by = [(
        "dataset".to_string(),
        scores
            .iter()
            .map(|(d, v)| (d.to_string(), [("score".to_string(), *v)].into()))
            .collect(),
    )]
    .into();
    r
}

#[test]
fn paper_table_has_category_means_deltas_and_missing_cells() {
    let records = [
        variant("snapkv", "4x", 7, 3000.0, 0.2),
        variant("kivi", "unlimited", 7, 2000.0, 0.4),
        variant("full", "unlimited", 7, 9000.0, 0.6),
        variant("full", "unlimited", 64, 9000.0, 0.4),
        longbench_record(
            "full",
            "unlimited",
            &[
                ("qasper", 0.3),
                ("narrativeqa", 0.5),
                ("hotpotqa", 0.2),
                ("passage_count", 0.05),
            ],
        ),
        longbench_record("kivi", "unlimited", &[("qasper", 0.2)]),
    ];
    let rs: Vec<&RunRecord> = records.iter().collect();
    let tables = paper_tables(&rs);
    assert_eq!(tables.len(), 1);
    let t = &tables[0];
    assert_eq!(t.model, "smollm2-135m");
    let headers: Vec<&str> = t.columns.iter().map(|c| c.header.as_str()).collect();
    assert_eq!(
        headers,
        [
            "Single-Doc QA",
            "Multi-Doc QA",
            "LongBench Avg",
            "PassageCount",
            "Needle (a)",
            "Needle (b)"
        ]
    );
    // The needle setting most rows have comes first.
    assert_eq!(t.columns[4].setting, [("digits".into(), "7".into())]);
    assert_eq!(t.columns[5].setting, [("digits".into(), "64".into())]);
    let methods: Vec<(&str, &str)> = t
        .rows
        .iter()
        .map(|r| (r.method.as_str(), r.budget.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("full", "unlimited"),
            ("kivi", "unlimited"),
            ("snapkv", "4x")
        ]
    );
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-12);
    let full = &t.rows[0].values;
    assert!(close(full[0], 0.4), "{full:?}"); // mean of qasper and narrativeqa
    assert!(close(full[1], 0.2));
    assert!(close(full[2], (0.3 + 0.5 + 0.2) / 3.0)); // passage_count left out
    assert!(close(full[3], 0.05));
    assert!(close(full[4], 0.6) && close(full[5], 0.4));
    let kivi = &t.rows[1].values;
    assert!(close(kivi[0], 0.2) && kivi[1].is_none() && kivi[5].is_none());
    let snapkv = &t.rows[2].values;
    assert!(snapkv[..4].iter().all(Option::is_none) && close(snapkv[4], 0.2));
    assert_eq!(t.rows[2].family, MethodFamily::TokenDropping);

    let md = paper::paper_markdown(&tables);
    for line in [
        "| method | budget | family | Single-Doc QA | Multi-Doc QA | LongBench Avg | PassageCount | Needle (a) | Needle (b) |",
        "| full | unlimited | baseline | 40.00 | 20.00 | 33.33 | 5.00 | 60.00 | 40.00 |",
        "| kivi | unlimited | quantization | 20.00 (−20.00) | – | 20.00 (−13.33) | – | 40.00 (−20.00) | – |",
        "| snapkv | 4x | token dropping | – | – | – | – | 20.00 (−40.00) | – |",
        "- Needle (b): `niah` exact_match x100; digits=64",
        "- Single-Doc QA: `longbench` score x100",
    ] {
        assert!(md.contains(line), "{line}\nmissing from\n{md}");
    }
    assert!(md.contains("- No records for: Summarization,"), "{md}");
    assert!(!md.contains("PassageCount.") && !md.contains("PassageCount,"));

    // Settings covering as many rows come in numeric order: digits 7 before 64.
    let even = [
        variant("full", "unlimited", 64, 9000.0, 0.4),
        variant("full", "unlimited", 7, 9000.0, 0.6),
    ];
    let t = &paper_tables(&even.iter().collect::<Vec<_>>())[0];
    assert_eq!(t.columns[0].setting, [("digits".into(), "7".into())]);

    // In the report, above the existing tables.
    let paths: Vec<(PathBuf, RunRecord)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (PathBuf::from(format!("r{i}.json")), r.clone()))
        .collect();
    let report = markdown_report(&paths, Path::new("."));
    let top = report.find("## Results by task category").unwrap();
    assert!(top < report.find("## Cells").unwrap());
    assert!(report.contains("## niah: exact_match per length"));
}

#[test]
fn perplexity_cells_stay_unscaled_and_lower_is_better() {
    let mut full = variant("full", "unlimited", 7, 9000.0, 0.6);
    full.config.task.name = "perplexity".into();
    full.metrics.overall = [("nll".to_string(), 3.0), ("perplexity".to_string(), 20.0)].into();
    let mut h2o = full.clone();
    h2o.config.method.name = "h2o".into();
    h2o.config.budget = "2x".parse().unwrap();
    h2o.metrics.overall.insert("nll".into(), 3.25);
    let tables = paper_tables(&[&h2o, &full]);
    let t = &tables[0];
    assert_eq!(t.columns[0].header, "Perplexity");
    assert_eq!(t.columns[0].scale, 1.0);
    let md = paper::paper_markdown(&tables);
    assert!(md.contains("| Perplexity ↓ |"), "{md}");
    assert!(
        md.contains("| full | unlimited | baseline | 3.000 |"),
        "{md}"
    );
    assert!(
        md.contains("| h2o | 2x | token dropping | 3.250 (+0.250) |"),
        "{md}"
    );
    assert!(md.contains("nll, lower is better"), "{md}");
}

#[test]
fn pareto_data_has_one_series_per_family() {
    use longctx_harness::RecordKind;
    // Declared by the record: a recurrent model, and a method name this crate does not know.
    let mut mamba = variant("full", "unlimited", 7, 120.0, 0.1);
    mamba.kind = Some(RecordKind {
        method_family: "baseline".into(),
        architecture: "mamba".into(),
        attention_layers: 0,
        recurrent_layers: 64,
    });
    let mut declared = variant("newthing", "unlimited", 7, 4000.0, 0.3);
    declared.kind = Some(RecordKind {
        method_family: "token_dropping".into(),
        architecture: "llama".into(),
        attention_layers: 30,
        recurrent_layers: 0,
    });
    let cells = [
        variant("full", "unlimited", 7, 9000.0, 0.6),
        variant("kivi", "unlimited", 7, 2000.0, 0.6),
        variant("snapkv", "4x", 7, 3000.0, 0.2),
        variant("llmlingua2", "4x", 7, 2500.0, 0.1),
        variant("snapkv+kivi", "4x", 7, 800.0, 0.0),
        mamba,
        declared,
    ];
    let rs: Vec<&RunRecord> = cells.iter().collect();
    let plots = pareto_plots(&rs);
    assert_eq!(plots.len(), 1);
    let p = &plots[0];
    let series: Vec<(MethodFamily, Vec<usize>)> = p.series();
    assert_eq!(
        series,
        [
            (MethodFamily::Baseline, vec![0]),
            (MethodFamily::Quantization, vec![1]),
            (MethodFamily::TokenDropping, vec![2, 6]),
            (MethodFamily::PromptCompression, vec![3]),
            (MethodFamily::Composite, vec![4]),
            (MethodFamily::Recurrent, vec![5]),
        ]
    );
    assert!(p.x_caption().contains("recurrent-state"));
    // Each family its own colour and marker.
    let colors: std::collections::BTreeSet<_> = MethodFamily::ALL
        .iter()
        .map(|&f| {
            let c = family_color(f);
            (c.0, c.1, c.2)
        })
        .collect();
    let markers: std::collections::HashSet<_> = MethodFamily::ALL
        .iter()
        .map(|&f| family_marker(f))
        .collect();
    assert_eq!(colors.len(), MethodFamily::ALL.len());
    assert_eq!(markers.len(), MethodFamily::ALL.len());
    // Legend entries in the drawn plot.
    let out = temp_dir("families");
    let svg = out.join("p.svg");
    write_pareto(p, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for entry in [
        "baseline",
        "quantization",
        "token dropping",
        "prompt compression",
        "composite",
        "recurrent/hybrid model",
        "KV or recurrent-state bytes per token",
    ] {
        assert!(text.contains(entry), "{entry} missing from the legend");
    }
    write_pareto(p, &out.join("p.png")).unwrap();
    std::fs::remove_dir_all(out).unwrap();
    // Without `kind`, a recurrent model is known by its name.
    let mut old = variant("full", "unlimited", 7, 100.0, 0.1);
    old.config.model.name = "recurrentgemma-2b-it".into();
    assert_eq!(MethodFamily::of(&old), MethodFamily::Recurrent);
}
