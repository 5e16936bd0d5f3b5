//! `check-backends` and `bench-cpu-backends`: the records that justify backend claims.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use serde::Serialize;

use longctx_backend::{run_on, BackendInfo, BackendJob, BackendKind, DEFAULT_CPU};
use longctx_core::tensor_util::max_relative_error;
use longctx_core::{
    Budget, CacheContext, CausalLm, KvMethod, LogitsSelection, ModelDescriptor, Params, RawParams,
    SequenceState,
};
use longctx_harness::Provenance;
use longctx_model_transformer::{TinyModel, Transformer};

fn tiny(extra: &[(&str, &str)]) -> Result<Params> {
    let given: RawParams = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Params::resolve("model tiny", &TinyModel::params(), &given)?)
}

fn build<B: Backend>(params: &Params, device: &B::Device) -> Result<Transformer<B>> {
    Ok(TinyModel::build::<B>(
        TinyModel::config(params)?,
        params.int("seed")? as u64,
        device,
    )?)
}

fn full_method<B: Backend>() -> Result<Box<dyn KvMethod<B>>> {
    let registry = longctx_registry::builtin::<B>();
    Ok(registry.build_method("full", &registry.method_params("full", &RawParams::new())?)?)
}

fn new_state<B: Backend>(model: &Transformer<B>, prompt: usize) -> Result<SequenceState<B>> {
    let ctx = CacheContext {
        budget: Budget::Unlimited,
        prompt_tokens: prompt,
        n_layers: model.config.n_layers,
    };
    Ok(SequenceState::new(
        &model.info().layers,
        full_method::<B>()?.as_ref(),
        &ctx,
    )?)
}

fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The parity workload: a 4-layer GQA tiny model (global, and with a 16-token sliding window).
const VARIANTS: [(&str, &str); 2] = [("global", "0"), ("sliding_window_16", "16")];
const PROMPT: usize = 64;
const PREFIX: usize = 40;

struct ParityJob;

#[derive(Serialize, Clone)]
struct VariantOutput {
    variant: String,
    /// Prefill logits `[PROMPT, vocab]`, flattened.
    #[serde(skip)]
    logits: Vec<f32>,
    /// Max relative error of decode-step logits against the same backend's one-shot prefill.
    incremental_max_relative_error: f64,
    seconds: f64,
}

