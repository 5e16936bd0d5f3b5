use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use longctx_core::{Error, Result};

use crate::provenance::Provenance;
use crate::run::CellConfig;

/// One sample's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SampleRecord {
    pub id: String,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub prompt_tokens: usize,
    pub prompt_sha256: String,
    pub references: Vec<String>,
    pub prediction: String,
    pub generated_tokens: usize,
    pub scores: BTreeMap<String, f64>,
    pub prefill_seconds: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: Option<f64>,
    pub compression_seconds: f64,
    /// Bytes of sequence state per layer after the prompt (and any end-of-prefill compression).
    pub state_bytes_after_prefill: Vec<usize>,
    /// Bytes of sequence state per layer at the end of generation.
    pub state_bytes_end: Vec<usize>,
    pub tokens_held_after_prefill: Vec<Option<usize>>,
    pub tokens_held_end: Vec<Option<usize>>,
    /// Bytes per layer kept off the device (host memory: InfLLM's offloaded blocks) after the
    /// prompt; not part of `state_bytes_after_prefill`. Empty in records made before it existed.
    #[serde(default)]
    pub host_state_bytes_after_prefill: Vec<usize>,
    /// Bytes per layer kept off the device at the end of generation.
    #[serde(default)]
    pub host_state_bytes_end: Vec<usize>,
    /// Each attention layer's resolved token budget (`None`: unlimited or recurrent).
    #[serde(default)]
    pub budget_tokens_per_layer: Vec<Option<usize>>,
    /// Prompt tokens at the end (the question) kept out of prefill compression: 0 when the
    /// method compresses the question too (query-aware) or the task has none.
    #[serde(default)]
    pub uncompressed_question_tokens: usize,
}

/// Metric means, overall and broken down by the task's grouping keys.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Aggregate {
    pub samples: usize,
    pub overall: BTreeMap<String, f64>,
    /// `by[key][value][metric]`, e.g. `by["length"]["512"]["exact_match"]`.
    pub by: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
}

impl Aggregate {
    /// Means of every metric over `samples`, overall and per value of each key in `group_by`.
    pub fn from_samples(samples: &[SampleRecord], group_by: &[&str]) -> Self {
        fn mean(rows: &[&SampleRecord]) -> BTreeMap<String, f64> {
            let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for r in rows {
                for (k, v) in &r.scores {
                    let e = sums.entry(k.clone()).or_default();
                    e.0 += v;
                    e.1 += 1;
                }
            }
            sums.into_iter()
                .map(|(k, (s, n))| (k, s / n as f64))
                .collect()
        }
        let all: Vec<&SampleRecord> = samples.iter().collect();
        let mut by = BTreeMap::new();
        for key in group_by {
            let mut groups: BTreeMap<String, Vec<&SampleRecord>> = BTreeMap::new();
            for s in samples {
                if let Some(v) = s.metadata.get(*key) {
                    let label = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    groups.entry(label).or_default().push(s);
                }
            }
            by.insert(
                key.to_string(),
                groups
                    .into_iter()
                    .map(|(k, rows)| (k, mean(&rows)))
                    .collect(),
            );
        }
        Self {
            samples: samples.len(),
            overall: mean(&all),
            by,
        }
    }
}

/// KV / sequence-state memory over the samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemorySummary {
    /// Mean over samples of the total bytes held after prefill.
    pub mean_state_bytes_after_prefill: f64,
    /// Mean over samples of the total bytes held at the end.
    pub mean_state_bytes_end: f64,
    /// Mean over samples of (total bytes at the end) / (prompt + generated tokens).
    pub bytes_per_token: f64,
    /// What a 16-bit uncompressed KV cache of this model takes per token (all layers).
    pub fp16_full_bytes_per_token: usize,
    /// `fp16_full_bytes_per_token / bytes_per_token`.
    pub compression_vs_fp16: f64,
}

/// Speed over the samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimingSummary {
    pub mean_prefill_tokens_per_second: f64,
    pub mean_decode_tokens_per_second: Option<f64>,
    pub total_compression_seconds: f64,
    pub wall_seconds: f64,
}

/// Everything about one cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Record format identifier.
    pub schema: String,
    pub config: CellConfig,
    pub config_hash: String,
    pub metrics: Aggregate,
    pub memory: MemorySummary,
    pub timing: TimingSummary,
    pub provenance: Provenance,
    pub samples: Vec<SampleRecord>,
}

/// Writes `record` as pretty JSON to `path` through a temporary file and a rename, so a reader
/// (or a crash) never sees a half-written record.
pub fn write_record_atomically(path: &Path, record: &RunRecord) -> Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Other(format!("serialising record: {e}")))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&json)
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(path.to_path_buf())
}
