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
    /// Seconds of this sample's context prefill when it was computed once for several cells
    /// (`longctx grid` shares it among methods that compress only after prefill); part of
    /// `prefill_seconds`, and the same in each of those cells' records. Absent when the prompt
    /// was prefilled for this cell alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_prefill_seconds: Option<f64>,
}

/// Metric means, overall and broken down by the task's grouping keys, each with a percentile
/// bootstrap 95% interval over the samples ([`bootstrap_ci95`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Aggregate {
    pub samples: usize,
    pub overall: BTreeMap<String, f64>,
    /// `by[key][value][metric]`, e.g. `by["length"]["512"]["exact_match"]`.
    pub by: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// `ci95[metric] = [lo, hi]`: the percentile bootstrap 95% interval of `overall[metric]`.
    /// Empty in records made before intervals existed; a metric with a non-finite sample
    /// score has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ci95: BTreeMap<String, [f64; 2]>,
    /// `ci95_by[key][value][metric] = [lo, hi]`, the interval of `by[key][value][metric]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ci95_by: BTreeMap<String, BTreeMap<String, BTreeMap<String, [f64; 2]>>>,
}

/// Resamples drawn by [`bootstrap_ci95`].
pub const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Seed of [`bootstrap_ci95`]'s generator: fixed, so a record's intervals are reproducible.
pub const BOOTSTRAP_SEED: u64 = 0x6c6f_6e67_6374_7831;

/// SplitMix64 (Steele, Lea, Flood 2014): a small, well-mixed deterministic generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-50 for any n a record
    /// has).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// Linear interpolation between order statistics (numpy's default, "type 7") of sorted `x`.
fn quantile_sorted(x: &[f64], p: f64) -> f64 {
    let h = (x.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(x.len() - 1);
    x[lo] + (h - lo as f64) * (x[hi] - x[lo])
}

/// The percentile bootstrap 95% interval of the mean of `values`: [`BOOTSTRAP_RESAMPLES`]
/// resamples with replacement drawn by a SplitMix64 generator seeded with [`BOOTSTRAP_SEED`],
/// and the 2.5th and 97.5th percentiles of their means. Deterministic: the same values give the
/// same interval. One value gives `[value, value]` (a single sample says nothing about spread;
/// the interval is degenerate, not wide); no values, or any non-finite value, gives `None`.
pub fn bootstrap_ci95(values: &[f64]) -> Option<[f64; 2]> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    if values.len() == 1 {
        return Some([values[0], values[0]]);
    }
    let n = values.len();
    let mut rng = SplitMix64(BOOTSTRAP_SEED);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some([
        quantile_sorted(&means, 0.025),
        quantile_sorted(&means, 0.975),
    ])
}

/// Per-metric means and bootstrap intervals of `rows`.
type Summary = (BTreeMap<String, f64>, BTreeMap<String, [f64; 2]>);

fn summarize(rows: &[&SampleRecord]) -> Summary {
    let mut values: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in rows {
        for (k, v) in &r.scores {
            values.entry(k).or_default().push(*v);
        }
    }
    let mut means = BTreeMap::new();
    let mut cis = BTreeMap::new();
    for (k, v) in values {
        means.insert(k.to_string(), v.iter().sum::<f64>() / v.len() as f64);
        if let Some(ci) = bootstrap_ci95(&v) {
            cis.insert(k.to_string(), ci);
        }
    }
    (means, cis)
}

