//! The HF tokenizer wrapper with the LightThinker special tokens.
use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

use crate::config::CompressConfig;
use crate::error::{DataError, Result};

/// A `tokenizers::Tokenizer` plus the LightThinker special tokens added to it.
///
/// Segments are encoded on their own and **never** get BOS/EOS added (the reference's intent,
/// `add_special_tokens=false`); decoding keeps special tokens.
///
/// ```no_run
/// # fn main() -> Result<(), lt_data::DataError> {
/// let cfg = lt_data::CompressConfig::from_file("configs/LightThinker/qwen/v1.json")?;
/// let mut tok = lt_data::LtTokenizer::from_file(".cache/qwen2.5-tokenizer/tokenizer.json")?;
/// let added = tok.add_special_tokens(&cfg);
/// assert_eq!(added[0].1, 151665); // <|splitter|>
/// assert_eq!(tok.len(), 151682);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LtTokenizer {
    inner: Tokenizer,
    added: Vec<(String, u32, String)>,
}

impl std::fmt::Debug for LtTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtTokenizer")
            .field("len", &self.len())
            .field("added", &self.added)
            .finish()
    }
}

impl LtTokenizer {
    /// Load a `tokenizer.json`, or the `tokenizer.json` inside a model directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file: PathBuf = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(DataError::Tokenizer(format!(
                "{}: no such tokenizer.json",
                file.display()
            )));
        }
        let inner = Tokenizer::from_file(&file)
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", file.display())))?;
        Ok(Self::from_tokenizer(inner))
    }

    /// Wrap an already built tokenizer.
    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self {
            inner,
            added: Vec::new(),
        }
    }

    /// Add the config's special tokens that the vocabulary lacks, in the reference's order, as special,
    /// non-normalized, non-stripped tokens. Returns `(token, id, description)` of every token added by
    /// this call (ids are consecutive from the previous [`len`](Self::len)).
    pub fn add_special_tokens(&mut self, cfg: &CompressConfig) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        for st in cfg.special_tokens() {
            if self.inner.token_to_id(&st.token).is_some() {
                continue;
            }
            let tok = AddedToken::from(st.token.clone(), true)
                .normalized(false)
                .lstrip(false)
                .rstrip(false)
                .single_word(false);
            self.inner.add_special_tokens(&[tok]);
            match self.inner.token_to_id(&st.token) {
                Some(id) => out.push((st.token, id, st.description)),
                None => tracing::error!(token = %st.token, "special token could not be added"),
            }
        }
        self.added.extend(out.iter().cloned());
        out
    }

    /// Every token added so far by [`add_special_tokens`](Self::add_special_tokens): `(token, id, description)`.
    pub fn added_tokens(&self) -> &[(String, u32, String)] {
        &self.added
    }

    /// For each added token, its id and the ids of its description encoded with the expanded tokenizer
    /// (what `lt-model`'s `resize_vocab` averages to initialise the new embedding rows).
    pub fn embedding_init(&self) -> Result<Vec<(usize, Vec<i64>)>> {
        self.added
            .iter()
            .map(|(_, id, desc)| {
                let ids = self.try_encode(desc)?;
                Ok((*id as usize, ids.into_iter().map(i64::from).collect()))
            })
            .collect()
    }

    /// Encode one segment without adding special tokens.
    pub fn try_encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer(format!("encoding {text:?}: {e}")))
    }

    /// Encode one segment without adding special tokens (empty on a tokenizer failure, which is logged;
    /// use [`try_encode`](Self::try_encode) to see the error).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.try_encode(text).unwrap_or_else(|e| {
            tracing::error!("{e}");
            Vec::new()
        })
    }

    /// Decode, keeping special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_else(|e| {
            tracing::error!("decoding: {e}");
            String::new()
        })
    }

    /// Id of a token string (added tokens included), `None` when unknown.
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens (`len(tokenizer)` in HF).
    pub fn len(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Save the (expanded) tokenizer as `tokenizer.json`, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        crate::io::write_atomic(path, json.as_bytes())
    }
}
