//! `longctx bench-perf`: our prefill/decode speed and peak memory beside peers run in the same
//! invocation on the same machine, GGUF and prompt ids; one JSON record under `results/perf/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use longctx_backend::{run_on, BackendKind};
use longctx_bench::{
    machine_info, run_peer, write_prompt_ids, MachineInfo, PeerReport, PeerSpec, PerfConfig,
    PerfJob, PerfResult,
};
use longctx_harness::Provenance;

/// The peers `--peers` accepts.
pub const PEERS: &[&str] = &[
    "llama.cpp",
    "transformers",
    "transformers-eager",
    "transformers-static",
];

/// What `bench-perf` was asked to do.
pub struct BenchPerfArgs {
    pub model: String,
    pub model_params: Vec<String>,
    pub backend: BackendKind,
    pub lengths: Vec<usize>,
    pub decode_tokens: usize,
    pub repeats: usize,
    pub prefill_chunk: Option<usize>,
    pub threads: Option<usize>,
    pub peers: Option<Vec<String>>,
    pub peers_dir: PathBuf,
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Comparison {
    peer: String,
    prompt_tokens: usize,
    /// Ours divided by the peer's (above 1 = we are faster).
    prefill_ratio: f64,
    decode_ratio: f64,
    /// Ours divided by the peer's peak memory (below 1 = we use less).
    peak_memory_ratio: Option<f64>,
}

#[derive(Serialize)]
struct PerfRecord {
    schema: &'static str,
    command: String,
    /// The `CUBECL_*` and `LONGCTX_*` environment variables the run saw (autotune level,
    /// fusion on or off, ...): they change the figures but are not on the command line.
    environment: BTreeMap<String, String>,
    created_at: String,
    machine: MachineInfo,
    threads: Option<usize>,
    longctx: PerfResult,
    provenance: Provenance,
    peers: Vec<PeerReport>,
    comparisons: Vec<Comparison>,
}

/// The default peers for a backend: llama.cpp and transformers on CPUs, transformers' dynamic
/// and static-cache paths on CUDA, none elsewhere.
fn default_peers(kind: BackendKind) -> Vec<String> {
    let names: &[&str] = match kind {
        BackendKind::Cpu | BackendKind::Flex | BackendKind::Ndarray => {
            &["llama.cpp", "transformers"]
        }
        BackendKind::Cuda => &["transformers", "transformers-static"],
        BackendKind::Wgpu => &[],
    };
    names.iter().map(|s| s.to_string()).collect()
}

fn peer_spec(
    name: &str,
    on_gpu: bool,
    threads: Option<usize>,
    dir: &Path,
    decode: usize,
) -> PeerSpec {
    let mut args = vec!["--decode".to_string(), decode.to_string()];
    let threads_arg = |args: &mut Vec<String>| {
        if let Some(t) = threads {
            args.extend(["--threads".into(), t.to_string()]);
        }
    };
    let script = if name == "llama.cpp" {
        threads_arg(&mut args);
        if on_gpu {
            args.extend(["--n-gpu-layers".into(), "999".into()]);
        }
        "llamacpp_peer.py"
    } else {
        let (attn, cache) = match name {
            "transformers-eager" => ("eager", "dynamic"),
            "transformers-static" => ("sdpa", "static"),
            _ => ("sdpa", "dynamic"),
        };
        let (device, dtype) = if on_gpu {
            ("cuda", "bfloat16")
        } else {
            ("cpu", "float32")
        };
        threads_arg(&mut args);
        args.extend(
            [
                "--device", device, "--dtype", dtype, "--attn", attn, "--cache", cache,
            ]
            .map(String::from),
        );
        "transformers_peer.py"
    };
    let label = if name.starts_with("transformers") {
        format!("{name} ({})", if on_gpu { "cuda bf16" } else { "cpu f32" })
    } else {
        name.to_string()
    };
    PeerSpec {
        label,
        script: dir.join(script),
        args,
    }
}

fn slug(text: &str) -> String {
    let s: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Runs the benchmark and writes `<out>/<model>__<backend>__<machine>__<date>.json` (with
/// `-2`, `-3`, ... after the date when that name is taken: earlier records are never replaced).
pub fn bench_perf(args: BenchPerfArgs) -> Result<()> {
    let peers = args
        .peers
        .clone()
        .unwrap_or_else(|| default_peers(args.backend));
    for p in &peers {
        if !PEERS.contains(&p.as_str()) {
            bail!("unknown peer '{p}'; valid peers: {}", PEERS.join(", "));
        }
    }
    if args.prefill_chunk == Some(0) {
        bail!("--prefill-chunk must be at least 1 token");
    }
    if let Some(t) = args.threads {
        // burn's CPU backends parallelise with rayon's global pool.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let started_at = crate::backends_check::now();
    let model_params = longctx_core::params::parse_assignments(&args.model_params)?;
    let ours = run_on(
        args.backend,
        PerfJob {
            config: PerfConfig {
                model: args.model.clone(),
                model_params,
                lengths: args.lengths.clone(),
                decode_tokens: args.decode_tokens,
                repeats: args.repeats,
                prefill_chunk: args.prefill_chunk,
            },
        },
    )??;
    let info = ours.backend.clone();
    let gguf = PathBuf::from(&ours.model_source);
    let scratch = std::env::temp_dir().join(format!("longctx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| scratch.display().to_string())?;
    let ids_file = scratch.join("prompt-ids.json");
    write_prompt_ids(&ids_file, &args.lengths, ours.vocab_size)?;
    let on_gpu = matches!(args.backend, BackendKind::Cuda | BackendKind::Wgpu);
    let mut reports = Vec::new();
    for name in &peers {
        if !gguf.is_file() {
            eprintln!(
                "peers skipped: the model is not a GGUF file ({})",
                ours.model_source
            );
            break;
        }
        let spec = peer_spec(
            name,
            on_gpu,
            args.threads,
            &args.peers_dir,
            args.decode_tokens,
        );
        let report = run_peer(&spec, &gguf, &ids_file, &scratch);
        if let Some(e) = &report.error {
            eprintln!("peer {} did not run: {e}", spec.label);
        }
        reports.push(report);
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let mut comparisons = Vec::new();
    println!(
        "\n{:<34} {:>7} {:>12} {:>10} {:>11}",
        "implementation", "tokens", "prefill t/s", "decode t/s", "peak MiB"
    );
    let mib = |b: Option<u64>| {
        b.map(|b| format!("{:.0}", b as f64 / 1048576.0))
            .unwrap_or("-".into())
    };
    for row in &ours.rows {
        println!(
            "{:<34} {:>7} {:>12.1} {:>10.1} {:>11}",
            format!("longctx ({})", info.kind.name()),
            row.prompt_tokens,
            row.prefill_tokens_per_s,
            row.decode_tokens_per_s,
            mib(row.peak_memory_bytes)
        );
        for report in &reports {
            let Some(peer) = report
                .rows
                .iter()
                .find(|r| r.prompt_tokens == row.prompt_tokens)
            else {
                continue;
            };
            println!(
                "{:<34} {:>7} {:>12.1} {:>10.1} {:>11}",
                report.label,
                peer.prompt_tokens,
                peer.prefill_tokens_per_s,
                peer.decode_tokens_per_s,
                mib(peer.peak_memory_bytes)
            );
            comparisons.push(Comparison {
                peer: report.label.clone(),
                prompt_tokens: row.prompt_tokens,
                prefill_ratio: row.prefill_tokens_per_s / peer.prefill_tokens_per_s,
                decode_ratio: row.decode_tokens_per_s / peer.decode_tokens_per_s,
                peak_memory_ratio: match (row.peak_memory_bytes, peer.peak_memory_bytes) {
                    (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
                    _ => None,
                },
            });
        }
    }
    let machine = machine_info();
    let machine_name = if on_gpu {
        machine.gpus.first().cloned().unwrap_or_default()
    } else {
        format!("{} {}cpu", machine.cpu, machine.logical_cpus)
    };
    let stem = format!(
        "{}__{}__{}__{}",
        slug(&args.model),
        info.kind.name(),
        slug(machine_name.split(',').next().unwrap_or("")),
        &started_at[..started_at.len().min(10)]
    );
    let file = unused_name(&args.out, &stem);
    let mut provenance = Provenance::collect(info, Default::default(), String::new(), started_at);
    provenance.finished_at = crate::backends_check::now();
    let record = PerfRecord {
        schema: "longctx.perf/1",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        environment: settings_environment(std::env::vars()),
        created_at: crate::backends_check::now(),
        machine,
        threads: args.threads,
        longctx: ours,
        provenance,
        peers: reports,
        comparisons,
    };
    let path = crate::backends_check::write_json(&args.out, &file, &record)?;
    println!("record: {}", path.display());
    Ok(())
}

/// The variables among `vars` that tune the backends: `CUBECL_*` and `LONGCTX_*`.
fn settings_environment(vars: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    vars.filter(|(k, _)| k.starts_with("CUBECL_") || k.starts_with("LONGCTX_"))
        .collect()
}

/// `<stem>.json`, or `<stem>-2.json`, `<stem>-3.json`, ... : the first name not yet in `dir`.
fn unused_name(dir: &std::path::Path, stem: &str) -> String {
    (1..)
        .map(|n| match n {
            1 => format!("{stem}.json"),
            n => format!("{stem}-{n}.json"),
        })
        .find(|name| !dir.join(name).exists())
        .expect("some numbered name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_never_replace_an_earlier_record() {
        let dir = std::env::temp_dir().join(format!("longctx-perf-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            unused_name(&dir, "m__cpu__x__2026-12-06"),
            "m__cpu__x__2026-12-06.json"
        );
        std::fs::write(dir.join("m__cpu__x__2026-12-06.json"), "{}").unwrap();
        assert_eq!(
            unused_name(&dir, "m__cpu__x__2026-12-06"),
            "m__cpu__x__2026-12-06-2.json"
        );
        std::fs::write(dir.join("m__cpu__x__2026-12-06-2.json"), "{}").unwrap();
        assert_eq!(
            unused_name(&dir, "m__cpu__x__2026-12-06"),
            "m__cpu__x__2026-12-06-3.json"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_keep_the_backend_settings_from_the_environment() {
        let vars = [
            ("CUBECL_AUTOTUNE_LEVEL", "minimal"),
            ("LONGCTX_CUDA_FUSION", "0"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let kept = settings_environment(vars.into_iter());
        assert_eq!(kept.len(), 2);
        assert_eq!(kept["LONGCTX_CUDA_FUSION"], "0");
        assert!(!kept.contains_key("HOME"));
    }

    #[test]
    fn default_peers_are_known_and_machine_slugs_are_file_names() {
        for kind in [BackendKind::Flex, BackendKind::Cuda, BackendKind::Wgpu] {
            for p in default_peers(kind) {
                assert!(PEERS.contains(&p.as_str()), "{p}");
            }
        }
        assert_eq!(slug("NVIDIA H100 80GB HBM3"), "nvidia-h100-80gb-hbm3");
        assert_eq!(slug("AMD EPYC 9B14 2cpu"), "amd-epyc-9b14-2cpu");
        let spec = peer_spec("transformers-static", true, None, Path::new("p"), 64);
        assert!(spec.args.windows(2).any(|w| w == ["--cache", "static"]));
        assert!(spec.args.windows(2).any(|w| w == ["--device", "cuda"]));
    }
}
