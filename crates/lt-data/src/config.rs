//! The compression config (`configs/LightThinker/<model>/v1.json`) and the special-token list it implies.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// The chat template of a compression config.
///
/// Invariant (checked by [`CompressConfig::validate`]):
/// `prefix + "{system}" + middle + "{question}" + suffix == complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// `qwen` or `llama`; selects the special-token list (qwen adds `<|im_end|>`/`<|im_start|>` candidates).
    #[serde(default = "default_model")]
    pub model: String,
    /// Text between the BOS string and the system prompt.
    pub prefix: String,
    /// Text between the system prompt and the question.
    pub middle: String,
    /// Text after the question (opens the assistant turn).
    pub suffix: String,
    /// The whole template with `{system}` and `{question}` placeholders.
    pub complete: String,
}

fn default_model() -> String {
    "qwen".to_string()
}

fn default_true() -> bool {
    true
}

/// How a prompt or an output is cut into compression units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// One unit per sentence (prompt: `system_list`/`question_list` element; output: `thoughts_list` element).
    Sentence,
    /// Fixed chunks of `step` tokens.
    Token,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "sentence" => Some(Level::Sentence),
            "token" => Some(Level::Token),
            _ => None,
        }
    }
}

/// `prompt` section: how the prompt is compressed in the prompt-compressing modes (`aug`, `recover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// Keep the template pieces as uncompressed segments and compress only system/question text.
    pub save_template: bool,
    /// `sentence` or `token`.
    pub level: String,
    /// Chunk size for `token` level (must be 1 at `sentence` level).
    pub step: usize,
    /// Cache tokens per compression.
    pub n_token: usize,
    /// Name template of the cache tokens, with `{t_id}`.
    pub token_name: String,
    /// Description template (embedding initialisation), with `{t_id}`.
    pub token_desp: String,
}

/// `output` section: how the model's response is compressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputConfig {
    /// `sentence` (one compression per thought) or `token` (every `step` tokens of `gt_output`).
    pub level: String,
    /// Chunk size for `token` level.
    pub step: usize,
    /// Cache tokens per compression (C).
    pub n_token: usize,
    /// Name template of the cache tokens, with `{t_id}`.
    pub token_name: String,
    /// Description template, with `{t_id}`.
    pub token_desp: String,
    /// Read by the reference, never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_compress_step: Option<usize>,
}

/// A LightThinker compression config (serde of `configs/LightThinker/<model>/v1.json`).
///
/// ```
/// let cfg: lt_data::CompressConfig = serde_json::from_str(r#"{
///   "template": {"model": "qwen", "prefix": "system\n", "middle": "<|im_end|>\n<|im_start|>user\n",
///     "suffix": "<|im_end|>\n<|im_start|>assistant\n",
///     "complete": "system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"},
///   "prompt": {"save_template": true, "level": "sentence", "step": 1, "n_token": 9,
///     "token_name": "<|o_{t_id}|>", "token_desp": "compress output {t_id}"},
///   "output": {"level": "sentence", "step": 1, "n_token": 9,
///     "token_name": "<|o_{t_id}|>", "token_desp": "compress output {t_id}"}}"#).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.output_cache_tokens()[8], "<|o_8|>");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressConfig {
    /// Chat template.
    pub template: Template,
    /// Prompt compression.
    pub prompt: PromptConfig,
    /// Output compression.
    pub output: OutputConfig,
    /// Prompt and output share their cache tokens (default true).
    #[serde(default = "default_true")]
    pub share: bool,
}

/// One special-token candidate of the reference's list: its string and its description
/// (the text whose token embeddings are averaged to initialise the new row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    /// Token string.
    pub token: String,
    /// Description used for embedding initialisation.
    pub description: String,
}

/// The `<|splitter|>` token: the model emits it at the end of each thought.
pub const SPLITTER: &str = "<|splitter|>";
/// The `<|continue|>` token that follows each output cache block.
pub const CONTINUE: &str = "<|continue|>";
/// The `<|recover|>` token that opens a reconstruction block.
pub const RECOVER: &str = "<|recover|>";
/// Thought/solution markers (ordinary labelled tokens).
pub const BEGIN_OF_THOUGHT: &str = "<|begin_of_thought|>";
/// See [`BEGIN_OF_THOUGHT`].
pub const END_OF_THOUGHT: &str = "<|end_of_thought|>";
/// See [`BEGIN_OF_THOUGHT`].
pub const BEGIN_OF_SOLUTION: &str = "<|begin_of_solution|>";
/// See [`BEGIN_OF_THOUGHT`].
pub const END_OF_SOLUTION: &str = "<|end_of_solution|>";
/// The two-newline string the reference registers as a special token.
pub const DOUBLE_NEWLINE: &str = "\n\n";

