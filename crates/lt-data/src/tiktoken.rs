//! Convert a tiktoken BPE vocabulary (`*.tiktoken`: `base64(token) rank` per line) into a HF
//! `tokenizer.json` (byte-level BPE), the way HF's `TikTokenConverter` and `scripts/make_qwen_tokenizer.py`
//! do it: merges are recovered from the ranks.
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde_json::{json, Value};
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};

/// The Qwen2 pre-tokenizer regex.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The 22 Qwen2.5 special tokens, registered from id 151643 on.
pub const QWEN2_SPECIALS: [&str; 22] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut nbits) = (0u32, 0u32);
    for &c in bytes {
        acc = (acc << 6) | val(c)?;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
            acc &= (1 << nbits) - 1;
        }
    }
    Some(out)
}

/// GPT-2's byte → printable-unicode table.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// Read a `*.tiktoken` file into `bytes → rank`.
pub fn read_tiktoken(path: &Path) -> Result<HashMap<Vec<u8>, u32>> {
    let mut ranks = HashMap::new();
    for (i, line) in crate::io::open_lines(path)?.lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let perr = |m: &str| DataError::Parse {
            path: path.to_path_buf(),
            line: Some(i + 1),
            message: m.to_string(),
        };
        let mut it = line.split_whitespace();
        let (Some(tok), Some(rank), None) = (it.next(), it.next(), it.next()) else {
            return Err(perr("expected `base64-token rank`"));
        };
        let bytes = b64_decode(tok).ok_or_else(|| perr("invalid base64 token"))?;
        let rank: u32 = rank.parse().map_err(|_| perr("invalid rank"))?;
        ranks.insert(bytes, rank);
    }
    Ok(ranks)
}

/// Build a byte-level BPE `tokenizer.json` (as a JSON value) from tiktoken ranks: NFC normalizer,
/// `Split(pattern, isolated)` + `ByteLevel(use_regex=false)` pre-tokenizer, byte-level post-processor and
/// decoder, `ignore_merges=true`.
pub fn tokenizer_json_from_ranks(ranks: &HashMap<Vec<u8>, u32>, pattern: &str) -> Value {
    let table = bytes_to_unicode();
    let to_str = |b: &[u8]| b.iter().map(|&x| table[x as usize]).collect::<String>();
    let mut vocab = serde_json::Map::new();
    // (rank of the merged token, rank of left, rank of right, left, right)
    type Merge<'a> = (u32, u32, u32, &'a [u8], &'a [u8]);
    let mut merges: Vec<Merge> = Vec::new();
    for (tok, &rank) in ranks {
        vocab.insert(to_str(tok), json!(rank));
        for i in 1..tok.len() {
            let (l, r) = tok.split_at(i);
            if let (Some(&rl), Some(&rr)) = (ranks.get(l), ranks.get(r)) {
                merges.push((rank, rl, rr, l, r));
            }
        }
    }
    merges.sort_unstable_by_key(|m| (m.0, m.1, m.2));
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| json!([to_str(m.3), to_str(m.4)]))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": merges}
    })
}

/// Convert a `*.tiktoken` file into a `Tokenizer`, registering `specials` (special, not normalized, no
/// strip) after the BPE vocabulary.
pub fn convert_tiktoken(path: &Path, pattern: &str, specials: &[&str]) -> Result<Tokenizer> {
    let ranks = read_tiktoken(path)?;
    let json = tokenizer_json_from_ranks(&ranks, pattern).to_string();
    let mut tok: Tokenizer = json.parse().map_err(|e| {
        DataError::Tokenizer(format!("building tokenizer from {}: {e}", path.display()))
    })?;
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true).normalized(false))
        .collect();
    tok.add_special_tokens(&added);
    Ok(tok)
}

/// Convert and save atomically as pretty-printed `tokenizer.json` (same layout as the Python `tokenizers`).
pub fn convert_tiktoken_to_file(
    path: &Path,
    pattern: &str,
    specials: &[&str],
    out: &Path,
) -> Result<()> {
    let tok = convert_tiktoken(path, pattern, specials)?;
    let s = tok
        .to_string(true)
        .map_err(|e| DataError::Tokenizer(e.to_string()))?;
    crate::io::write_atomic(out, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_examples() {
        assert_eq!(b64_decode("IQ==").unwrap(), b"!");
        assert_eq!(b64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(b64_decode("IGJ5dGVz").unwrap(), b" bytes");
        assert!(b64_decode("a$").is_none());
    }

    #[test]
    fn tiny_vocab_converts_and_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tiktoken");
        // bytes: a, b, " ", ab, " ab"
        let lines = ["YQ== 0", "Yg== 1", "IA== 2", "YWI= 3", "IGFi 4"];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let tok = convert_tiktoken(&p, QWEN2_PATTERN, &["<|end|>"]).unwrap();
        let enc = tok.encode_fast("ab ab<|end|>", false).unwrap();
        assert_eq!(enc.get_ids(), &[3, 4, 5]);
        assert_eq!(tok.decode(&[3, 4], false).unwrap(), "ab ab");
        assert_eq!(bytes_to_unicode()[b' ' as usize], 'Ġ');
        assert_eq!(bytes_to_unicode()[b'\n' as usize], 'Ċ');
    }
}
