//! End-to-end checks of the `longctx` binary.

use std::process::Command;

fn longctx(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_longctx"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn list_shows_full_with_its_parameters() {
    let (ok, stdout, _) = longctx(&["list"]);
    assert!(ok);
    assert!(stdout.contains("full: Uncompressed KV cache"), "{stdout}");
    assert!(
        stdout.contains("initial_capacity (int, default 256)"),
        "{stdout}"
    );
    let (ok, json, _) = longctx(&["list", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let methods: Vec<&str> = v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for name in [
        "full",
        "kivi",
        "flexgen",
        "int8",
        "streaming-llm",
        "h2o",
        "snapkv",
        "pyramidkv",
        "tova",
        "knorm",
        "infllm",
        "adakv",
    ] {
        assert!(methods.contains(&name), "{methods:?}");
    }
}

#[test]
fn bad_names_are_clear_errors() {
    let (ok, _, stderr) = longctx(&["run", "--method", "snapkvv"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown method 'snapkvv'; valid methods:"),
        "{stderr}"
    );
    let (ok, _, stderr) = longctx(&["run", "--task-param", "lenghts=5"]);
    assert!(!ok);
    assert!(
        stderr.contains("task passkey has no parameter 'lenghts'"),
        "{stderr}"
    );
    // A `--NAME VALUE` shorthand that names no parameter of the task, method or model.
    let (ok, _, stderr) = longctx(&["run", "--task", "passkey", "--lenghts", "5"]);
    assert!(!ok);
    assert!(stderr.contains("unknown option '--lenghts'"), "{stderr}");
    assert!(stderr.contains("task passkey: lengths, depths"), "{stderr}");
    let (ok, _, stderr) = longctx(&["run", "--backend", "tpu"]);
    assert!(!ok);
    assert!(stderr.contains("tpu"), "{stderr}");
}

/// The acceptance command: `longctx run --model tiny --method full --backend wgpu`,
/// here with one short sample; then the same cell again (its parameters now given with
/// `--task-param` instead of the `--NAME VALUE` shorthands) is skipped, not lost.
#[test]
fn run_on_wgpu_writes_a_record_and_skips_a_finished_cell() {
    if std::env::var("LONGCTX_SKIP_WGPU").is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("longctx-cli-test-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let args = [
        "run",
        "--model",
        "tiny",
        "--method",
        "full",
        "--backend",
        "wgpu",
        "--lengths",
        "300",
        "--depths=0.5",
        "--out",
        out,
    ];
    let (ok, stdout, stderr) = longctx(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("tiny | full | unlimited (passkey) | wgpu"),
        "{stdout}"
    );
    let records: Vec<_> = std::fs::read_dir(dir.join("passkey"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    assert_eq!(record["config"]["backend"], "wgpu");
    assert_eq!(record["samples"].as_array().unwrap().len(), 1);
    let modified = std::fs::metadata(&records[0]).unwrap().modified().unwrap();
    let same_cell = [
        "run",
        "--model",
        "tiny",
        "--backend",
        "wgpu",
        "--task-param",
        "lengths=300",
        "--task-param",
        "depths=0.5",
        "--out",
        out,
    ];
    let (ok, _, stderr) = longctx(&same_cell);
    assert!(ok);
    assert!(stderr.contains("not running again"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&records[0]).unwrap().modified().unwrap(),
        modified
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn generate_streams_text_from_the_tiny_model() {
    let (ok, _, stderr) = longctx(&[
        "generate",
        "--prompt",
        "abc",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("[4 prompt tokens"), "{stderr}");
}
