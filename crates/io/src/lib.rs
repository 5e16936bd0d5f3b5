//! Readers for model weight files that users bring, independent of any tensor library.
//!
//! - [`gguf`]: GGUF v2/v3 files (llama.cpp's format): metadata, tensor directory, raw bytes and
//!   dequantization of F32/F16/BF16, the legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the
//!   K-quants (Q4_K, Q5_K, Q6_K, Q8_K) to `f32`. [`gguf::GgufWriter`] writes small files for
//!   tests and fuzz corpora.
//! - [`safetensors`]: Hugging Face checkpoint directories (`config.json` plus one
//!   `model.safetensors` or an index and shards), converting F32/F16/BF16 to `f32`.
//! - [`sha256_file`]: a streaming SHA-256 of a file, for provenance records.
//!
//! Files are memory-mapped, and output is plain host data (`Vec<f32>` or `Vec<half::f16>`)
//! that other crates upload to tensors. Every malformed input is an [`Error`] naming the file,
//! the tensor or key, and the problem; nothing panics on bad input (this is fuzzed).

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
pub mod safetensors;
mod storage;

use std::io::Read;
use std::path::Path;

pub use error::{Error, Result};
/// Re-exported so callers use the same `f16` type as [`gguf::GgufFile::tensor_f16`].
pub use half;

/// Streams the file at `path` through SHA-256 and returns the digest as 64 lowercase hex digits.
///
/// Reads in 1 MiB chunks, so multi-gigabyte weight files need no extra memory.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    use sha2::{Digest, Sha256};
    let path = path.as_ref();
    let io_err = |op, source| Error::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let mut file = std::fs::File::open(path).map_err(|e| io_err("open", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", e)),
        };
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}
