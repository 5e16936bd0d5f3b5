//! Bytes of a weight file: memory-mapped from disk, or owned (in-memory parsing and fuzzing).

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use crate::{Error, Result};

/// The whole content of one file.
pub(crate) enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Memory-maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Storage> {
        let io_err = |op, source| Error::Io {
            path: path.to_path_buf(),
            op,
            source,
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        let len = file.metadata().map_err(|e| io_err("stat", e))?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; an empty buffer parses the same.
            return Ok(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only. As with every mmap-based reader, another process
        // truncating or rewriting the file while it is mapped is undefined behaviour; weight
        // files are not expected to change while a benchmark reads them.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err("memory-map", e))?;
        Ok(Storage::Mapped(map))
    }
}

impl Deref for Storage {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped(m) => write!(f, "Mapped({} bytes)", m.len()),
            Storage::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}