impl CompressConfig {
    /// Read and validate a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let cfg: CompressConfig = serde_json::from_str(&text).map_err(|e| DataError::Parse {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|e| match e {
            DataError::Config { rule, message, .. } => DataError::Config {
                path: Some(path.to_path_buf()),
                rule,
                message,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// Check the reference's assertions (template invariant, share rule, sentence-level step) and the
    /// stricter rules of this port (known levels and models, `{t_id}` in names, at least one cache token).
    pub fn validate(&self) -> Result<()> {
        let err = |rule: &'static str, message: String| {
            Err(DataError::Config {
                path: None,
                rule,
                message,
            })
        };
        let t = &self.template;
        let joined = format!("{}{{system}}{}{{question}}{}", t.prefix, t.middle, t.suffix);
        if joined != t.complete {
            return err(
                "template-invariant",
                format!(
                    "prefix + \"{{system}}\" + middle + \"{{question}}\" + suffix must equal complete; got {joined:?} vs {:?}",
                    t.complete
                ),
            );
        }
        if t.model != "qwen" && t.model != "llama" {
            return err(
                "template-model",
                format!(
                    "template.model must be `qwen` or `llama`, got {:?}",
                    t.model
                ),
            );
        }
        let Some(plevel) = Level::parse(&self.prompt.level) else {
            return err(
                "level",
                format!(
                    "prompt.level must be `sentence` or `token`, got {:?} (the reference silently builds an empty prompt)",
                    self.prompt.level
                ),
            );
        };
        if Level::parse(&self.output.level).is_none() {
            return err(
                "level",
                format!(
                    "output.level must be `sentence` or `token`, got {:?}",
                    self.output.level
                ),
            );
        }
        if plevel == Level::Sentence && self.prompt.step != 1 {
            return err(
                "sentence-step",
                format!(
                    "prompt.step must be 1 at sentence level, got {}",
                    self.prompt.step
                ),
            );
        }
        if plevel == Level::Token && self.prompt.step == 0 {
            return err(
                "token-step",
                "prompt.step must be >= 1 at token level".into(),
            );
        }
        if self.output_level() == Level::Token && self.output.step == 0 {
            return err(
                "token-step",
                "output.step must be >= 1 at token level".into(),
            );
        }
        for (what, n) in [
            ("prompt.n_token", self.prompt.n_token),
            ("output.n_token", self.output.n_token),
        ] {
            if n == 0 {
                return err("n-token", format!("{what} must be >= 1"));
            }
        }
        for (what, name) in [
            ("prompt.token_name", &self.prompt.token_name),
            ("output.token_name", &self.output.token_name),
        ] {
            if !name.contains("{t_id}") {
                return err(
                    "token-name",
                    format!("{what} must contain `{{t_id}}`, got {name:?}"),
                );
            }
        }
        let same_templates = self.prompt.token_name == self.output.token_name
            && self.prompt.token_desp == self.output.token_desp;
        if self.share {
            if !same_templates {
                return err(
                    "share",
                    "share=true requires identical prompt/output token_name and token_desp".into(),
                );
            }
            if self.prompt.n_token != self.output.n_token {
                return err(
                    "share",
                    format!(
                        "share=true requires prompt.n_token == output.n_token (the cache-token lists must be identical), got {} vs {}",
                        self.prompt.n_token, self.output.n_token
                    ),
                );
            }
        } else if self.prompt.token_name == self.output.token_name {
            return err(
                "share",
                "share=false requires different prompt/output token_name templates".into(),
            );
        }
        Ok(())
    }

    /// Prompt level. Assumes a validated config (unknown strings map to `Sentence`).
    pub fn prompt_level(&self) -> Level {
        Level::parse(&self.prompt.level).unwrap_or(Level::Sentence)
    }

    /// Output level; the reference treats every non-`token` value as sentence level.
    pub fn output_level(&self) -> Level {
        if self.output.level == "token" {
            Level::Token
        } else {
            Level::Sentence
        }
    }

