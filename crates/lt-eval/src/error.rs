//! The crate's error type.
use std::path::PathBuf;

/// Everything that can go wrong while evaluating inference records.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON / JSONL file is malformed (`line` is 1-based; 0 for a whole-file JSON document).
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 = whole file).
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A record or data item lacks a field, or has it with the wrong type.
    #[error("{path}: record idx {idx}: field `{field}`: {msg}")]
    Field {
        /// The file the record came from.
        path: PathBuf,
        /// The record's idx (-1 when unknown).
        idx: i64,
        /// The field.
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A metric needs token counts that the record does not carry, and no tokenizer was given.
    #[error("record idx {idx}: {what} needs a tokenizer (--tokenizer-path) because the record has no `{field}`")]
    NeedTokenizer {
        /// The record's idx.
        idx: i64,
        /// The metric.
        what: &'static str,
        /// The missing record field.
        field: &'static str,
    },
    /// A record's idx has no reference item (index out of range of the eval data file).
    #[error("record idx {idx} has no reference item ({n} items in the eval data)")]
    UnknownIdx {
        /// The record's idx.
        idx: i64,
        /// Number of reference items.
        n: usize,
    },
    /// The reference `eval_file.py` crashes on this record (reproduced in `Compat::Reference` mode).
    #[error("record idx {idx}: the reference evaluation crashes here: {why}")]
    ReferenceCrash {
        /// The record's idx.
        idx: i64,
        /// Why the reference crashes.
        why: String,
    },
    /// Invalid arguments or settings.
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