impl Aggregate {
    /// Means of every metric over `samples`, overall and per value of each key in `group_by`,
    /// each with its bootstrap 95% interval over the samples it averages.
    pub fn from_samples(samples: &[SampleRecord], group_by: &[&str]) -> Self {
        let all: Vec<&SampleRecord> = samples.iter().collect();
        let mut by = BTreeMap::new();
        let mut ci95_by = BTreeMap::new();
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
            let mut means = BTreeMap::new();
            let mut cis = BTreeMap::new();
            for (label, rows) in groups {
                let (m, c) = summarize(&rows);
                means.insert(label.clone(), m);
                cis.insert(label, c);
            }
            by.insert(key.to_string(), means);
            ci95_by.insert(key.to_string(), cis);
        }
        let (overall, ci95) = summarize(&all);
        Self {
            samples: samples.len(),
            overall,
            by,
            ci95,
            ci95_by,
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
    /// With `shared_prefill`, the whole run of the cells that shared it.
    pub wall_seconds: f64,
    /// Whether some samples' prefill was shared with other cells (their
    /// `shared_prefill_seconds`): prefill speeds then count that prefill once per cell.
    /// Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_prefill: bool,
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
    /// What kind of method and model the cell measured, for grouping in reports. `None` in
    /// records made before it existed (reports then go by the method's and model's names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RecordKind>,
}

/// The method's declared family and the model's architecture, as the run saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordKind {
    /// `MethodCapabilities::family` in its serialized form (`baseline`, `quantization`,
    /// `token_dropping`, `composite`, ...); a string so that a family added later does not
    /// make older readers reject the record.
    #[serde(default)]
    pub method_family: String,
    /// `ModelInfo::architecture`, e.g. `llama`.
    #[serde(default)]
    pub architecture: String,
    /// The model's attention layers (each holds a KV cache).
    #[serde(default)]
    pub attention_layers: usize,
    /// The model's recurrent layers (SSM, RG-LRU: a fixed-size state instead of a KV cache);
    /// non-zero for a recurrent or hybrid model.
    #[serde(default)]
    pub recurrent_layers: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: usize, scores: &[(&str, f64)], length: u64) -> SampleRecord {
        SampleRecord {
            id: id.to_string(),
            metadata: [("length".to_string(), serde_json::json!(length))].into(),
            prompt_tokens: 10,
            prompt_sha256: String::new(),
            references: vec![],
            prediction: String::new(),
            generated_tokens: 1,
            scores: scores.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            prefill_seconds: 0.0,
            prefill_tokens_per_second: 0.0,
            decode_tokens_per_second: None,
            compression_seconds: 0.0,
            state_bytes_after_prefill: vec![],
            state_bytes_end: vec![],
            tokens_held_after_prefill: vec![],
            tokens_held_end: vec![],
            host_state_bytes_after_prefill: vec![],
            host_state_bytes_end: vec![],
            budget_tokens_per_layer: vec![],
            uncompressed_question_tokens: 0,
            shared_prefill_seconds: None,
        }
    }

    #[test]
    fn equal_samples_give_a_zero_width_interval() {
        assert_eq!(bootstrap_ci95(&[0.75; 9]), Some([0.75, 0.75]));
        // One sample: the interval is the value itself.
        assert_eq!(bootstrap_ci95(&[3.5]), Some([3.5, 3.5]));
        assert_eq!(bootstrap_ci95(&[]), None);
        assert_eq!(bootstrap_ci95(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn half_ones_give_an_interval_around_one_half() {
        let values: Vec<f64> = (0..100).map(|i| (i % 2) as f64).collect();
        let [lo, hi] = bootstrap_ci95(&values).unwrap();
        assert!(lo < 0.5 && 0.5 < hi, "[{lo}, {hi}]");
        // The normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = 0.5 +- 0.098.
        let width = hi - lo;
        assert!((0.15..0.25).contains(&width), "width {width}");
        assert!(((lo + hi) / 2.0 - 0.5).abs() < 0.03, "[{lo}, {hi}]");
        // Means of 0/1 samples stay in [0, 1].
        assert!(lo >= 0.0 && hi <= 1.0);
    }

    #[test]
    fn intervals_are_deterministic() {
        let values: Vec<f64> = (0..37).map(|i| ((i * 7919) % 101) as f64 / 10.0).collect();
        let a = bootstrap_ci95(&values).unwrap();
        let b = bootstrap_ci95(&values).unwrap();
        assert_eq!(a, b);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(a[0] < mean && mean < a[1], "{a:?} vs {mean}");
    }

    #[test]
    fn aggregate_carries_intervals_overall_and_per_group_and_old_records_load() {
        let samples: Vec<SampleRecord> = (0..8)
            .map(|i| {
                let length = if i < 4 { 100 } else { 200 };
                let em = if i < 4 { 1.0 } else { (i % 2) as f64 };
                sample(i, &[("exact_match", em), ("nll", 2.0)], length)
            })
            .collect();
        let agg = Aggregate::from_samples(&samples, &["length"]);
        assert_eq!(agg.overall["exact_match"], 0.75);
        let [lo, hi] = agg.ci95["exact_match"];
        assert!(lo <= 0.75 && 0.75 <= hi && lo < hi, "[{lo}, {hi}]");
        assert_eq!(agg.ci95["nll"], [2.0, 2.0]);
        assert_eq!(agg.ci95_by["length"]["100"]["exact_match"], [1.0, 1.0]);
        let [lo, hi] = agg.ci95_by["length"]["200"]["exact_match"];
        assert!(lo <= 0.5 && 0.5 <= hi, "[{lo}, {hi}]");
        // Round trip, and a record written before intervals existed still loads.
        let json = serde_json::to_value(&agg).unwrap();
        let back: Aggregate = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.ci95, agg.ci95);
        let mut old = json;
        old.as_object_mut().unwrap().remove("ci95");
        old.as_object_mut().unwrap().remove("ci95_by");
        let old: Aggregate = serde_json::from_value(old).unwrap();
        assert!(old.ci95.is_empty() && old.ci95_by.is_empty());
        assert_eq!(old.overall, agg.overall);
    }
}
