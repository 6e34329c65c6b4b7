//! `lt-model`: Qwen2 and Llama(-3) decoders on libtorch (`tch`) for LightThinker.
//!
//! * [`Model::load`] reads an HF checkpoint directory (`config.json` + single or sharded safetensors);
//!   [`Model::random`] builds a seeded random model from a [`ModelConfig`].
//! * [`Model::forward`] takes explicit (arbitrary, non-contiguous) position ids, an [`AttnMask`]
//!   (causal, bool or additive, e.g. an `lt_mask::IntervalMask` tensor) and an optional [`KvCache`]
//!   that can [`KvCache::evict`] slots by compaction; it computes logits only where asked ([`Logits`]).
//! * [`Model::resize_vocab`] implements the reference's description-mean initialisation and
//!   [`Model::save_hf`] writes a checkpoint transformers can load.
//!
//! ```no_run
//! // (doctests are compile-only: rustdoc binaries lack the libtorch rpath)
//! use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig};
//! let cfg = ModelConfig::tiny_llama(64, 32, 2, 4, 2, 64);
//! let model = Model::random(&cfg, Device::Cpu, Kind::Float, 0)?;
//! let ids = tch::Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
//! let pos = tch::Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
//! let mut cache = model.new_cache(1, 16);
//! let _g = tch::no_grad_guard();
//! let logits = model.forward(&ids, &pos, AttnMask::Causal, Some(&mut cache), Logits::Last)?; // [1, 64]
//! assert_eq!(cache.len(), 3);
//! # Ok::<(), lt_model::ModelError>(())
//! ```
#![warn(missing_docs)]

mod cache;
mod config;
pub mod device;
mod fused;
mod gemm;
mod inference_mode;
mod io;
mod model;
mod onednn;
mod pair;
mod rope;

pub use cache::KvCache;
pub use config::{Family, ModelConfig, RopeScaling};
pub use inference_mode::InferenceMode;
pub use model::{AttnMask, Logits, Model, PrepackStats};
pub use tch::{Device, Kind};

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A required file does not exist.
    #[error("missing file {0}")]
    MissingFile(PathBuf),
    /// `config.json` is not valid JSON / misses a required field.
    #[error("{path}: invalid config.json: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The JSON error (names line/column/field).
        source: serde_json::Error,
    },
    /// A config value this crate cannot run.
    #[error("config field `{field}`: {msg}")]
    InvalidConfig {
        /// The field.
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// Neither Qwen2ForCausalLM nor LlamaForCausalLM.
    #[error("unsupported architecture `{0}` (supported: Qwen2ForCausalLM, LlamaForCausalLM)")]
    UnsupportedArchitecture(String),
    /// A weight the model needs is not in the checkpoint.
    #[error("missing tensor `{name}` in {path}")]
    MissingTensor {
        /// HF name of the tensor.
        name: String,
        /// Checkpoint directory.
        path: PathBuf,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error("tensor `{name}` in {path}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        /// HF name of the tensor.
        name: String,
        /// File it came from.
        path: PathBuf,
        /// Shape the config implies.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// A malformed safetensors file / index.
    #[error("{path}: {msg}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A bad argument to `forward` / the cache (shapes, ids, ranges).
    #[error("invalid input: {0}")]
    Input(String),
    /// An error reported by libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The additive-mask "hidden" value HF uses for a dtype (`torch.finfo(kind).min`).
pub fn dtype_min(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Half => -65504.0,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Parse a dtype name (`f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`/`half`).
pub fn parse_kind(s: &str) -> Result<Kind, ModelError> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" | "fp32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" | "fp16" => Ok(Kind::Half),
        "f64" | "float64" | "double" => Ok(Kind::Double),
        other => Err(ModelError::Input(format!(
            "unknown dtype `{other}` (use f32, bf16 or f16)"
        ))),
    }
}

/// HF `torch_dtype` spelling of a kind.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}
