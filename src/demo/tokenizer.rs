//! The demo's tokenizer: a word-level vocabulary trained with the `tokenizers` crate on the task corpus.
//!
//! Pre-tokenisation splits words (with their leading space), single digits and single punctuation marks
//! (`" now"`, `" 3"`, `"8"`, `","`), then maps bytes like GPT-2/Qwen (`ByteLevel`), so decoding restores the
//! text exactly. Every labelled step of a prompt (`" C+5"`) and the boxed-answer instruction are single added
//! tokens: the prompt, which every generated token attends to, stays short.
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use super::task::{label, BOXED_INSTRUCTION};

/// Beginning-of-sequence token of the demo model.
pub const BOS: &str = "<|bos|>";
/// End-of-sequence token of the demo model.
pub const EOS: &str = "<|eos|>";
/// Unknown-word token.
pub const UNK: &str = "<|unk|>";

const SPLIT: &str = r" ?[A-Za-z]+| ?[0-9]|\n| ?[^\sA-Za-z0-9]|\s+";

/// The added tokens for the labelled steps of prompts with up to `max_steps` steps: `" A+1"` … `" I="`.
pub fn step_tokens(max_steps: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..max_steps {
        for sign in ['+', '-'] {
            for d in 1..=9 {
                out.push(format!(" {}{sign}{d}", label(i)));
            }
        }
    }
    for i in 0..=max_steps {
        out.push(format!(" {}=", label(i)));
    }
    out
}

/// Train the word-level tokenizer on `corpus` and save it as a HF `tokenizer.json` at `path`.
pub fn train_tokenizer<'a>(
    corpus: impl Iterator<Item = &'a str> + Send,
    max_steps: usize,
    path: &Path,
) -> anyhow::Result<Tokenizer> {
    let model = WordLevel::builder()
        .unk_token(UNK.to_string())
        .build()
        .map_err(|e| anyhow::anyhow!("word-level model: {e}"))?;
    let mut tok = Tokenizer::new(ModelWrapper::WordLevel(model));
    let split = Split::new(
        SplitPattern::Regex(SPLIT.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow::anyhow!("split regex: {e}"))?;
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    let specials: Vec<AddedToken> = [UNK, BOS, EOS]
        .iter()
        .map(|s| AddedToken::from(*s, true).normalized(false))
        .collect();
    let mut trainer = TrainerWrapper::WordLevelTrainer(
        WordLevelTrainer::builder()
            .show_progress(false)
            .special_tokens(specials)
            .build()
            .map_err(|e| anyhow::anyhow!("trainer: {e}"))?,
    );
    tok.train(&mut trainer, corpus)
        .map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    let mut added: Vec<AddedToken> = step_tokens(max_steps)
        .into_iter()
        .map(|s| AddedToken::from(s, false).normalized(false))
        .collect();
    added.push(AddedToken::from(BOXED_INSTRUCTION, false).normalized(false));
    tok.add_tokens(&added);
    let tmp = path.with_extension("json.tmp");
    tok.save(&tmp, true)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::super::task::{Problem, ProblemStream, TaskShape};
    use super::*;

    #[test]
    fn word_level_tokens_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let probs: Vec<Problem> = ProblemStream::new(1, TaskShape::default())
            .take(300)
            .collect();
        let texts: Vec<String> = probs
            .iter()
            .flat_map(|p| {
                let mut t = p.thoughts();
                t.push(format!("{BOXED_INSTRUCTION} {}", p.question()));
                t
            })
            .collect();
        let path = dir.path().join("tokenizer.json");
        let tok = train_tokenizer(texts.iter().map(|s| s.as_str()), 8, &path).unwrap();
        let reloaded = Tokenizer::from_file(&path).unwrap();
        let p = &probs[0];
        let q = format!("{BOXED_INSTRUCTION} {}", p.question());
        let enc = reloaded.encode(q.as_str(), false).unwrap();
        // instruction + 2 digits (or 1) + one token per step + the answer label
        assert!(
            enc.get_ids().len() <= 1 + 2 + p.steps.len() + 1,
            "{:?}",
            enc.get_tokens()
        );
        let th = &p.thoughts()[0];
        let enc = tok.encode(th.as_str(), false).unwrap();
        assert!(!enc.get_ids().contains(&tok.token_to_id(UNK).unwrap()));
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), *th);
        assert_eq!(enc.get_tokens()[1], "ĠA");
    }
}
