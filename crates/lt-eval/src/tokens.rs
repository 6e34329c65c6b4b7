//! The compression settings of a LightThinker config and the evaluation tokenizer (the base tokenizer
//! plus the LightThinker special tokens, added in the reference's order).
use std::path::Path;

use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EvalError, Result};

/// The LightThinker special tokens added before the cache tokens, in the reference's order
/// (`<|im_end|>`, `<|im_start|>` follow for Qwen; tokens already in the vocabulary are skipped).
pub const BASE_SPECIALS: [&str; 8] = [
    "<|splitter|>",
    "<|continue|>",
    "<|recover|>",
    "<|begin_of_thought|>",
    "<|end_of_thought|>",
    "<|begin_of_solution|>",
    "<|end_of_solution|>",
    "\n\n",
];

/// The `<|splitter|>` token.
pub const SPLITTER: &str = "<|splitter|>";

/// Compression level of a config's `output` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Thought level: compress at each `<|splitter|>` (`"level": "sentence"`).
    Sentence,
    /// Token level: compress every `step` generated tokens.
    Token,
}

/// What the evaluation needs from `configs/<method>/<model>/v1.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompressSettings {
    /// `template.model` (`qwen` / `llama`), when present.
    pub model: Option<String>,
    /// `output.level`.
    pub level: Level,
    /// `output.step` (token level: compress every `step` tokens).
    pub step: usize,
    /// `output.n_token`: number of cache ("gist") tokens per compression, C.
    pub n_token: usize,
    /// The cache token names `<|o_0|>` .. `<|o_{C-1}|>`.
    pub cache_tokens: Vec<String>,
}

impl CompressSettings {
    /// LightThinker thought-level settings with `c` cache tokens (`<|o_i|>`).
    pub fn sentence(c: usize) -> Self {
        Self {
            model: None,
            level: Level::Sentence,
            step: 1,
            n_token: c,
            cache_tokens: (0..c).map(|i| format!("<|o_{i}|>")).collect(),
        }
    }

    /// Parse a config's JSON text.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let perr = |msg: String| EvalError::Parse {
            path: path.to_path_buf(),
            line: 0,
            msg,
        };
        let v: Value =
            serde_json::from_str(text).map_err(|e| perr(format!("compress config: {e}")))?;
        let out = v
            .get("output")
            .ok_or_else(|| perr("compress config: no `output` section".into()))?;
        let level = match out.get("level").and_then(Value::as_str) {
            Some("sentence") | None => Level::Sentence,
            Some("token") => Level::Token,
            Some(o) => {
                return Err(perr(format!(
                    "compress config: output.level `{o}` is not sentence/token"
                )))
            }
        };
        let num = |k: &str, d: u64| -> Result<usize> {
            match out.get(k) {
                None => Ok(d as usize),
                Some(x) => x.as_u64().map(|u| u as usize).ok_or_else(|| {
                    perr(format!(
                        "compress config: output.{k} is not a non-negative integer"
                    ))
                }),
            }
        };
        let n_token = num("n_token", 1)?;
        let step = num("step", 1)?.max(1);
        let name = out
            .get("token_name")
            .and_then(Value::as_str)
            .unwrap_or("<|o_{t_id}|>")
            .to_string();
        Ok(Self {
            model: v
                .pointer("/template/model")
                .and_then(Value::as_str)
                .map(String::from),
            level,
            step,
            n_token,
            cache_tokens: (0..n_token)
                .map(|i| name.replace("{t_id}", &i.to_string()))
                .collect(),
        })
    }

    /// Read a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// All special tokens the reference adds, in order (model-specific chat tokens included).
    pub fn special_tokens(&self) -> Vec<String> {
        let mut v: Vec<String> = BASE_SPECIALS.iter().map(|s| s.to_string()).collect();
        if self.model.as_deref() != Some("llama") {
            v.push("<|im_end|>".into());
            v.push("<|im_start|>".into());
        }
        v.extend(self.cache_tokens.iter().cloned());
        v
    }
}

/// The evaluation tokenizer: counts tokens of decoded texts like the reference's `eval_file.py`.
pub struct TokenCounter {
    tok: Tokenizer,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("vocab", &self.tok.get_vocab_size(true))
            .finish()
    }
}

impl TokenCounter {
    /// Load `tokenizer.json` (a file, or a directory containing it) and add the config's special
    /// tokens that are not yet known, in the reference's order.
    pub fn from_file(path: impl AsRef<Path>, settings: &CompressSettings) -> Result<Self> {
        let mut p = path.as_ref().to_path_buf();
        if p.is_dir() {
            p = p.join("tokenizer.json");
        }
        let tok = Tokenizer::from_file(&p)
            .map_err(|e| EvalError::Tokenizer(format!("{}: {e}", p.display())))?;
        Ok(Self::new(tok, settings))
    }

    /// Wrap a loaded tokenizer and add the missing special tokens.
    pub fn new(mut tok: Tokenizer, settings: &CompressSettings) -> Self {
        for s in settings.special_tokens() {
            if tok.token_to_id(&s).is_none() {
                tok.add_special_tokens(&[AddedToken::from(s, true)]);
            }
        }
        Self { tok }
    }

    /// Id of a token (added or in the vocabulary).
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.tok.token_to_id(s)
    }

    /// Number of tokens incl. added ones.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Encode text like HF's `tokenizer(text)` (default special-token handling: the post-processor,
    /// if any, runs).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tok
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EvalError::Tokenizer(e.to_string()))
    }
}
