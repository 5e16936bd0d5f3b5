//! `longctx bench-perf`: prefill and decode speed and peak memory of a model on one backend,
//! beside peers (llama.cpp through `llama-cpp-python`, transformers + PyTorch) run on the same
//! machine, the same GGUF and the same prompt token ids in the same invocation.
//!
//! Prompts are deterministic pseudo-random token ids (speed does not depend on the text), written
//! to a JSON file that the peer scripts in `crates/bench/peers/` read, so every implementation
//! processes exactly the same tokens.

mod memory;
mod peers;

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use longctx_backend::{BackendInfo, BackendJob};
use longctx_core::{Budget, Error, RawParams, Result};
use longctx_engine::{generate, GenerationConfig, Sampling};

pub use memory::{machine_info, MachineInfo, PeakMemory};
pub use peers::{run_peer, PeerReport, PeerRow, PeerSpec};

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerfConfig {
    pub model: String,
    pub model_params: RawParams,
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Tokens decoded after each prompt.
    pub decode_tokens: usize,
    /// Timed runs per length (after one untimed warm-up); the best is kept.
    pub repeats: usize,
    /// Prefill in chunks of at most this many tokens (`None`: the whole prompt at once).
    #[serde(default)]
    pub prefill_chunk: Option<usize>,
}

/// One prompt length's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerfRow {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Milliseconds per decode step spent inside the model's `forward` (recording and
    /// launching work) in the best decode run; the rest of a step waits for the device. Near
    /// `1000 / decode_tokens_per_s` means decode is bound by the host, not the GPU.
    #[serde(default)]
    pub decode_forward_ms_per_token: f64,
    /// Peak memory while processing this length (see `peak_memory_kind`).
    pub peak_memory_bytes: Option<u64>,
    pub peak_memory_kind: String,
    /// KV-cache bytes held after the last decoded token.
    pub kv_bytes: usize,
}

/// Our side of a benchmark: the figures and where they were measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerfResult {
    pub backend: BackendInfo,
    pub model_name: String,
    /// Where the weights came from (the GGUF path for file-backed models).
    pub model_source: String,
    pub model_sha256: Option<String>,
    pub vocab_size: usize,
    pub dtype: String,
    /// The prefill chunk the figures were measured with (`None`: one pass).
    #[serde(default)]
    pub prefill_chunk: Option<usize>,
    pub rows: Vec<PerfRow>,
}

/// Deterministic prompt ids in `[100, vocab)`, the same for every implementation.
pub fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(100).max(1) as u64;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (100 + (state >> 33) % span) as u32
        })
        .collect()
}

/// The benchmark as a job for [`longctx_backend::run_on`].
pub struct PerfJob {
    pub config: PerfConfig,
}

impl BackendJob for PerfJob {
    type Output = Result<PerfResult>;

    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let cfg = self.config;
        let registry = longctx_registry::builtin::<B>();
        let model_params = registry.model_params(&cfg.model, &cfg.model_params)?;
        let loaded = registry.load_model(&cfg.model, &model_params, &device)?;
        let model = loaded.model.as_ref();
        let method_params = registry.method_params("full", &RawParams::new())?;
        let method = registry.build_method("full", &method_params)?;
        let memory = PeakMemory::for_backend(info.kind);
        let generation = GenerationConfig {
            max_new_tokens: cfg.decode_tokens + 1,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            max_prefill_chunk: cfg.prefill_chunk,
            question_tokens: 0,
        };
        let vocab = model.info().vocab_size;
        let mut rows = Vec::new();
        for &n in &cfg.lengths {
            if n + cfg.decode_tokens + 1 > model.info().max_context {
                return Err(Error::InvalidInput(format!(
                    "prompt of {n} tokens + {} decoded exceeds {}'s context of {}",
                    cfg.decode_tokens + 1,
                    cfg.model,
                    model.info().max_context
                )));
            }
            let ids = prompt_ids(n, vocab);
            memory.reset();
            let mut best_prefill = f64::INFINITY;
            let mut best_decode = f64::INFINITY;
            let mut forward_ms = 0.0;
            let mut kv_bytes = 0;
            // The first run is a warm-up: kernel compilation and autotuning on GPUs.
            for run in 0..=cfg.repeats {
                let started = Instant::now();
                let result = generate(
                    model,
                    method.as_ref(),
                    Budget::Unlimited,
                    &ids,
                    &generation,
                    &mut |_| {},
                )?;
                let total = started.elapsed().as_secs_f64();
                if run == 0 {
                    continue;
                }
                best_prefill = best_prefill.min(result.prefill_seconds);
                let steps = result.decode_steps.max(1) as f64;
                let per_step = result.decode_seconds.max(1e-9) / steps;
                if per_step < best_decode {
                    best_decode = per_step;
                    forward_ms = 1e3 * result.decode_forward_seconds / steps;
                }
                kv_bytes = result.state_bytes_end.iter().sum();
                eprintln!(
                    "  {n} tokens, run {run}: prefill {:.3}s, decode {} steps {:.3}s (in forward {:.3}s), total {total:.3}s",
                    result.prefill_seconds, result.decode_steps, result.decode_seconds,
                    result.decode_forward_seconds
                );
            }
            let row = PerfRow {
                prompt_tokens: n,
                decode_tokens: cfg.decode_tokens,
                prefill_tokens_per_s: n as f64 / best_prefill,
                decode_tokens_per_s: 1.0 / best_decode,
                decode_forward_ms_per_token: forward_ms,
                peak_memory_bytes: memory.peak(),
                peak_memory_kind: memory.kind().into(),
                kv_bytes,
            };
            println!(
                "longctx {:5} {:5} tokens: prefill {:9.1} tok/s, decode {:7.1} tok/s, peak memory {}",
                info.kind.name(),
                n,
                row.prefill_tokens_per_s,
                row.decode_tokens_per_s,
                row.peak_memory_bytes
                    .map(|b| format!("{:.1} MiB", b as f64 / 1048576.0))
                    .unwrap_or_else(|| "n/a".into())
            );
            rows.push(row);
        }
        Ok(PerfResult {
            backend: info,
            model_name: model.info().name.clone(),
            model_source: loaded.provenance.source.clone(),
            vocab_size: vocab,
            model_sha256: loaded.provenance.weights_sha256.clone(),
            dtype: model.info().dtype.clone(),
            prefill_chunk: cfg.prefill_chunk,
            rows,
        })
    }
}

/// Writes the prompt ids of every length as JSON (`{"512": [...], ...}`) for the peer scripts.
pub fn write_prompt_ids(path: &Path, lengths: &[usize], vocab: usize) -> Result<()> {
    let map: std::collections::BTreeMap<String, Vec<u32>> = lengths
        .iter()
        .map(|&n| (n.to_string(), prompt_ids(n, vocab)))
        .collect();
    let text = serde_json::to_string(&map).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_deterministic_and_in_range() {
        let a = prompt_ids(1000, 49152);
        assert_eq!(a, prompt_ids(1000, 49152));
        assert!(a.iter().all(|&t| (100..49152).contains(&t)));
        // Not degenerate: many distinct ids.
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
        // A prefix of a longer prompt is the shorter prompt.
        assert_eq!(&prompt_ids(2000, 49152)[..1000], &a[..]);
    }
}
