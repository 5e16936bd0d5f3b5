use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use longctx_backend::{BackendInfo, BackendKind};
use longctx_core::{
    Budget, Error, LayerSpec, Params, RawParams, Registry, Result, Sample, TextTokenizer,
};
use longctx_engine::{
    generate_shared, score_continuation_shared, GenerationConfig, GenerationResult, Sampling,
};

use crate::provenance::Provenance;
use crate::record::{Aggregate, MemorySummary, RecordKind, RunRecord, SampleRecord, TimingSummary};

/// A named component with its validated parameters (defaults filled in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub params: Params,
}

/// The full configuration of one cell; its hash names the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellConfig {
    pub model: Component,
    pub method: Component,
    pub budget: Budget,
    pub task: Component,
    /// The concrete backend (`cpu` already resolved).
    pub backend: BackendKind,
    pub sampling: Sampling,
    pub max_prefill_chunk: Option<usize>,
}

impl CellConfig {
    /// Validates every name and parameter against `registry`.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve<B: Backend>(
        registry: &Registry<B>,
        model: (&str, &RawParams),
        method: (&str, &RawParams),
        budget: Budget,
        task: (&str, &RawParams),
        backend: BackendKind,
        sampling: Sampling,
        max_prefill_chunk: Option<usize>,
    ) -> Result<Self> {
        let method_params = registry.method_params(method.0, method.1)?;
        // A budget given to a method that keeps everything (full, quantization) would be
        // silently ignored and still name the record: refuse it.
        let capabilities = registry
            .build_method(method.0, &method_params)?
            .capabilities();
        if budget.is_limited() && !capabilities.uses_budget {
            return Err(Error::Budget(format!(
                "method '{}' takes no budget (what it keeps follows from its parameters); \
                 drop --budget {budget} or use --budget unlimited",
                method.0
            )));
        }
        Ok(Self {
            model: Component {
                name: model.0.into(),
                params: registry.model_params(model.0, model.1)?,
            },
            method: Component {
                name: method.0.into(),
                params: method_params,
            },
            budget,
            task: Component {
                name: task.0.into(),
                params: registry.task_params(task.0, task.1)?,
            },
            backend: backend.resolve(),
            sampling,
            max_prefill_chunk,
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the configuration's canonical JSON (maps are ordered, so equal configs hash equal).
pub fn config_hash(config: &CellConfig) -> String {
    sha256_hex(&serde_json::to_vec(config).expect("a config always serialises"))
}

/// `<dir>/<task>/<model>__<method>__<budget>__<backend>__<hash12>.json`.
pub fn record_path(dir: &Path, config: &CellConfig) -> PathBuf {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    dir.join(clean(&config.task.name)).join(format!(
        "{}__{}__{}__{}__{}.json",
        clean(&config.model.name),
        clean(&config.method.name),
        clean(&config.budget.to_string()),
        config.backend,
        &config_hash(config)[..12]
    ))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// How many tokens at the end of `prompt` (the ids of `prompt_text`) belong to the question:
/// everything from the question's first character on (question, chat-template end, answer
/// prefix). The text before the question is encoded alone; where its ids are not a prefix of
/// the prompt's (a merge across the boundary), the common prefix decides.
pub fn question_token_count(
    sample: &Sample,
    tokenizer: &dyn TextTokenizer,
    prompt_text: &str,
    prompt: &[u32],
) -> Result<usize> {
    if sample.question.is_empty() {
        return Ok(0);
    }
    let Some(start) = prompt_text.rfind(&sample.question) else {
        return Ok(0);
    };
    let before = tokenizer.encode(&prompt_text[..start], true)?;
    let common = before
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    Ok(prompt.len() - common)
}

/// The text a sample's prompt is encoded from: with the model's chat template around
/// instruction, context and question when the sample asks for it and the model has one (the
/// answer prefix then follows the template), else [`Sample::prompt`].
pub fn prompt_text(sample: &Sample, tokenizer: &dyn TextTokenizer) -> String {
    if sample.chat_template {
        let message = format!(
            "{}{}{}",
            sample.instruction, sample.context, sample.question
        );
        if let Some(chat) = tokenizer.chat_prompt(&message) {
            return format!("{chat}{}", sample.answer_prefix);
        }
    }
    sample.prompt()
}

/// Runs every sample of the cell on `device` and returns the record (not yet written).
/// `progress` receives one line per finished sample. Nothing is persisted; see
/// [`run_cell_resumable`] for the crash-safe form.
pub fn run_cell<B: Backend>(
    registry: &Registry<B>,
    config: &CellConfig,
    device: &B::Device,
    backend: BackendInfo,
    progress: &mut dyn FnMut(&str),
) -> Result<RunRecord> {
    run_cell_inner(registry, config, device, backend, None, &mut |p| {
        progress(p.line)
    })
}

/// One finished (or resumed) sample of a cell, for progress displays.
#[derive(Clone, Copy, Debug)]
pub struct SampleProgress<'a> {
    /// Samples of the cell finished so far, this one included.
    pub done: usize,
    /// Samples of the cell.
    pub total: usize,
    /// Whether this sample was read back from the partial file instead of run.
    pub resumed: bool,
    /// A one-line summary (prompt tokens, speeds, scores).
    pub line: &'a str,
}

/// Runs the cell crash-safely and writes its record to `path` (usually [`record_path`]).
///
/// Each finished sample is appended to [`partial_path`]`(path)` at once (one JSON
/// [`SampleRecord`] per line after a header line holding the config hash, flushed and synced),
/// so a crash or `kill -9` loses at most the sample in flight. When a partial file of the same
/// configuration (and the same generated samples) exists, its samples are taken as they are and
/// only the others run; a truncated last line is ignored. A partial file of another
/// configuration or data set is discarded and replaced. The final record is written atomically,
/// then the partial file is deleted. The record's `started_at` is the first attempt's;
/// `wall_seconds` counts only the last process.
pub fn run_cell_resumable<B: Backend>(
    registry: &Registry<B>,
    config: &CellConfig,
    device: &B::Device,
    backend: BackendInfo,
    path: &Path,
    progress: &mut dyn FnMut(&SampleProgress),
) -> Result<RunRecord> {
    remove_stale_temporaries(path);
    let partial = partial_path(path);
    let record = run_cell_inner(registry, config, device, backend, Some(&partial), progress)?;
    crate::write_record_atomically(path, &record)?;
    match std::fs::remove_file(&partial) {
        Ok(()) => Ok(record),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(record),
        Err(e) => Err(Error::io(&partial, e)),
    }
}

/// Removes the temporary files a killed process left beside `record`: `<record>.tmp.<pid>`
/// (an atomic record write cut short) and `<partial file>.tmp.<pid>` (a partial file's). Only
/// the process that runs the cell calls it, before running it.
pub fn remove_stale_temporaries(record: &Path) {
    let (Some(dir), Some(name)) = (record.parent(), record.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let prefixes = [format!("{name}.tmp."), format!("{name}.partial.jsonl.tmp.")];
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if prefixes.iter().any(|p| file.starts_with(p.as_str())) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `<record path>.partial.jsonl`: the samples of a cell in progress.
pub fn partial_path(record: &Path) -> PathBuf {
    let mut name = record.as_os_str().to_os_string();
    name.push(".partial.jsonl");
    PathBuf::from(name)
}

/// Schema of the partial file's header line.
pub const PARTIAL_SCHEMA: &str = "longctx.partial/1";

/// The first line of a partial file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialHeader {
    /// [`PARTIAL_SCHEMA`].
    pub schema: String,
    /// [`config_hash`] of the cell; a partial file of another hash is never used.
    pub config_hash: String,
    /// The task's generated samples (as in the record's provenance); a partial file made from
    /// other data is never used.
    pub dataset_sha256: String,
    /// When the first attempt started.
    pub started_at: String,
}

/// The samples of a partial file whose header matches `header` (`started_at` aside), and its
/// header's `started_at`: `None` when the file is missing, unreadable or of another cell.
/// Reading stops at the first line that does not parse (a write cut short).
pub fn read_partial(path: &Path, header: &PartialHeader) -> Option<(String, Vec<SampleRecord>)> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let mut lines = text.split_inclusive('\n');
    let first: PartialHeader = serde_json::from_str(lines.next()?.trim_end()).ok()?;
    if first.schema != header.schema
        || first.config_hash != header.config_hash
        || first.dataset_sha256 != header.dataset_sha256
    {
        return None;
    }
    let mut samples = Vec::new();
    for line in lines {
        // A line without its newline was cut short, even if it parses.
        let Some(line) = line.strip_suffix('\n') else {
            break;
        };
        match serde_json::from_str::<SampleRecord>(line) {
            Ok(s) => samples.push(s),
            Err(_) => break,
        }
    }
    Some((first.started_at, samples))
}

/// Appends samples to a partial file, one synced line each.
struct PartialWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl PartialWriter {
    /// (Re)writes the file with `header` and `samples` (atomically), then opens it to append.
    fn create(path: &Path, header: &PartialHeader, samples: &[SampleRecord]) -> Result<Self> {
        let mut text = json_line(header)?;
        for s in samples {
            text += &json_line(s)?;
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn append(&mut self, sample: &SampleRecord) -> Result<()> {
        let line = json_line(sample)?;
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// One JSON line of `value`.
fn json_line<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map(|s| s + "\n")
        .map_err(|e| Error::Other(format!("serialising: {e}")))
}

fn run_cell_inner<B: Backend>(
    registry: &Registry<B>,
    config: &CellConfig,
    device: &B::Device,
    backend: BackendInfo,
    partial: Option<&Path>,
    progress: &mut dyn FnMut(&SampleProgress),
) -> Result<RunRecord> {
    let cell = GroupCell {
        config,
        partial: partial.map(Path::to_path_buf),
    };
    // One cell alone: its prefill is shared with nothing, as `generate` runs it.
    run_cells_inner(registry, &[cell], device, backend, 1, &mut |_, p| {
        progress(p)
    })
    .pop()
    .expect("one result per cell")
}

/// Runs cells that differ only in method and budget (`longctx grid`'s sharing groups) crash-safely,
/// sample by sample, and writes each one's record to its path (usually [`record_path`]): the same
/// records [`run_cell_resumable`] writes for each of them, timing aside. Each sample's context
/// is prefilled once for every cell whose method can share it (see
/// `longctx_engine::generate_shared`; at most `max_shared` methods per prefill), and each cell
/// keeps its own partial file, so resume works per cell and per sample: a cell resumes from its
/// finished samples, and a sample runs only for the cells that lack it. One result per cell, in
/// order; a cell that fails (its error, or one of the prompt's that all share) keeps its
/// finished samples in its partial file, and the others go on. `progress` receives the cell's
/// index with each finished sample.
pub fn run_cells_shared_resumable<B: Backend>(
    registry: &Registry<B>,
    cells: &[(CellConfig, PathBuf)],
    device: &B::Device,
    backend: BackendInfo,
    max_shared: usize,
    progress: &mut dyn FnMut(usize, &SampleProgress),
) -> Vec<Result<RunRecord>> {
    if let Some((first, _)) = cells.first() {
        let key = |c: &CellConfig| CellConfig {
            method: Component {
                name: String::new(),
                params: Params {
                    owner: String::new(),
                    values: BTreeMap::new(),
                },
            },
            budget: Budget::Unlimited,
            ..c.clone()
        };
        if cells.iter().any(|(c, _)| key(c) != key(first)) {
            return cells
                .iter()
                .map(|_| {
                    Err(Error::InvalidInput(
                        "cells run together must differ only in method and budget".into(),
                    ))
                })
                .collect();
        }
    }
    for (_, path) in cells {
        remove_stale_temporaries(path);
    }
    let group: Vec<GroupCell> = cells
        .iter()
        .map(|(config, path)| GroupCell {
            config,
            partial: Some(partial_path(path)),
        })
        .collect();
    run_cells_inner(registry, &group, device, backend, max_shared, progress)
        .into_iter()
        .zip(cells)
        .map(|(record, (_, path))| {
            let record = record?;
            crate::write_record_atomically(path, &record)?;
            let partial = partial_path(path);
            match std::fs::remove_file(&partial) {
                Ok(()) => Ok(record),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(record),
                Err(e) => Err(Error::io(&partial, e)),
            }
        })
        .collect()
}

/// One cell of [`run_cells_inner`].
struct GroupCell<'a> {
    config: &'a CellConfig,
    /// Its partial file, when it runs crash-safely.
    partial: Option<PathBuf>,
}

/// A running cell: its method and resume state.
type CellRun<B> = (Box<dyn longctx_core::KvMethod<B>>, Resume);

/// A cell's resume state: the samples a previous attempt finished, by id, and the writer of
/// its partial file.
struct Resume {
    started_at: String,
    resumed: BTreeMap<String, SampleRecord>,
    writer: Option<PartialWriter>,
}

impl Resume {
    /// Reads `partial` (when given) for `config`'s samples, and rewrites it with what it keeps.
    fn open(
        partial: Option<&Path>,
        config: &CellConfig,
        dataset_sha256: &str,
        samples: &[Sample],
    ) -> Result<Self> {
        let mut started_at = now_rfc3339();
        // Samples a previous attempt finished, by id (only when ids are unique).
        let mut resumed: BTreeMap<String, SampleRecord> = BTreeMap::new();
        let mut writer = None;
        if let Some(path) = partial {
            let header = PartialHeader {
                schema: PARTIAL_SCHEMA.into(),
                config_hash: config_hash(config),
                dataset_sha256: dataset_sha256.to_string(),
                started_at: started_at.clone(),
            };
            let ids: std::collections::BTreeSet<&str> =
                samples.iter().map(|s| s.id.as_str()).collect();
            let mut kept = Vec::new();
            if ids.len() == samples.len() {
                if let Some((first_started, done)) = read_partial(path, &header) {
                    started_at = first_started;
                    for s in done {
                        if ids.contains(s.id.as_str()) && !resumed.contains_key(&s.id) {
                            kept.push(s.clone());
                            resumed.insert(s.id.clone(), s);
                        }
                    }
                }
            }
            let header = PartialHeader {
                started_at: started_at.clone(),
                ..header
            };
            writer = Some(PartialWriter::create(path, &header, &kept)?);
        }
        Ok(Self {
            started_at,
            resumed,
            writer,
        })
    }
}

/// SHA-256 over the samples' prompt texts, references and continuations, in order.
fn dataset_sha256(samples: &[Sample], tokenizer: &dyn TextTokenizer) -> String {
    let mut dataset = Sha256::new();
    for s in samples {
        dataset.update(prompt_text(s, tokenizer).as_bytes());
        for r in &s.references {
            dataset.update(r.as_bytes());
        }
        if let Some(c) = &s.continuation {
            dataset.update(c.as_bytes());
        }
    }
    dataset
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One sample's outcome for one method: the engine's result, the prediction and the scores.
type Outcome = (GenerationResult, String, BTreeMap<String, f64>);

/// Runs `sample` for every `(method, budget)` (a prefill shared among up to `max_shared` of
/// them), scored by `task`. The prompt's ids come back beside one outcome per method.
#[allow(clippy::too_many_arguments)]
fn run_sample<B: Backend>(
    model: &dyn longctx_core::CausalLm<B>,
    members: &[(&dyn longctx_core::KvMethod<B>, Budget)],
    sample: &Sample,
    prompt_text: &str,
    tokenizer: &dyn TextTokenizer,
    task: &dyn longctx_core::Task,
    config: &CellConfig,
    max_shared: usize,
) -> Result<(Vec<u32>, Vec<Result<Outcome>>)> {
    let prompt = tokenizer.encode(prompt_text, true)?;
    let outcomes = match &sample.continuation {
        // Likelihood sample: score the given text under teacher forcing.
        Some(text) => {
            let target = tokenizer.encode(text, false)?;
            score_continuation_shared(
                model,
                members,
                &prompt,
                &target,
                config.max_prefill_chunk,
                max_shared,
            )
            .into_iter()
            .map(|scored| {
                let scored = scored?;
                let scores = BTreeMap::from([
                    ("nll".to_string(), scored.mean_nll()),
                    ("perplexity".to_string(), scored.perplexity()),
                    (
                        "token_accuracy".to_string(),
                        scored.argmax_hits as f64 / target.len().max(1) as f64,
                    ),
                ]);
                Ok((scored.generation, String::new(), scores))
            })
            .collect()
        }
        None => {
            let gen_config = GenerationConfig {
                max_new_tokens: sample.max_new_tokens,
                sampling: config.sampling,
                stop_tokens: tokenizer.stop_tokens(),
                max_prefill_chunk: config.max_prefill_chunk,
                question_tokens: question_token_count(sample, tokenizer, prompt_text, &prompt)?,
            };
            generate_shared(model, members, &prompt, &gen_config, max_shared)
                .into_iter()
                .map(|out| {
                    let out = out?;
                    let prediction = tokenizer.decode(&out.tokens)?;
                    let scores = task.score(sample, &prediction);
                    Ok((out, prediction, scores))
                })
                .collect()
        }
    };
    Ok((prompt, outcomes))
}

/// The record of one sample's outcome.
fn sample_record(
    sample: &Sample,
    prompt_text: &str,
    prompt: &[u32],
    (out, prediction, scores): Outcome,
) -> SampleRecord {
    SampleRecord {
        id: sample.id.clone(),
        metadata: sample.metadata.clone(),
        prompt_tokens: prompt.len(),
        prompt_sha256: sha256_hex(prompt_text.as_bytes()),
        references: sample.references.clone(),
        prediction,
        generated_tokens: out.tokens.len(),
        scores,
        prefill_seconds: out.prefill_seconds,
        prefill_tokens_per_second: out.prefill_tokens_per_second(),
        decode_tokens_per_second: Some(out.decode_tokens_per_second()).filter(|x| x.is_finite()),
        compression_seconds: out.compression_seconds,
        state_bytes_after_prefill: out.state_bytes_after_prefill,
        state_bytes_end: out.state_bytes_end,
        tokens_held_after_prefill: out.tokens_held_after_prefill,
        tokens_held_end: out.tokens_held_end,
        host_state_bytes_after_prefill: out.host_state_bytes_after_prefill,
        host_state_bytes_end: out.host_state_bytes_end,
        budget_tokens_per_layer: out.budget_tokens_per_layer,
        uncompressed_question_tokens: out.uncompressed_question_tokens,
        shared_prefill_seconds: out.shared_prefill_seconds,
    }
}

/// The progress line of a finished sample.
fn sample_line(i: usize, total: usize, record: &SampleRecord) -> String {
    format!(
        "[{}/{}] {} prompt {} tok, prefill {:.0} tok/s{}, decode {:.1} tok/s, {}",
        i + 1,
        total,
        record.id,
        record.prompt_tokens,
        record.prefill_tokens_per_second,
        if record.shared_prefill_seconds.is_some() {
            " (shared)"
        } else {
            ""
        },
        record.decode_tokens_per_second.unwrap_or(f64::NAN),
        record
            .scores
            .iter()
            .map(|(k, v)| format!("{k}={v:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Runs `cells` (configurations equal but for method and budget) sample by sample; see
/// [`run_cells_shared_resumable`]. Records are returned, not written.
fn run_cells_inner<B: Backend>(
    registry: &Registry<B>,
    cells: &[GroupCell],
    device: &B::Device,
    backend: BackendInfo,
    max_shared: usize,
    progress: &mut dyn FnMut(usize, &SampleProgress),
) -> Vec<Result<RunRecord>> {
    let wall = Instant::now();
    let Some(first) = cells.first().map(|c| c.config) else {
        return Vec::new();
    };
    let fail_all = |e: Error| {
        let message = e.to_string();
        cells
            .iter()
            .map(|_| Err(Error::Other(message.clone())))
            .collect::<Vec<_>>()
    };
    let setup = (|| -> Result<_> {
        let loaded = registry.load_model(&first.model.name, &first.model.params, device)?;
        let task = registry.build_task(&first.task.name, &first.task.params)?;
        let samples: Vec<Sample> = task.samples(loaded.tokenizer.as_ref())?;
        Ok((loaded, task, samples))
    })();
    let (loaded, task, samples) = match setup {
        Ok(s) => s,
        Err(e) if cells.len() == 1 => return vec![Err(e)],
        Err(e) => return fail_all(e),
    };
    let tokenizer = loaded.tokenizer.as_ref();
    let dataset_sha256 = dataset_sha256(&samples, tokenizer);

    // Each cell's method and resume state; a cell that cannot start fails alone.
    let mut runs: Vec<Result<CellRun<B>>> = cells
        .iter()
        .map(|c| {
            let method = registry.build_method(&c.config.method.name, &c.config.method.params)?;
            let resume = Resume::open(c.partial.as_deref(), c.config, &dataset_sha256, &samples)?;
            Ok((method, resume))
        })
        .collect();
    let mut records: Vec<Vec<SampleRecord>> = cells
        .iter()
        .map(|_| Vec::with_capacity(samples.len()))
        .collect();

    for (i, sample) in samples.iter().enumerate() {
        // Cells that have this sample from a previous attempt take it; the others run it.
        let mut todo = Vec::new();
        for (c, run) in runs.iter_mut().enumerate() {
            let Ok((_, resume)) = run else { continue };
            match resume.resumed.remove(&sample.id) {
                Some(done) => {
                    let line = format!("[{}/{}] {} resumed", i + 1, samples.len(), sample.id);
                    progress(
                        c,
                        &SampleProgress {
                            done: i + 1,
                            total: samples.len(),
                            resumed: true,
                            line: &line,
                        },
                    );
                    records[c].push(done);
                }
                None => todo.push(c),
            }
        }
        if todo.is_empty() {
            continue;
        }
        let members: Vec<(&dyn longctx_core::KvMethod<B>, Budget)> = todo
            .iter()
            .map(|&c| match &runs[c] {
                Ok((method, _)) => (method.as_ref(), cells[c].config.budget),
                Err(_) => unreachable!("only running cells are in todo"),
            })
            .collect();
        let prompt_text = prompt_text(sample, tokenizer);
        let outcomes = run_sample(
            loaded.model.as_ref(),
            &members,
            sample,
            &prompt_text,
            tokenizer,
            task.as_ref(),
            cells[todo[0]].config,
            max_shared,
        );
        let (prompt, outcomes) = match outcomes {
            Ok(o) => o,
            Err(e) => {
                let message = e.to_string();
                let mut e = Some(e);
                for &c in &todo {
                    runs[c] = Err(if todo.len() == 1 {
                        e.take().expect("one cell")
                    } else {
                        Error::Other(message.clone())
                    });
                }
                continue;
            }
        };
        for (&c, outcome) in todo.iter().zip(outcomes) {
            let record = match outcome {
                Ok(o) => sample_record(sample, &prompt_text, &prompt, o),
                Err(e) => {
                    runs[c] = Err(e);
                    continue;
                }
            };
            let Ok((_, resume)) = &mut runs[c] else {
                unreachable!("only running cells are in todo")
            };
            if let Some(w) = resume.writer.as_mut() {
                if let Err(e) = w.append(&record) {
                    runs[c] = Err(e);
                    continue;
                }
            }
            let line = sample_line(i, samples.len(), &record);
            records[c].push(record);
            progress(
                c,
                &SampleProgress {
                    done: i + 1,
                    total: samples.len(),
                    resumed: false,
                    line: &line,
                },
            );
        }
    }

    let fp16_full_bytes_per_token = loaded
        .model
        .info()
        .layers
        .iter()
        .map(|l| match l {
            LayerSpec::Attention(a) => a.fp16_bytes_per_token(),
            LayerSpec::Recurrent(_) => 0,
        })
        .sum();
    let wall_seconds = wall.elapsed().as_secs_f64();
    runs.into_iter()
        .zip(records)
        .zip(cells)
        .map(|((run, records), cell)| {
            let (method, resume) = run?;
            let mut provenance = Provenance::collect(
                backend.clone(),
                loaded.provenance.clone(),
                dataset_sha256.clone(),
                resume.started_at,
            );
            provenance.finished_at = now_rfc3339();
            let mut record = finish_record(
                cell.config,
                records,
                &task.group_by(),
                fp16_full_bytes_per_token,
                wall_seconds,
                provenance,
            );
            record.kind = Some(record_kind(method.as_ref(), loaded.model.info()));
            Ok(record)
        })
        .collect()
}

/// A cell's record from its samples.
fn finish_record(
    config: &CellConfig,
    records: Vec<SampleRecord>,
    group_by: &[&str],
    fp16_full_bytes_per_token: usize,
    wall_seconds: f64,
    provenance: Provenance,
) -> RunRecord {
    let bytes_per_token = mean(records.iter().map(|r| {
        r.state_bytes_end.iter().sum::<usize>() as f64
            / (r.prompt_tokens + r.generated_tokens).max(1) as f64
    }))
    .unwrap_or(0.0);
    let memory = MemorySummary {
        mean_state_bytes_after_prefill: mean(
            records
                .iter()
                .map(|r| r.state_bytes_after_prefill.iter().sum::<usize>() as f64),
        )
        .unwrap_or(0.0),
        mean_state_bytes_end: mean(
            records
                .iter()
                .map(|r| r.state_bytes_end.iter().sum::<usize>() as f64),
        )
        .unwrap_or(0.0),
        bytes_per_token,
        fp16_full_bytes_per_token,
        compression_vs_fp16: fp16_full_bytes_per_token as f64 / bytes_per_token.max(1e-12),
    };
    let timing = TimingSummary {
        mean_prefill_tokens_per_second: mean(records.iter().map(|r| r.prefill_tokens_per_second))
            .unwrap_or(0.0),
        mean_decode_tokens_per_second: mean(
            records.iter().filter_map(|r| r.decode_tokens_per_second),
        ),
        total_compression_seconds: records.iter().map(|r| r.compression_seconds).sum(),
        wall_seconds,
        shared_prefill: records.iter().any(|r| r.shared_prefill_seconds.is_some()),
    };
    let metrics = Aggregate::from_samples(&records, group_by);
    RunRecord {
        schema: "longctx.run/1".into(),
        config: config.clone(),
        config_hash: config_hash(config),
        metrics,
        memory,
        timing,
        provenance,
        samples: records,
        kind: None,
    }
}

/// What a record measures beyond its config: the method's declared family and the model's
/// architecture and layer kinds.
fn record_kind<B: Backend>(
    method: &dyn longctx_core::KvMethod<B>,
    info: &longctx_core::ModelInfo,
) -> RecordKind {
    let recurrent_layers = info
        .layers
        .iter()
        .filter(|l| matches!(l, LayerSpec::Recurrent(_)))
        .count();
    RecordKind {
        method_family: serde_json::to_value(method.capabilities().family)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        architecture: info.architecture.clone(),
        attention_layers: info.layers.len() - recurrent_layers,
        recurrent_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use longctx_backend::BackendKind;

    /// Byte-level tokenizer with a chat template, for the prompt-text test.
    struct Chatty;
    impl TextTokenizer for Chatty {
        fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
            longctx_core::ByteTokenizer.encode(text, add_special)
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            longctx_core::ByteTokenizer.decode(ids)
        }
        fn vocab_size(&self) -> usize {
            259
        }
        fn stop_tokens(&self) -> Vec<u32> {
            vec![2]
        }
        fn chat_prompt(&self, message: &str) -> Option<String> {
            Some(format!("<user>{message}</user><bot>"))
        }
    }

    /// A sample with every part of the prompt set, no chat template.
    fn sample() -> Sample {
        Sample {
            id: "s".into(),
            instruction: "I ".into(),
            context: "C ".into(),
            question: "Q?".into(),
            answer_prefix: " A:".into(),
            references: vec![],
            max_new_tokens: 1,
            chat_template: false,
            metadata: Default::default(),
            continuation: None,
        }
    }

    #[test]
    fn the_chat_template_wraps_the_prompt_only_when_the_sample_asks() {
        let mut sample = sample();
        assert_eq!(prompt_text(&sample, &Chatty), "I C Q? A:");
        sample.chat_template = true;
        assert_eq!(prompt_text(&sample, &Chatty), "<user>I C Q?</user><bot> A:");
        // A model without a template gets the plain prompt.
        assert_eq!(
            prompt_text(&sample, &longctx_core::ByteTokenizer),
            "I C Q? A:"
        );
    }

    #[test]
    fn the_question_tail_is_everything_from_the_question_on() {
        let mut sample = sample();
        for (chat, tail) in [(false, "Q? A:"), (true, "Q?</user><bot> A:")] {
            sample.chat_template = chat;
            let text = prompt_text(&sample, &Chatty);
            let ids = Chatty.encode(&text, true).unwrap();
            let n = question_token_count(&sample, &Chatty, &text, &ids).unwrap();
            assert_eq!(n, tail.len(), "chat template {chat}");
        }
        sample.question.clear();
        let text = prompt_text(&sample, &Chatty);
        let ids = Chatty.encode(&text, true).unwrap();
        assert_eq!(
            question_token_count(&sample, &Chatty, &text, &ids).unwrap(),
            0
        );
    }

    fn config(lengths: &str) -> (Registry<Flex>, CellConfig) {
        let registry = longctx_registry::builtin::<Flex>();
        let task = RawParams::from([
            ("lengths".to_string(), lengths.to_string()),
            ("depths".into(), "0,1".into()),
        ]);
        let c = CellConfig::resolve(
            &registry,
            ("tiny", &RawParams::new()),
            ("full", &RawParams::new()),
            Budget::Unlimited,
            ("passkey", &task),
            BackendKind::Cpu,
            Sampling::Greedy,
            None,
        )
        .unwrap();
        (registry, c)
    }

    #[test]
    fn a_cell_runs_and_its_record_is_complete() {
        let (registry, c) = config("300");
        let info = BackendInfo {
            kind: BackendKind::Flex,
            burn_name: "flex".into(),
            device: "test".into(),
        };
        let record = run_cell(&registry, &c, &Default::default(), info, &mut |_| {}).unwrap();
        assert_eq!(record.samples.len(), 2);
        assert_eq!(record.metrics.samples, 2);
        assert!(record.metrics.overall.contains_key("exact_match"));
        assert_eq!(record.metrics.by["depth"].len(), 2);
        // tiny: 2 layers x 2 KV heads x 16 dims x (K and V) x 2 bytes.
        assert_eq!(record.memory.fp16_full_bytes_per_token, 2 * 2 * 16 * 2 * 2);
        for s in &record.samples {
            assert!(s.prompt_tokens <= 300);
            assert_eq!(s.state_bytes_end.len(), 2);
            // f32 full cache: at least 4 bytes per element for every token held.
            let held = s.tokens_held_end[0].unwrap();
            assert_eq!(held, s.prompt_tokens + s.generated_tokens - 1);
            assert!(s.state_bytes_end[0] >= held * 2 * 2 * 16 * 4);
            // `full` keeps nothing off the device.
            assert_eq!(s.host_state_bytes_after_prefill, vec![0, 0]);
            assert_eq!(s.host_state_bytes_end, vec![0, 0]);
        }
        // A sample recorded before the host bytes existed still loads (empty).
        let mut old = serde_json::to_value(&record.samples[0]).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.remove("host_state_bytes_after_prefill").unwrap();
        fields.remove("host_state_bytes_end").unwrap();
        let old: crate::record::SampleRecord = serde_json::from_value(old).unwrap();
        assert!(old.host_state_bytes_end.is_empty());
        // The record round-trips through JSON and lands atomically under its hash.
        let dir = std::env::temp_dir().join(format!("longctx-harness-test-{}", std::process::id()));
        let path = crate::write_record_atomically(&record_path(&dir, &c), &record).unwrap();
        assert!(path.to_string_lossy().contains(&record.config_hash[..12]));
        let back: RunRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.config, c);
        // The record says what it measured: `full` is the baseline, tiny is all attention.
        let kind = back.kind.clone().unwrap();
        assert_eq!(kind.method_family, "baseline");
        assert_eq!((kind.attention_layers, kind.recurrent_layers), (2, 0));
        assert!(!kind.architecture.is_empty());
        // A record written before `kind` existed still loads.
        let mut old = serde_json::to_value(&back).unwrap();
        old.as_object_mut().unwrap().remove("kind").unwrap();
        let old: RunRecord = serde_json::from_value(old).unwrap();
        assert!(old.kind.is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_budget_for_a_method_that_takes_none_is_an_error() {
        let registry = longctx_registry::builtin::<Flex>();
        for method in ["full", "kivi"] {
            let err = CellConfig::resolve(
                &registry,
                ("tiny", &RawParams::new()),
                (method, &RawParams::new()),
                Budget::Ratio(4.0),
                ("passkey", &RawParams::new()),
                BackendKind::Cpu,
                Sampling::Greedy,
                None,
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("method '{method}' takes no budget")) && err.contains("4x"),
                "{err}"
            );
        }
    }

    fn flex_info() -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Flex,
            burn_name: "flex".into(),
            device: "test".into(),
        }
    }

    /// A partial file of the cell: header, `samples` marked as read back, then `tail` as is.
    fn write_partial(path: &Path, header: &PartialHeader, samples: &[SampleRecord], tail: &str) {
        let mut text = json_line(header).unwrap();
        for s in samples {
            let mut s = s.clone();
            s.prediction = format!("from the partial file: {}", s.id);
            text += &json_line(&s).unwrap();
        }
        text += tail;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_partial_cell_resumes_with_every_sample_once() {
        let (registry, c) = config("300");
        let c = CellConfig {
            task: Component {
                params: registry
                    .task_params(
                        "passkey",
                        &RawParams::from([
                            ("lengths".to_string(), "300".to_string()),
                            ("depths".into(), "0,0.5,1".into()),
                        ]),
                    )
                    .unwrap(),
                ..c.task.clone()
            },
            ..c
        };
        let full = run_cell(&registry, &c, &Default::default(), flex_info(), &mut |_| {}).unwrap();
        assert_eq!(full.samples.len(), 3);
        let dir = std::env::temp_dir().join(format!("longctx-resume-test-{}", std::process::id()));
        let path = record_path(&dir, &c);
        let partial = partial_path(&path);
        assert!(partial.to_string_lossy().ends_with(".json.partial.jsonl"));
        let header = PartialHeader {
            schema: PARTIAL_SCHEMA.into(),
            config_hash: config_hash(&c),
            dataset_sha256: full.provenance.dataset_sha256.clone(),
            started_at: "2001-01-01T00:00:00Z".into(),
        };
        // Two samples, then a line cut short by a crash; and the temporary files of writes cut
        // short (a partial file's, the record's).
        let cut = json_line(&full.samples[2]).unwrap();
        write_partial(&partial, &header, &full.samples[..2], &cut[..cut.len() / 2]);
        let stale = [
            PathBuf::from(format!("{}.tmp.1", partial.display())),
            path.with_extension("json.tmp.1"),
        ];
        for s in &stale {
            std::fs::write(s, "cut short").unwrap();
        }
        let mut lines = Vec::new();
        let record = run_cell_resumable(
            &registry,
            &c,
            &Default::default(),
            flex_info(),
            &path,
            &mut |p| lines.push((p.done, p.total, p.resumed)),
        )
        .unwrap();
        assert_eq!(lines, [(1, 3, true), (2, 3, true), (3, 3, false)]);
        assert!(stale.iter().all(|s| !s.exists()));
        let ids: Vec<_> = record.samples.iter().map(|s| s.id.clone()).collect();
        let expected: Vec<_> = full.samples.iter().map(|s| s.id.clone()).collect();
        assert_eq!(ids, expected, "every sample once, in the task's order");
        for s in &record.samples[..2] {
            assert!(s.prediction.starts_with("from the partial file"), "{s:?}");
        }
        assert_eq!(record.samples[2].prediction, full.samples[2].prediction);
        assert_eq!(record.metrics.samples, 3);
        assert_eq!(record.provenance.started_at, "2001-01-01T00:00:00Z");
        // The record is written, the partial file gone.
        let back: RunRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back.samples.len(), 3);
        assert!(!partial.exists());

        // A partial file of another configuration is discarded, never mixed in.
        std::fs::remove_file(&path).unwrap();
        let other = PartialHeader {
            config_hash: "0".repeat(64),
            ..header.clone()
        };
        write_partial(&partial, &other, &full.samples[..2], "");
        let mut resumed = 0;
        let record = run_cell_resumable(
            &registry,
            &c,
            &Default::default(),
            flex_info(),
            &path,
            &mut |p| resumed += p.resumed as usize,
        )
        .unwrap();
        assert_eq!(resumed, 0);
        assert_eq!(record.samples.len(), 3);
        assert!(record
            .samples
            .iter()
            .all(|s| !s.prediction.starts_with("from the partial file")));
        assert_ne!(record.provenance.started_at, "2001-01-01T00:00:00Z");
        assert!(!partial.exists());
        // So is one made from other samples (the data set changed).
        let stale = PartialHeader {
            dataset_sha256: "1".repeat(64),
            ..header.clone()
        };
        write_partial(&partial, &stale, &full.samples[..2], "");
        assert!(read_partial(&partial, &header).is_none());
        assert_eq!(read_partial(&partial, &stale).unwrap().1.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cells_sharing_a_prefill_resume_per_cell_and_match_cells_run_alone() {
        let (registry, base) = config("300");
        let cell = |method: &str, raw: &[(&str, &str)], budget: Budget| {
            let raw: RawParams = raw
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            CellConfig {
                method: Component {
                    name: method.into(),
                    params: registry.method_params(method, &raw).unwrap(),
                },
                budget,
                ..base.clone()
            }
        };
        let configs = [
            cell("full", &[], Budget::Unlimited),
            cell("snapkv", &[("window", "8")], Budget::Ratio(2.0)),
            cell("snapkv", &[("window", "16")], Budget::Ratio(4.0)),
            cell("int8", &[], Budget::Unlimited),
        ];
        let alone: Vec<RunRecord> = configs
            .iter()
            .map(|c| run_cell(&registry, c, &Default::default(), flex_info(), &mut |_| {}).unwrap())
            .collect();
        let dir = std::env::temp_dir().join(format!("longctx-shared-test-{}", std::process::id()));
        let cells: Vec<(CellConfig, PathBuf)> = configs
            .iter()
            .map(|c| (c.clone(), record_path(&dir, c)))
            .collect();
        // The snapkv cell has its first sample from an earlier attempt.
        let header = PartialHeader {
            schema: PARTIAL_SCHEMA.into(),
            config_hash: config_hash(&configs[1]),
            dataset_sha256: alone[1].provenance.dataset_sha256.clone(),
            started_at: "2001-01-01T00:00:00Z".into(),
        };
        write_partial(
            &partial_path(&cells[1].1),
            &header,
            &alone[1].samples[..1],
            "",
        );
        let mut seen = Vec::new();
        let records = run_cells_shared_resumable(
            &registry,
            &cells,
            &Default::default(),
            flex_info(),
            4,
            &mut |c, p| seen.push((c, p.done, p.resumed)),
        );
        assert_eq!(seen.len(), 4 * 2);
        assert_eq!(
            seen.iter().filter(|s| s.2).collect::<Vec<_>>(),
            [&(1, 1, true)]
        );
        // The passkey prompts end in a question: full and int8 (which compress it) share one
        // prefill, the two snapkv cells (which do not) another; but the first snapkv cell has
        // the first sample already, so the second prefills that one alone.
        for (c, ((record, alone), (_, path))) in
            records.into_iter().zip(&alone).zip(&cells).enumerate()
        {
            let record = record.unwrap();
            let back: RunRecord = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            assert_eq!(back.config_hash, alone.config_hash);
            assert!(!partial_path(path).exists());
            assert!(record.timing.shared_prefill);
            assert_eq!(record.samples.len(), alone.samples.len());
            for (i, (s, a)) in record.samples.iter().zip(&alone.samples).enumerate() {
                let resumed = s.prediction.starts_with("from the partial file");
                assert_eq!(resumed, (c, i) == (1, 0));
                if !resumed {
                    assert_eq!(s.prediction, a.prediction);
                    assert_eq!(
                        s.shared_prefill_seconds.is_some(),
                        (c, i) != (2, 0),
                        "cell {c} sample {i}"
                    );
                }
                assert_eq!(s.id, a.id);
                assert_eq!(s.scores, a.scores);
                assert_eq!(s.state_bytes_after_prefill, a.state_bytes_after_prefill);
                assert_eq!(s.state_bytes_end, a.state_bytes_end);
                assert_eq!(s.tokens_held_end, a.tokens_held_end);
                assert_eq!(s.budget_tokens_per_layer, a.budget_tokens_per_layer);
                assert_eq!(
                    s.uncompressed_question_tokens,
                    a.uncompressed_question_tokens
                );
            }
            assert!(alone
                .samples
                .iter()
                .all(|s| s.shared_prefill_seconds.is_none()));
            assert!(!alone.timing.shared_prefill);
        }
        assert_eq!(
            serde_json::from_slice::<RunRecord>(&std::fs::read(&cells[1].1).unwrap())
                .unwrap()
                .provenance
                .started_at,
            "2001-01-01T00:00:00Z"
        );
        // Cells that differ in more than method and budget are refused.
        let mut other = cells[0].clone();
        other.0.max_prefill_chunk = Some(64);
        let refused = run_cells_shared_resumable(
            &registry,
            &[cells[0].clone(), other],
            &Default::default(),
            flex_info(),
            2,
            &mut |_, _| {},
        );
        assert!(refused.iter().all(|r| r.is_err()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hashes_follow_the_configuration() {
        let (_, a) = config("300");
        let (_, b) = config("301");
        assert_eq!(config_hash(&a), config_hash(&a.clone()));
        assert_ne!(config_hash(&a), config_hash(&b));
    }
}
