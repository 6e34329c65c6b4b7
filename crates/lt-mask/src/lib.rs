//! `lt-mask`: LightThinker compression attention masks.
//!
//! NOTE (foundation stub): the public names below are the contract other crates code
//! against (`lt-data` hands [`Layout`]s in, `lt-infer` asks for local step masks).
//! The bodies are filled by the lt-mask issue.
use serde::{Deserialize, Serialize};

/// Whether a compressed segment belongs to the prompt or to the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    /// The reference's `compressed-prompt`.
    #[serde(rename = "compressed-prompt")]
    Prompt,
    /// The reference's `compressed-output`.
    #[serde(rename = "compressed-output")]
    Output,
}

/// One compressed segment: the reference's locate tuple `(start, end, l_inst, n_comp, n_continue)`.
///
/// Columns `[start, end)` are the thought, `[end, end+l_inst)` the compress instruction,
/// `[end+l_inst, end+l_inst+n_comp)` the cache (gist) tokens and then `n_continue` `<|continue|>` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThoughtBlock {
    /// First token of the compressed segment (S).
    pub start: usize,
    /// One past its last token (E); may exceed the sequence length after truncation.
    pub end: usize,
    /// Length of the compress instruction between the segment and the cache tokens (L).
    pub l_inst: usize,
    /// Number of cache tokens (C).
    pub n_comp: usize,
    /// Number of `<|continue|>` tokens after the cache tokens (N).
    pub n_continue: usize,
    /// Prompt or output segment.
    pub kind: BlockKind,
}

impl ThoughtBlock {
    /// I = end + l_inst: first cache token.
    pub fn cache_start(&self) -> usize {
        self.end + self.l_inst
    }
    /// Z = I + n_comp: one past the last cache token.
    pub fn cache_end(&self) -> usize {
        self.cache_start() + self.n_comp
    }
    /// U = Z + n_continue: one past the block.
    pub fn block_end(&self) -> usize {
        self.cache_end() + self.n_continue
    }
}

/// The five mask flags of the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskFlags {
    /// Cache rows see only the current thought (and their own block).
    pub see_current: bool,
    /// Cache tokens of one block see each other fully.
    pub bi_directional: bool,
    /// Inside a block each cache token sees only itself.
    pub diagonal: bool,
    /// Hide the previous block's `<|continue|>` from later tokens.
    pub exclude_continue: bool,
    /// Compress the prompt during prefill (false = plain causal prefill).
    pub prefill_compress: bool,
}

/// A sequence of `len` tokens with its compressed blocks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Number of real (unpadded) tokens T.
    pub len: usize,
    /// Blocks in sequence order.
    pub blocks: Vec<ThoughtBlock>,
}
