//! The crate's error type.
use std::path::PathBuf;

/// Everything that can go wrong while reading configs, tokenizers, samples or building rows.
///
/// Errors about input files name the file, the 1-based line (for JSONL) and the offending field.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        err: std::io::Error,
    },
    /// A JSON document or JSONL line did not parse or lacks/mistypes a field.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line for JSONL inputs.
        line: Option<usize>,
        /// What is wrong, naming the field where known.
        message: String,
    },
    /// A compression config violates one of the reference's rules.
    #[error("invalid compression config{}: rule `{rule}`: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        /// The config file, when known.
        path: Option<PathBuf>,
        /// Short name of the violated rule (e.g. `template-invariant`, `share`, `sentence-step`).
        rule: &'static str,
        /// Details.
        message: String,
    },
    /// The tokenizer could not be loaded, saved or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A sample cannot be built with the requested settings (the reference raises for it too).
    #[error("sample cannot be built: {0}")]
    Build(String),
    /// A mask could not be built for a row.
    #[error("mask: {0}")]
    Mask(String),
    /// Invalid argument to a library call.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            err: source,
        }
    }
}

/// Shorthand result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