    /// `<|o_0|>`…: the prompt cache-token names.
    pub fn prompt_cache_tokens(&self) -> Vec<String> {
        names(&self.prompt.token_name, self.prompt.n_token)
    }

    /// The output cache-token names (the prompt ones when `share`).
    pub fn output_cache_tokens(&self) -> Vec<String> {
        if self.share {
            self.prompt_cache_tokens()
        } else {
            names(&self.output.token_name, self.output.n_token)
        }
    }

    /// Fill the template: `prefix + system + middle + question + suffix`
    /// (equal to `complete.format(system=…, question=…)` by the template invariant, without
    /// re-substituting placeholders that occur inside the texts).
    pub fn fill_template(&self, system: &str, question: &str) -> String {
        let t = &self.template;
        let mut s = String::with_capacity(
            t.prefix.len() + system.len() + t.middle.len() + question.len() + t.suffix.len(),
        );
        s.push_str(&t.prefix);
        s.push_str(system);
        s.push_str(&t.middle);
        s.push_str(question);
        s.push_str(&t.suffix);
        s
    }

    /// The reference's special-token candidates, in its exact order, with descriptions:
    /// splitter, continue, recover, the four thought/solution markers, `"\n\n"`, (qwen only) `<|im_end|>`,
    /// `<|im_start|>`, the prompt cache tokens, then (only when `share=false`) the output cache tokens.
    pub fn special_tokens(&self) -> Vec<SpecialToken> {
        let st = |t: &str, d: &str| SpecialToken {
            token: t.to_string(),
            description: d.to_string(),
        };
        let mut v = vec![
            // The reference first sets "it's time to compress", then overwrites it with "\n\n".
            st(SPLITTER, "\n\n"),
            st(CONTINUE, "continue to output according to previous content"),
            st(RECOVER, "recover the token according to previous content"),
            st(BEGIN_OF_THOUGHT, "begin of thought"),
            st(END_OF_THOUGHT, "end of thought"),
            st(BEGIN_OF_SOLUTION, "begin of solution"),
            st(END_OF_SOLUTION, "end of solution"),
            st(DOUBLE_NEWLINE, "\n\n"),
        ];
        if self.template.model == "qwen" {
            v.push(st("<|im_end|>", "end of turn"));
            v.push(st("<|im_start|>", "start of turn"));
        }
        for i in 0..self.prompt.n_token {
            v.push(SpecialToken {
                token: fill_tid(&self.prompt.token_name, i),
                description: fill_tid(&self.prompt.token_desp, i),
            });
        }
        if !self.share {
            for i in 0..self.output.n_token {
                v.push(SpecialToken {
                    token: fill_tid(&self.output.token_name, i),
                    description: fill_tid(&self.output.token_desp, i),
                });
            }
        }
        v
    }
}

fn fill_tid(template: &str, i: usize) -> String {
    template.replace("{t_id}", &i.to_string())
}

fn names(template: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| fill_tid(template, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> CompressConfig {
        serde_json::from_str(include_str!("../tests/fixtures/configs/v1.json")).unwrap()
    }

    #[test]
    fn v1_is_valid_and_lists_tokens_in_reference_order() {
        let cfg = v1();
        cfg.validate().unwrap();
        assert!(cfg.share);
        let toks: Vec<String> = cfg.special_tokens().into_iter().map(|t| t.token).collect();
        assert_eq!(toks.len(), 8 + 2 + 9);
        assert_eq!(toks[0], SPLITTER);
        assert_eq!(toks[7], "\n\n");
        assert_eq!(toks[8], "<|im_end|>");
        assert_eq!(toks[18], "<|o_8|>");
    }

    #[test]
    fn template_invariant_violation_names_the_rule() {
        let mut cfg = v1();
        cfg.template.middle.push('x');
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("template-invariant"), "{e}");
    }

    #[test]
    fn share_requires_equal_cache_lists() {
        let mut cfg = v1();
        cfg.output.n_token = 2;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("share"), "{e}");
        cfg.share = false;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("share"), "{e}");
        cfg.output.token_name = "<|out_{t_id}|>".into();
        cfg.validate().unwrap();
        assert_eq!(cfg.special_tokens().len(), 19 + 2);
    }

    #[test]
    fn unknown_level_and_sentence_step_are_rejected() {
        let mut cfg = v1();
        cfg.prompt.level = "paragraph".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("level"));
        let mut cfg = v1();
        cfg.prompt.step = 2;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sentence-step"));
    }
}
