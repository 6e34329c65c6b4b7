//! Errors of `lt-infer`.
use std::path::PathBuf;

/// Everything that can go wrong while generating or writing records.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A model / KV-cache error.
    #[error(transparent)]
    Model(#[from] lt_model::ModelError),
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A data / tokenizer / config error.
    #[error(transparent)]
    Data(#[from] lt_data::DataError),
    /// A mask could not be built.
    #[error("mask: {0}")]
    Mask(String),
    /// An inconsistent generation setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A prompt with no token.
    #[error("empty prompt")]
    EmptyPrompt,
    /// Internal bookkeeping and the KV cache disagree (a bug).
    #[error("KV cache row {row}: bookkeeping says {expected} slots, cache has {found}")]
    CacheMismatch {
        /// Batch row.
        row: usize,
        /// Slots the engine tracks.
        expected: usize,
        /// Slots in the cache.
        found: usize,
    },
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A malformed line of an existing output file.
    #[error("{path}:{line}: {msg}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A malformed evaluation data file or item.
    #[error("{path}: {msg}")]
    EvalData {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the item and field).
        msg: String,
    },
}

impl InferError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InferError::Io {
            path: path.into(),
            source,
        }
    }
}