impl BackendJob for ParityJob {
    type Output = Result<(BackendInfo, Vec<VariantOutput>)>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        let ids: Vec<u32> = (0..PROMPT)
            .map(|i| ((i * 37 + 11) % 250 + 3) as u32)
            .collect();
        let mut out = Vec::new();
        for (name, window) in VARIANTS {
            let start = Instant::now();
            let params = tiny(&[
                ("layers", "4"),
                ("hidden", "128"),
                ("heads", "8"),
                ("kv_heads", "2"),
                ("sliding_window", window),
                ("seed", "1"),
            ])?;
            let model = build::<B>(&params, &device)?;
            let vocab = model.config.vocab_size;
            let positions: Vec<usize> = (0..PROMPT).collect();
            let mut state = new_state(&model, PROMPT)?;
            let logits = host(model.forward(&ids, &positions, &mut state, LogitsSelection::All)?);
            let mut state = new_state(&model, PREFIX)?;
            model.forward(
                &ids[..PREFIX],
                &positions[..PREFIX],
                &mut state,
                LogitsSelection::Last,
            )?;
            let mut worst: f64 = 0.0;
            for p in PREFIX..PROMPT {
                let step =
                    host(model.forward(&ids[p..p + 1], &[p], &mut state, LogitsSelection::Last)?);
                worst = worst.max(max_relative_error(
                    &step,
                    &logits[p * vocab..(p + 1) * vocab],
                ));
            }
            out.push(VariantOutput {
                variant: name.into(),
                logits,
                incremental_max_relative_error: worst,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        Ok((info, out))
    }
}

#[derive(Serialize)]
struct BackendParity {
    backend: BackendInfo,
    variants: Vec<VariantParity>,
    pass: bool,
}

#[derive(Serialize)]
struct VariantParity {
    variant: String,
    /// Max relative error of prefill logits against the reference backend.
    max_relative_error_vs_reference: f64,
    incremental_max_relative_error: f64,
    seconds: f64,
}

#[derive(Serialize)]
struct ParityRecord {
    schema: &'static str,
    description: &'static str,
    command: String,
    created_at: String,
    tolerance: f64,
    /// Tolerance applied to CUDA, whose f32 matmuls run in TF32 on tensor cores.
    cuda_tf32_tolerance: f64,
    notes: &'static str,
    error_measure: &'static str,
    reference: BackendInfo,
    results: Vec<BackendParity>,
    longctx_git_commit: String,
    rustc: String,
    burn: String,
}

pub(crate) fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn build_facts() -> (String, String, String) {
    let p = Provenance::collect(
        BackendInfo {
            kind: BackendKind::Flex,
            burn_name: String::new(),
            device: String::new(),
        },
        Default::default(),
        String::new(),
        String::new(),
    );
    (p.git_commit, p.rustc, p.burn)
}

/// `longctx check-backends`.
pub fn check_backends(
    backends: Vec<BackendKind>,
    reference: BackendKind,
    tolerance: f64,
    cuda_tf32_tolerance: f64,
    out: PathBuf,
) -> Result<()> {
    let (reference_info, reference_out) = run_on(reference, ParityJob)??;
    let mut results = Vec::new();
    let mut all_pass = true;
    for kind in backends {
        let (info, outputs) = run_on(kind, ParityJob)??;
        let variants: Vec<VariantParity> = outputs
            .iter()
            .zip(&reference_out)
            .map(|(o, r)| VariantParity {
                variant: o.variant.clone(),
                max_relative_error_vs_reference: max_relative_error(&o.logits, &r.logits),
                incremental_max_relative_error: o.incremental_max_relative_error,
                seconds: o.seconds,
            })
            .collect();
        let limit = if info.kind == BackendKind::Cuda {
            cuda_tf32_tolerance
        } else {
            tolerance
        };
        let pass = variants.iter().all(|v| {
            v.max_relative_error_vs_reference <= limit && v.incremental_max_relative_error <= limit
        });
        all_pass &= pass;
        for v in &variants {
            println!(
                "{:8} {:18} vs {}: {:.2e}  incremental: {:.2e}  {}",
                info.kind.name(),
                v.variant,
                reference_info.kind.name(),
                v.max_relative_error_vs_reference,
                v.incremental_max_relative_error,
                if pass { "ok" } else { "FAIL" }
            );
        }
        results.push(BackendParity {
            backend: info,
            variants,
            pass,
        });
    }
    let (git, rustc, burn) = build_facts();
    let names: Vec<&str> = results.iter().map(|r| r.backend.kind.name()).collect();
    let record = ParityRecord {
        schema: "longctx.backend-parity/1",
        description: "Tiny Llama-style model (4 layers, hidden 128, 8 query / 2 KV heads, seed 1): prefill logits of 64 tokens against the reference backend, and decode steps 40..64 against the same backend's one-shot prefill.",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        created_at: now(),
        tolerance,
        cuda_tf32_tolerance,
        notes: "CUDA f32 matmuls run on tensor cores in TF32 (cubek-matmul stages f32 operands as tf32 when the device supports it; TF32 keeps 10 mantissa bits, unit roundoff 2^-11 = 4.9e-4), so CUDA is held to cuda_tf32_tolerance and every other backend to tolerance.",
        error_measure: "max |a-b| / max |reference| over all logits",
        reference: reference_info,
        results,
        longctx_git_commit: git,
        rustc,
        burn,
    };
    let path = write_json(&out, &format!("parity-{}.json", names.join("-")), &record)?;
    println!("record: {}", path.display());
    if !all_pass {
        bail!("some backends differ from the reference by more than their tolerance ({tolerance:e}; CUDA/TF32 {cuda_tf32_tolerance:e})");
    }
    Ok(())
}

/// Arg-max of `[1, vocab]` logits, folded into the byte tokenizer's range (the benchmark model
/// has SmolLM2's vocabulary size but is fed byte-tokenizer ids).
fn greedy_byte_token<B: Backend>(logits: Tensor<B, 2>) -> u32 {
    logits
        .argmax(1)
        .into_data()
        .iter::<i64>()
        .next()
        .unwrap_or(3) as u32
        % 259
}

struct BenchJob {
    prompt_tokens: usize,
    decode_tokens: usize,
}

#[derive(Serialize)]
struct CpuBench {
    backend: BackendInfo,
    matmul_1024_gflops: f64,
    prefill_tokens_per_second: f64,
    decode_tokens_per_second: f64,
}

impl BackendJob for BenchJob {
    type Output = Result<CpuBench>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Self::Output {
        // 1024^3 matmul, best of 3 after a warm-up.
        let a = Tensor::<B, 2>::random([1024, 1024], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<B, 2>::random([1024, 1024], Distribution::Uniform(-1.0, 1.0), &device);
        let _ = a.clone().matmul(b.clone()).sum().into_scalar();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone()).sum().into_scalar();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let matmul_1024_gflops = 2.0 * 1024f64.powi(3) / best / 1e9;

        // SmolLM2-135M's shapes with random weights.
        let params = tiny(&[
            ("layers", "30"),
            ("hidden", "576"),
            ("heads", "9"),
            ("kv_heads", "3"),
            ("head_dim", "64"),
            ("intermediate", "1536"),
            ("vocab", "49152"),
            ("max_context", "8192"),
            ("rope_theta", "100000"),
        ])?;
        let model = build::<B>(&params, &device)?;
        let ids: Vec<u32> = (0..self.prompt_tokens)
            .map(|i| ((i * 37 + 11) % 250 + 3) as u32)
            .collect();
        let positions: Vec<usize> = (0..ids.len()).collect();
        let mut state = new_state(&model, ids.len())?;
        let t = Instant::now();
        let logits = model.forward(&ids, &positions, &mut state, LogitsSelection::Last)?;
        let mut next = greedy_byte_token(logits);
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for step in 0..self.decode_tokens {
            let logits = model.forward(
                &[next],
                &[ids.len() + step],
                &mut state,
                LogitsSelection::Last,
            )?;
            next = greedy_byte_token(logits);
        }
        let decode = t.elapsed().as_secs_f64();
        Ok(CpuBench {
            backend: info,
            matmul_1024_gflops,
            prefill_tokens_per_second: self.prompt_tokens as f64 / prefill,
            decode_tokens_per_second: self.decode_tokens as f64 / decode,
        })
    }
}

#[derive(Serialize)]
struct CpuBenchRecord {
    schema: &'static str,
    description: &'static str,
    command: String,
    created_at: String,
    prompt_tokens: usize,
    decode_tokens: usize,
    results: Vec<CpuBench>,
    faster: String,
    default_cpu_backend: String,
    longctx_git_commit: String,
    rustc: String,
    burn: String,
}

/// `longctx bench-cpu-backends`.
pub fn bench_cpu_backends(prompt_tokens: usize, decode_tokens: usize, out: PathBuf) -> Result<()> {
    let mut results = Vec::new();
    for kind in [BackendKind::Flex, BackendKind::Ndarray] {
        let r = run_on(
            kind,
            BenchJob {
                prompt_tokens,
                decode_tokens,
            },
        )??;
        println!(
            "{:8} matmul 1024^3 {:6.1} GFLOP/s | SmolLM2-shaped prefill {:7.1} tok/s, decode {:6.1} tok/s",
            kind.name(),
            r.matmul_1024_gflops,
            r.prefill_tokens_per_second,
            r.decode_tokens_per_second
        );
        results.push(r);
    }
    let score = |r: &CpuBench| r.prefill_tokens_per_second.ln() + r.decode_tokens_per_second.ln();
    let faster = results
        .iter()
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .map(|r| r.backend.kind.name().to_string())
        .unwrap_or_default();
    let (git, rustc, burn) = build_facts();
    let record = CpuBenchRecord {
        schema: "longctx.cpu-backends/1",
        description: "flex vs ndarray on the same work: a 1024^3 f32 matmul (best of 3) and a transformer with SmolLM2-135M's shapes (30 layers, hidden 576, 9/3 heads, vocab 49152, random f32 weights, full KV cache): one prefill and greedy decode steps. 'faster' = higher geometric mean of prefill and decode tokens/s.",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        created_at: now(),
        prompt_tokens,
        decode_tokens,
        results,
        faster,
        default_cpu_backend: DEFAULT_CPU.name().into(),
        longctx_git_commit: git,
        rustc,
        burn,
    };
    let path = write_json(&out, "cpu-backends.json", &record)?;
    println!(
        "faster: {} (default for --backend cpu: {}); record: {}",
        record.faster,
        record.default_cpu_backend,
        path.display()
    );
    Ok(())
}
