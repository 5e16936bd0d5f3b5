//! RULER's word lists: the nouns, adjectives and verbs of the `wonderwords` package, which
//! RULER reads with `wonderwords.random_word._get_words_from_text_file` (niah keys are
//! `adjective-noun` pairs; cwe draws from nouns + adjectives + verbs). Here they come from the
//! `wonderwords` wheel (version pinned below) fetched into the cache, read from its
//! `wonderwords/assets/{nounlist,adjectivelist,verblist}.txt`.

use std::path::{Path, PathBuf};

use longctx_core::{Error, Result};
use longctx_fetch::{ensure_wheel_files, Wheel};

/// The wheel the word lists come from.
pub const WORDS_WHEEL: Wheel<'static> = Wheel {
    requirement: "wonderwords==3.0.1",
    cache_name: "wonderwords-3.0.1",
    what: "RULER's word lists (wonderwords)",
};

const LISTS: [&str; 3] = ["nounlist.txt", "adjectivelist.txt", "verblist.txt"];

/// The three word lists.
#[derive(Clone, Debug, PartialEq)]
pub struct WordLists {
    pub nouns: Vec<String>,
    pub adjectives: Vec<String>,
    pub verbs: Vec<String>,
}

/// The directory holding the three lists in the cache under `cache_dir`, fetched if absent.
pub fn ensure_word_lists(cache_dir: &Path) -> Result<PathBuf> {
    ensure_wheel_files(cache_dir, &WORDS_WHEEL, &|member| {
        member
            .strip_prefix("wonderwords/assets/")
            .filter(|name| LISTS.contains(name))
            .map(str::to_string)
    })
}

/// Reads one word per line (trailing whitespace removed, empty lines skipped).
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let words: Vec<String> = text
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if words.is_empty() {
        return Err(Error::file(path, "holds no words"));
    }
    Ok(words)
}

impl WordLists {
    /// Reads `nounlist.txt`, `adjectivelist.txt` and `verblist.txt` from `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Self {
            nouns: read_list(&dir.join(LISTS[0]))?,
            adjectives: read_list(&dir.join(LISTS[1]))?,
            verbs: read_list(&dir.join(LISTS[2]))?,
        })
    }
}
