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
