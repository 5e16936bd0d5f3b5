//! `longctx`: measure what long-context methods give and what they cost.

mod backends_check;
mod bench_perf;
mod commands;
mod export;
mod grid;
mod param_flags;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use longctx_backend::BackendKind;
use longctx_core::Budget;

#[derive(Parser)]
#[command(
    name = "longctx",
    version,
    about = "Benchmark long-context LLM methods (KV-cache compression, token dropping, prompt compression) on real models, on CPU, WGPU or CUDA.",
    after_help = "`run` and `generate` also take any parameter of the chosen task, method or model as `--NAME VALUE` (e.g. `--lengths 1000,2000 --bits 2`); see `longctx list`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Model, method and budget selection shared by `generate` and `run`.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Registered model name (see `longctx list`).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Model parameter as name=value (repeatable), e.g. --model-param seed=3.
    #[arg(long = "model-param", value_name = "NAME=VALUE")]
    pub model_params: Vec<String>,
    /// Registered KV method name (see `longctx list`).
    #[arg(long, default_value = "full")]
    pub method: String,
    /// Method parameter as name=value (repeatable).
    #[arg(long = "method-param", value_name = "NAME=VALUE")]
    pub method_params: Vec<String>,
    /// KV budget: unlimited, <r>x (ratio of the prompt length, e.g. 4x), <n>tok, <n>B, <n>KiB, <n>MiB.
    #[arg(long, default_value = "unlimited")]
    pub budget: Budget,
    /// Backend: cpu (the faster CPU backend, flex), flex, ndarray, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// Largest prefill chunk in tokens regardless of the method (bounds activation memory).
    #[arg(long)]
    pub max_prefill_chunk: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// List registered models, KV methods (with parameters and defaults) and tasks.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Generate text from a prompt, streaming tokens to standard output.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Sampling temperature; 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling threshold (with --temperature > 0).
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Seed of the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap the prompt in the model's chat template (e.g. ChatML for SmolLM2) as one user
        /// turn; `--chat false` feeds the raw text. Models without a template ignore it.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        chat: bool,
    },
    /// Download a pretrained model's weights (e.g. `smollm2-135m`, `gemma3-270m`) or a data set
    /// (`essays`, `ruler-words`) into the cache.
    Fetch {
        /// Registered model name (see `longctx list`), or a data set: essays, ruler-words.
        model: String,
        /// Model parameter as name=value (repeatable), e.g. --model-param cache_dir=/data.
        #[arg(long = "model-param", value_name = "NAME=VALUE")]
        model_params: Vec<String>,
    },
    /// Run one model x method x task cell and write its JSON record.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// Registered task name (see `longctx list`).
        #[arg(long, default_value = "passkey")]
        task: String,
        /// Task parameter as name=value (repeatable), e.g. --task-param lengths=512,1024.
        #[arg(long = "task-param", value_name = "NAME=VALUE")]
        task_params: Vec<String>,
        /// Directory the record is written under (<out>/<task>/...json).
        #[arg(long, default_value = "results/runs")]
        out: PathBuf,
        /// Run again even if a record of this exact configuration exists (it is replaced).
        #[arg(long)]
        force: bool,
        /// Print one line per sample.
        #[arg(long)]
        verbose: bool,
    },
    /// Run every cell of a study file (TOML: models x methods x budgets x tasks x backends x
    /// seeds) that has no record yet, one after another; a cell's record is the one `longctx
    /// run` would write, and an interrupted cell resumes from its finished samples.
    Grid {
        /// The study file (see studies/example.toml).
        file: PathBuf,
        /// Directory the records are written under (default: the study's `out`, else results/runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only shard I of N (numbered from 1): cells sorted by hash, the k-th (from 0) to
        /// shard k % N + 1.
        #[arg(long, value_name = "I/N")]
        shard: Option<longctx_grid::Shard>,
        /// No progress bars: one line per finished cell.
        #[arg(long)]
        quiet: bool,
        /// List the cells (hash, state, record path) and run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Prefill every cell's prompts for that cell alone. By default the cells that differ
        /// only in a method (and budget) that compresses after prefill share each prompt's
        /// prefill; the records are the same up to timing (an A/B check).
        #[arg(long)]
        no_share: bool,
        /// Methods one shared prefill feeds at most (each holds its own copy of the prompt's
        /// KV during prefill); more run in groups of this size, one after another. Overrides
        /// the study's `max_shared`; default 4.
        #[arg(long, value_name = "N")]
        max_shared: Option<usize>,
    },
    /// Render tables and needle heatmaps (length x depth, SVG and PNG) from the run records
    /// under a directory; runs no model.
    Report {
        /// Directory searched (recursively) for run records.
        #[arg(default_value = "results/runs")]
        records: PathBuf,
        /// Directory the report (report.md, heatmaps/) is written to.
        #[arg(long, default_value = "results/report")]
        out: PathBuf,
    },
    /// Export the run records under a directory: a flat CSV (one row per record; pandas-ready)
    /// and/or lm-evaluation-harness-style results and samples files; runs no model. Without
    /// --csv or --lm-eval, the CSV goes to standard output.
    Export {
        /// Directory searched (recursively) for run records.
        #[arg(default_value = "results/runs")]
        records: PathBuf,
        /// Write the CSV to this file (`-`: standard output).
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Write results_<timestamp>.json and samples_<task>_<timestamp>.jsonl per record under
        /// DIR/<task>/<record>/.
        #[arg(long = "lm-eval", value_name = "DIR")]
        lm_eval: Option<PathBuf>,
    },
    /// Check that backends agree: tiny-model logits and incremental decoding against a reference
    /// backend; writes a JSON record.
    CheckBackends {
        /// Backends to check, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "ndarray,wgpu")]
        backends: Vec<BackendKind>,
        /// Reference backend.
        #[arg(long, default_value = "flex")]
        reference: BackendKind,
        /// Largest accepted relative error (every backend but CUDA).
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Largest accepted relative error on CUDA, whose f32 matmuls run in TF32 on tensor cores.
        #[arg(long, default_value_t = 2e-3)]
        cuda_tf32_tolerance: f64,
        /// Directory the record is written to.
        #[arg(long, default_value = "results/backends")]
        out: PathBuf,
    },
    /// Measure the CPU backends (flex, ndarray) on the same work: a 1024^3 matmul and a
    /// SmolLM2-135M-shaped transformer's prefill and decode. Writes a JSON record.
    BenchCpuBackends {
        /// Prompt tokens for the prefill measurement.
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        /// Decode steps measured after the prefill.
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Directory the record is written to.
        #[arg(long, default_value = "results/backends")]
        out: PathBuf,
    },
    /// Measure prefill and decode speed and peak memory of a model (full KV cache) at several
    /// prompt lengths, beside peers (llama.cpp, transformers + PyTorch) run in the same
    /// invocation on the same GGUF and prompt ids. Writes a JSON record.
    BenchPerf {
        /// Registered model name; its weights must be a GGUF file for the peers to run.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Model parameter as name=value (repeatable).
        #[arg(long = "model-param", value_name = "NAME=VALUE")]
        model_params: Vec<String>,
        /// Backend: cpu, flex, ndarray, wgpu or cuda.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Prompt lengths in tokens, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "512,2048,8000")]
        lengths: Vec<usize>,
        /// Tokens decoded after each prompt.
        #[arg(long, default_value_t = 64)]
        decode_tokens: usize,
        /// Timed runs per length after one warm-up; the best is kept.
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        /// Prefill the prompt in chunks of at most this many tokens (each chunk attends to the
        /// cache so far, so the result is the same); bounds attention's `T x T` memory. Peers
        /// always prefill in one pass.
        #[arg(long)]
        prefill_chunk: Option<usize>,
        /// CPU threads for longctx and the peers (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Peers, comma-separated (llama.cpp, transformers, transformers-eager,
        /// transformers-static); default: llama.cpp,transformers on CPU backends,
        /// transformers,transformers-static on cuda. `--peers none` runs none.
        #[arg(long, value_delimiter = ',')]
        peers: Option<Vec<String>>,
        /// Folder of the peer scripts.
        #[arg(long, default_value = "crates/bench/peers")]
        peers_dir: PathBuf,
        /// Directory the record is written to.
        #[arg(long, default_value = "results/perf")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    // `--NAME VALUE` options that `run`/`generate` do not declare are parameter shorthands,
    // routed to the task, method or model that declares NAME.
    let (argv, param_flags) = param_flags::split_param_flags(
        &Cli::command(),
        std::env::args().collect(),
        &["run", "generate"],
    );
    let cli = Cli::parse_from(argv);
    let result = match cli.command {
        Command::List { json } => commands::list(json),
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            chat,
        } => commands::generate(
            model,
            &param_flags,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            chat,
        ),
        Command::Fetch {
            model,
            model_params,
        } => commands::fetch(&model, &model_params),
        Command::Run {
            model,
            task,
            task_params,
            out,
            force,
            verbose,
        } => commands::run(model, task, task_params, &param_flags, out, force, verbose),
        Command::Grid {
            file,
            out,
            shard,
            quiet,
            dry_run,
            no_share,
            max_shared,
        } => grid::grid(grid::GridArgs {
            file,
            out,
            shard,
            quiet,
            dry_run,
            no_share,
            max_shared,
        }),
        Command::Report { records, out } => commands::report(&records, &out),
        Command::Export {
            records,
            csv,
            lm_eval,
        } => export::export(&records, csv.as_deref(), lm_eval.as_deref()),
        Command::CheckBackends {
            backends,
            reference,
            tolerance,
            cuda_tf32_tolerance,
            out,
        } => {
            backends_check::check_backends(backends, reference, tolerance, cuda_tf32_tolerance, out)
        }
        Command::BenchCpuBackends {
            prompt_tokens,
            decode_tokens,
            out,
        } => backends_check::bench_cpu_backends(prompt_tokens, decode_tokens, out),
        Command::BenchPerf {
            model,
            model_params,
            backend,
            lengths,
            decode_tokens,
            repeats,
            prefill_chunk,
            threads,
            peers,
            peers_dir,
            out,
        } => bench_perf::bench_perf(bench_perf::BenchPerfArgs {
            model,
            model_params,
            backend,
            lengths,
            decode_tokens,
            repeats,
            prefill_chunk,
            threads,
            peers: peers.map(|p| p.into_iter().filter(|n| n != "none").collect()),
            peers_dir,
            out,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
