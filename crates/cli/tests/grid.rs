//! `longctx grid` end to end: a study killed with SIGKILL mid-run and run again ends with every
//! cell's record present exactly once, each with all its samples, and no partial files; its
//! cells share their prefill, and their records equal those of `--no-share` up to timing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn study() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../studies/smoke-tiny.toml")
}

fn longctx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_longctx"));
    c.stdin(Stdio::null());
    c
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `(hash, state)` per cell of `--dry-run`.
/// `longctx grid <smoke study> --out OUT` (add the mode's flags).
fn grid_on_study(out: &Path) -> Command {
    let mut c = longctx();
    c.arg("grid").arg(study()).arg("--out").arg(out);
    c
}

fn dry_run(out: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let o = grid_on_study(out)
        .arg("--dry-run")
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap().to_string())
        })
        .collect()
}

#[test]
fn a_killed_grid_resumes_and_ends_with_every_record_once() {
    let out = std::env::temp_dir().join(format!("longctx-grid-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);

    let cells = dry_run(&out, &[]);
    assert_eq!(cells.len(), 4, "{cells:?}");
    assert!(cells.iter().all(|(_, s)| s == "todo"));
    // Two shards split the cells between them.
    let a = dry_run(&out, &["--shard", "1/2"]);
    let b = dry_run(&out, &["--shard", "2/2"]);
    assert_eq!(a.len() + b.len(), 4);
    assert!(a.iter().all(|c| !b.contains(c)));

    // First run: killed as soon as something is on disk.
    let mut child = grid_on_study(&out)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let killed;
    loop {
        let written = files(&out).iter().any(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".partial.jsonl") || name.ends_with(".json")
        });
        if written {
            killed = child.try_wait().unwrap().is_none();
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the grid ended ({status}) before writing anything");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "nothing written"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("killed mid-run: {killed}");
    let after_kill = dry_run(&out, &[]);
    assert!(
        after_kill.iter().any(|(_, s)| s != "todo"),
        "{after_kill:?}"
    );

    // Second run: to completion.
    let o = grid_on_study(&out).arg("--quiet").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Every cell's record exactly once, complete; nothing partial or temporary left.
    let all = files(&out);
    assert!(
        all.iter()
            .all(|p| p.extension().is_some_and(|e| e == "json")),
        "{all:?}"
    );
    let mut records: BTreeMap<String, usize> = BTreeMap::new();
    for p in &all {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let hash = r["config_hash"].as_str().unwrap().to_string();
        let samples = r["samples"].as_array().unwrap();
        // lengths 300,400 x depths 0,0.5,1.
        assert_eq!(samples.len(), 6, "{}", p.display());
        let mut ids: Vec<&str> = samples.iter().map(|s| s["id"].as_str().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "each sample once in {}", p.display());
        *records.entry(hash).or_default() += 1;
    }
    let expected: Vec<String> = cells.iter().map(|(h, _)| h.clone()).collect();
    let got: Vec<String> = records.keys().map(|h| h[..12].to_string()).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    assert!(records.values().all(|&n| n == 1));
    assert!(dry_run(&out, &[]).iter().all(|(_, s)| s == "done"));

    // A third run has nothing to do.
    let o = grid_on_study(&out).arg("--quiet").output().unwrap();
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("4 done, 0 to run"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The same study asking for its report: nothing to run, the report written from the
    // records and its tables printed.
    let with_report = out.with_extension("report.toml");
    let text = std::fs::read_to_string(study()).unwrap() + "report = true\n";
    std::fs::write(&with_report, text).unwrap();
    let o = longctx()
        .arg("grid")
        .arg(&with_report)
        .args(["--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("the paper's layout"), "{stdout}");
    assert!(stdout.contains("per length"), "{stdout}");
    let report = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(report.contains(&stdout.trim()[..40]), "{report}");
    std::fs::remove_file(&with_report).unwrap();

    // Every cell's method compresses after prefill: they shared it, and the records (resumed
    // after the kill) are those of cells run alone, timing aside.
    let alone = std::env::temp_dir().join(format!("longctx-grid-alone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&alone);
    let o = grid_on_study(&alone)
        .args(["--quiet", "--no-share"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut compared = 0;
    for p in &all {
        let shared = read_json(p);
        assert_eq!(shared["timing"]["shared_prefill"], true, "{}", p.display());
        let twin = alone.join(p.strip_prefix(&out).unwrap());
        let unshared = read_json(&twin);
        assert!(unshared["timing"].get("shared_prefill").is_none());
        assert_eq!(
            without_timing(shared),
            without_timing(unshared),
            "{} differs from its --no-share twin",
            p.display()
        );
        compared += 1;
    }
    assert_eq!(compared, 4);
    std::fs::remove_dir_all(&alone).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A record without what depends on when and how fast it ran.
fn without_timing(mut r: serde_json::Value) -> serde_json::Value {
    let record = r.as_object_mut().unwrap();
    record.remove("timing").unwrap();
    let provenance = record["provenance"].as_object_mut().unwrap();
    provenance.remove("started_at").unwrap();
    provenance.remove("finished_at").unwrap();
    for s in record["samples"].as_array_mut().unwrap() {
        let s = s.as_object_mut().unwrap();
        for key in [
            "prefill_seconds",
            "prefill_tokens_per_second",
            "decode_tokens_per_second",
            "compression_seconds",
        ] {
            s.remove(key).unwrap();
        }
        s.remove("shared_prefill_seconds");
    }
    r
}

#[test]
fn a_bad_study_fails_before_running_anything() {
    let dir = std::env::temp_dir().join(format!("longctx-grid-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\nmodels = [{ name = \"tiny\" }]\n\
         methods = [{ name = \"full\" }, { name = \"snapkvv\" }]\ntasks = [{ name = \"passkey\" }]\n",
    )
    .unwrap();
    let o = longctx()
        .arg("grid")
        .arg(&file)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("bad.toml")
            && stderr.contains("methods[1] (snapkvv)")
            && stderr.contains("unknown method 'snapkvv'; valid methods:"),
        "{stderr}"
    );
    assert!(!dir.join("out").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
