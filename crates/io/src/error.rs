//! The error type of `longctx-io`.
//!
//! Weight files come from users, so every way a file can be wrong is an [`Error`] whose
//! message names the file, the tensor or metadata key involved, and the problem. Nothing in
//! this crate panics on bad input.

use std::path::PathBuf;

use crate::gguf::DequantError;

/// Errors raised while reading weight files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O failure (open, stat, map, read).
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What was being done, e.g. "open" or "memory-map".
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A structural problem with a file that is not tied to one key or tensor.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file (or `<memory>` for in-memory buffers).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A problem with one GGUF metadata entry (bad value, wrong type, missing).
    #[error("{}: metadata key '{key}': {message}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A problem with one tensor (bad header entry, data out of range, unsupported type).
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor that was asked for by name but is not in the file or checkpoint.
    #[error("{}: no tensor named '{tensor}'", path.display())]
    TensorNotFound {
        /// The file or checkpoint directory searched.
        path: PathBuf,
        /// The requested name.
        tensor: String,
    },
    /// A tensor whose bytes could not be converted to floats.
    #[error("{}: tensor '{tensor}': {source}", path.display())]
    Dequant {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// Why the conversion failed.
        #[source]
        source: DequantError,
    },
    /// A JSON file (config or shard index) that cannot be parsed.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser error.
        #[source]
        source: serde_json::Error,
    },
    /// Bad arguments to the GGUF writer (a programming error in the caller, not a bad file).
    #[error("GGUF writer: {0}")]
    Writer(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    pub(crate) fn metadata(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Metadata {
            path: path.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}
