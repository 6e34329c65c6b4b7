//! The HF `config.json` of Qwen2 / Llama causal LMs.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Model family: decides the bias layout and defaults (both share one decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// `Qwen2ForCausalLM`: q/k/v projections carry a bias, o_proj does not.
    Qwen2,
    /// `LlamaForCausalLM`: biases only when `attention_bias` / `mlp_bias` say so.
    Llama,
}

/// `rope_scaling` of an HF config (`rope_type` or the legacy `type` key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3` are supported.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// `llama3`: low frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// `llama3`: high frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// `llama3`: the original context length.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
    /// Anything else the checkpoint carries (kept on save).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_init_range() -> f64 {
    0.02
}
fn default_max_pos() -> usize {
    4096
}
fn default_act() -> String {
    "silu".to_string()
}

/// Serde view of an HF `config.json` for `Qwen2ForCausalLM` / `LlamaForCausalLM`.
///
/// Unknown keys are kept in [`ModelConfig::extra`] and written back by [`crate::Model::save_hf`].
///
/// ```no_run
/// let cfg = lt_model::ModelConfig::tiny_llama(32, 16, 1, 2, 1, 24);
/// assert_eq!(cfg.head_dim(), 8);
/// assert_eq!(cfg.family(), lt_model::Family::Llama);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// e.g. `["Qwen2ForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `qwen2` / `llama` (used when `architectures` is empty).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Rows of the embedding / lm_head.
    pub vocab_size: usize,
    /// Informational only: positions beyond it are fine.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Optional RoPE scaling (`llama3`, `linear`).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// lm_head shares the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: bias on q/k/v/o. (Qwen2 always has q/k/v bias.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    /// Llama: bias on the MLP projections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    /// Only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// `float32`, `bfloat16`, ... (informational; the caller picks the run-time dtype).
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// BOS id (informational).
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS id(s) (informational).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Std of the normal init of random models and grown vocabulary rows.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Qwen2 sliding window switch; must be false (not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Every other key of the file, preserved on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ModelConfig {
    /// Read and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile(path.to_path_buf())
            } else {
                ModelError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            source: e,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Which decoder flavour the config describes.
    ///
    /// Falls back to [`Family::Llama`] only through [`ModelConfig::validate`]'s checks;
    /// an unknown architecture is reported by `validate` / `from_file`.
    pub fn family(&self) -> Family {
        self.try_family().unwrap_or(Family::Llama)
    }

    /// Like [`ModelConfig::family`] but reports unsupported architectures.
    pub fn try_family(&self) -> Result<Family, ModelError> {
        if let Some(a) = self.architectures.first() {
            return match a.as_str() {
                "Qwen2ForCausalLM" => Ok(Family::Qwen2),
                "LlamaForCausalLM" => Ok(Family::Llama),
                other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
            };
        }
        match self.model_type.as_deref() {
            Some("qwen2") => Ok(Family::Qwen2),
            Some("llama") => Ok(Family::Llama),
            Some(other) => Err(ModelError::UnsupportedArchitecture(other.to_string())),
            None => Err(ModelError::UnsupportedArchitecture(
                "<none: no architectures / model_type>".into(),
            )),
        }
    }

    /// KV heads (GQA).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Weights that multiply each token's activations: every projection of every layer plus
    /// the lm_head (≈ multiply-adds per token of a forward pass, attention excluded).
    pub fn dense_params(&self) -> usize {
        let (h, d) = (self.hidden_size, self.head_dim());
        let (q, kv) = (self.num_attention_heads * d, self.kv_heads() * d);
        let layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size;
        self.num_hidden_layers * layer + self.vocab_size * h
    }

    /// Whether q/k/v projections have a bias.
    pub fn qkv_bias(&self) -> bool {
        match self.family() {
            Family::Qwen2 => true,
            Family::Llama => self.attention_bias.unwrap_or(false),
        }
    }

    /// Whether o_proj has a bias.
    pub fn o_bias(&self) -> bool {
        match self.family() {
            Family::Qwen2 => false,
            Family::Llama => self.attention_bias.unwrap_or(false),
        }
    }

    /// Whether the MLP projections have a bias.
    pub fn mlp_bias(&self) -> bool {
        match self.family() {
            Family::Qwen2 => false,
            Family::Llama => self.mlp_bias.unwrap_or(false),
        }
    }

    /// Check that the config describes something this crate can run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, msg: String| ModelError::InvalidConfig {
            field: field.to_string(),
            msg,
        };
        self.try_family()?;
        if self.hidden_act != "silu" {
            return Err(bad(
                "hidden_act",
                format!("`{}` is not supported (only silu)", self.hidden_act),
            ));
        }
        for (f, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 {
                return Err(bad(f, "must be > 0".into()));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} must be even for RoPE", self.head_dim()),
            ));
        }
        if self.use_sliding_window == Some(true) {
            return Err(bad(
                "use_sliding_window",
                "sliding-window attention is not implemented".into(),
            ));
        }
        if let Some(rs) = &self.rope_scaling {
            match rs.rope_type.as_deref().unwrap_or("default") {
                "default" => {}
                "linear" => {
                    if rs.factor.is_none() {
                        return Err(bad(
                            "rope_scaling.factor",
                            "required for linear scaling".into(),
                        ));
                    }
                }
                "llama3" => {
                    if rs.factor.is_none()
                        || rs.low_freq_factor.is_none()
                        || rs.high_freq_factor.is_none()
                        || rs.original_max_position_embeddings.is_none()
                    {
                        return Err(bad(
                            "rope_scaling",
                            "llama3 needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings"
                                .into(),
                        ));
                    }
                }
                other => {
                    return Err(bad(
                        "rope_scaling.rope_type",
                        format!("`{other}` is not supported"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// A small Llama config (no biases, untied, default RoPE) for tests and examples.
    pub fn tiny_llama(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        intermediate: usize,
    ) -> Self {
        ModelConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: Some("llama".into()),
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            vocab_size,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            attention_bias: Some(false),
            mlp_bias: Some(false),
            hidden_act: "silu".into(),
            torch_dtype: Some("float32".into()),
            bos_token_id: None,
            eos_token_id: None,
            initializer_range: 0.02,
            use_sliding_window: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The same shape as [`ModelConfig::tiny_llama`] but a `Qwen2ForCausalLM` (q/k/v bias).
    pub fn tiny_qwen2(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
        intermediate: usize,
    ) -> Self {
        let mut c = Self::tiny_llama(vocab_size, hidden, layers, heads, kv_heads, intermediate);
        c.architectures = vec!["Qwen2ForCausalLM".into()];
        c.model_type = Some("qwen2".into());
        c.attention_bias = None;
        c.mlp_bias = None;
        c.use_sliding_window = Some(false);
        c
    }

    /// A random-weight stand-in with the shape of Qwen2.5-0.5B (24 layers, hidden 896,
    /// 14 heads / 2 KV heads, intermediate 4864, vocab 151,936, tied embeddings).
    pub fn qwen2_5_0_5b_shape() -> Self {
        let mut c = Self::tiny_qwen2(151_936, 896, 24, 14, 2, 4864);
        c.tie_word_embeddings = true;
        c.rope_theta = 1_000_000.0;
        c.max_position_embeddings = 32768;
        c
    }
}
