//! The one error type of longctx. Every failure a user can cause (an unknown name, a bad
//! parameter, a malformed file, a missing device) is an [`Error`] with a message that names the
//! problem; nothing in the library panics on bad input.

use std::path::PathBuf;

/// Errors raised by longctx crates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name (model, method, task, backend...) that is not registered.
    #[error("unknown {kind} '{name}'; valid {kind}s: {}", valid.join(", "))]
    UnknownName {
        kind: &'static str,
        name: String,
        valid: Vec<String>,
    },
    /// A parameter name that the owner does not declare.
    #[error("{owner} has no parameter '{param}'; valid parameters: {}", if valid.is_empty() { "(none)".to_string() } else { valid.join(", ") })]
    UnknownParam {
        owner: String,
        param: String,
        valid: Vec<String>,
    },
    /// A parameter whose value cannot be used.
    #[error("{owner}: invalid value for parameter '{param}': {reason}")]
    InvalidParam {
        owner: String,
        param: String,
        reason: String,
    },
    /// A file that cannot be read or parsed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// An I/O error with the path it happened on.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A backend or device that cannot be used on this machine.
    #[error("backend '{backend}' is not usable here: {message}")]
    Backend { backend: String, message: String },
    /// Input that does not fit the model or method (too long, empty, wrong shape).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A budget that cannot be met.
    #[error("budget error: {0}")]
    Budget(String),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias used across longctx.
pub type Result<T, E = Error> = std::result::Result<T, E>;
