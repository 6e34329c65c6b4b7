//! The crate's error type.
use std::path::PathBuf;

/// Everything that can go wrong while configuring, running or resuming training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is invalid (names the field).
    #[error("invalid training configuration: {field}: {message}")]
    Config {
        /// The offending field / flag.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A line of the training file could not be used (names file, 1-based line and field).
    #[error("{path}:{line}: field `{field}`: {message}")]
    DataLine {
        /// The training file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON field at fault (`<json>` when the line is not valid JSON).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The output directory already holds a run and neither resume nor overwrite was requested.
    #[error("output directory {0} already holds a training run; pass --resume to continue it or --overwrite to replace it")]
    OutputExists(PathBuf),
    /// Resume was requested but no usable checkpoint exists.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// A checkpoint file is missing, malformed or does not match the model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The data source failed or produced an unusable batch.
    #[error("data: {0}")]
    Data(String),
    /// An error of the `lt-data` crate.
    #[error(transparent)]
    LtData(#[from] lt_data::DataError),
    /// An error of the `lt-model` crate.
    #[error(transparent)]
    Model(#[from] lt_model::ModelError),
    /// A libtorch error.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// An I/O error, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON (de)serialisation error, with the path involved.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The loss or gradient norm became NaN/inf.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// `loss` or `grad_norm`.
        what: &'static str,
        /// The optimizer step (1-based).
        step: usize,
    },
}

impl TrainError {
    /// Shorthand for [`TrainError::Config`].
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }
    /// Shorthand for [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    /// Shorthand for [`TrainError::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
