//! Peer implementations run as Python scripts (`crates/bench/peers/*.py`) on the same machine,
//! GGUF and prompt ids; each writes a JSON report that is stored verbatim in the record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One peer invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerSpec {
    /// Short label, e.g. `llama.cpp` or `transformers-sdpa-bf16`.
    pub label: String,
    pub script: PathBuf,
    pub args: Vec<String>,
}

/// One prompt length of a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRow {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub peak_memory_bytes: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// What a peer reported, or why it could not run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    pub label: String,
    pub command: String,
    /// `None` when the peer ran; the failure otherwise (the benchmark goes on without it).
    pub error: Option<String>,
    pub rows: Vec<PeerRow>,
    /// The rest of the script's report (versions, device, settings).
    #[serde(flatten)]
    pub details: BTreeMap<String, Value>,
}

/// Runs `spec` with `--ids IDS --gguf GGUF --out TMP`, returning its report.
pub fn run_peer(spec: &PeerSpec, gguf: &Path, ids_file: &Path, scratch: &Path) -> PeerReport {
    let out = scratch.join(format!(
        "peer-{}.json",
        spec.label
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    let _ = std::fs::remove_file(&out);
    let mut args = vec![spec.script.display().to_string()];
    args.extend(spec.args.iter().cloned());
    args.extend([
        "--gguf".into(),
        gguf.display().to_string(),
        "--ids".into(),
        ids_file.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    let command = format!("python3 {}", args.join(" "));
    eprintln!("peer {}: {command}", spec.label);
    let failed = |error: String| PeerReport {
        label: spec.label.clone(),
        command: command.clone(),
        error: Some(error),
        rows: Vec::new(),
        details: BTreeMap::new(),
    };
    let status = match Command::new("python3").args(&args).status() {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot start python3: {e}")),
    };
    if !status.success() {
        return failed(format!("exited with {status}; see its output above"));
    }
    let text = match std::fs::read_to_string(&out) {
        Ok(t) => t,
        Err(e) => return failed(format!("no report at {}: {e}", out.display())),
    };
    match serde_json::from_str::<PeerReport>(&inject(&text, &spec.label, &command)) {
        Ok(r) => r,
        Err(e) => failed(format!("unreadable report {}: {e}", out.display())),
    }
}

/// Adds our label, command and `error: null` to a script's report.
fn inject(report: &str, label: &str, command: &str) -> String {
    let mut v: Value = serde_json::from_str(report).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("label".into(), label.into());
        map.insert("command".into(), command.into());
        map.insert("error".into(), Value::Null);
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_report_keeps_its_details_and_rows() {
        let text = r#"{"peer": "llama.cpp 0.3", "threads": 2,
            "rows": [{"prompt_tokens": 512, "decode_tokens": 64, "prefill_tokens_per_s": 300.5,
                      "decode_tokens_per_s": 110.0, "peak_memory_bytes": 1000, "n_batch": 512}]}"#;
        let r: PeerReport = serde_json::from_str(&inject(text, "llama.cpp", "python3 x")).unwrap();
        assert_eq!(r.label, "llama.cpp");
        assert!(r.error.is_none());
        assert_eq!(r.rows[0].prompt_tokens, 512);
        assert_eq!(r.rows[0].extra["n_batch"], 512);
        assert_eq!(r.details["threads"], 2);
    }

    #[test]
    fn a_missing_script_is_an_error_not_a_panic() {
        let spec = PeerSpec {
            label: "nothing".into(),
            script: "/nonexistent/peer.py".into(),
            args: vec![],
        };
        let dir = std::env::temp_dir();
        let r = run_peer(&spec, Path::new("x.gguf"), Path::new("ids.json"), &dir);
        assert!(r.error.is_some());
        assert!(r.rows.is_empty());
    }
}
