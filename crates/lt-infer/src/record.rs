//! Inference records (one JSON line per example, the reference's keys in its order plus ours),
//! Python-`jsonlines`-style formatting, and a crash-safe append-only writer with resume.
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::InferError;

/// One output line. The first eleven keys are the reference's, in its order; the rest are ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Index in the reader's flattened list (global, not shard-relative).
    pub idx: usize,
    /// `extract_answer(output)`.
    pub model_answer: String,
    /// The item's answer field.
    pub gt_answer: serde_json::Value,
    /// The reference's quick check.
    pub acc_state: bool,
    /// Decoded output record (special tokens kept).
    pub output: String,
    /// Decoded prompt record.
    pub prompt: String,
    /// Prompt record length.
    pub input_len: usize,
    /// Output record length (incl. triggers and the final stop token).
    pub output_len: usize,
    /// Wall-clock seconds (no 1 s sleep, unlike the reference).
    pub infer_time: f64,
    /// The quick check's debug string.
    pub comp_pattern: String,
    /// Peak KV length in tokens.
    pub max_token: usize,
    /// The output ids.
    #[serde(default)]
    pub output_ids: Vec<i64>,
    /// Number of compressions.
    #[serde(default)]
    pub n_compress: usize,
    /// Peak KV bytes of this sequence.
    #[serde(default)]
    pub peak_kv_bytes: usize,
    /// Exact Dep from the cache trace.
    #[serde(default)]
    pub dep: u64,
    /// `eos`, `max_new_tokens` or `capacity`.
    #[serde(default)]
    pub stop: String,
    /// KV length after each fed output token (for plots).
    #[serde(default)]
    pub kv_trace: Vec<usize>,
}

/// serde_json formatter writing Python's `json.dumps` default separators `", "` and `": "`.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// One JSON line (no newline) the way Python's `jsonlines` writes it (`ensure_ascii=False`).
///
/// ```
/// let s = lt_infer::record::to_py_json(&serde_json::json!({"a": [1, 2], "b": "é"})).unwrap();
/// assert_eq!(s, r#"{"a": [1, 2], "b": "é"}"#);
/// ```
pub fn to_py_json<T: Serialize>(v: &T) -> Result<String, serde_json::Error> {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyFormatter);
    v.serialize(&mut ser)?;
    Ok(String::from_utf8(buf).expect("serde_json writes UTF-8"))
}

/// Append-only JSONL writer that survives `kill -9`: every record is one `write` + `fsync`, and on
/// open a torn last line is cut off and the indices already present are collected, so a rerun
/// skips them (each idx ends up exactly once).
#[derive(Debug)]
pub struct RecordWriter {
    path: PathBuf,
    file: File,
    done: BTreeSet<usize>,
}

impl RecordWriter {
    /// Open (creating parent directories) and scan an existing file for completed indices.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, InferError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| InferError::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| InferError::io(&path, e))?;
        let mut done = BTreeSet::new();
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&file);
            let mut line = String::new();
            let mut lineno = 0;
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| InferError::io(&path, e))?;
                if n == 0 {
                    break;
                }
                lineno += 1;
                if !line.ends_with('\n') {
                    tracing::warn!(path = %path.display(), line = lineno, "dropping a torn last line (interrupted write)");
                    break;
                }
                let v: serde_json::Value =
                    serde_json::from_str(line.trim_end()).map_err(|e| InferError::Record {
                        path: path.clone(),
                        line: lineno,
                        msg: e.to_string(),
                    })?;
                let idx =
                    v.get("idx")
                        .and_then(|i| i.as_u64())
                        .ok_or_else(|| InferError::Record {
                            path: path.clone(),
                            line: lineno,
                            msg: "missing integer field `idx`".into(),
                        })?;
                done.insert(idx as usize);
                good_len += n as u64;
            }
        }
        let len = file.metadata().map_err(|e| InferError::io(&path, e))?.len();
        if len != good_len {
            file.set_len(good_len)
                .map_err(|e| InferError::io(&path, e))?;
            file.sync_all().map_err(|e| InferError::io(&path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| InferError::io(&path, e))?;
        Ok(RecordWriter { path, file, done })
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `idx` already has a record.
    pub fn is_done(&self, idx: usize) -> bool {
        self.done.contains(&idx)
    }

    /// Indices already written.
    pub fn done(&self) -> &BTreeSet<usize> {
        &self.done
    }

    /// Append one record durably (single write + fsync). A record whose idx is present is skipped.
    pub fn append(&mut self, rec: &Record) -> Result<(), InferError> {
        if self.done.contains(&rec.idx) {
            return Ok(());
        }
        let mut line = to_py_json(rec).map_err(|e| InferError::Record {
            path: self.path.clone(),
            line: self.done.len() + 1,
            msg: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| InferError::io(&self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| InferError::io(&self.path, e))?;
        self.done.insert(rec.idx);
        Ok(())
    }
}

/// Read every record of a JSONL file.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Record>, InferError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| InferError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| InferError::Record {
                path: path.to_path_buf(),
                line: i + 1,
                msg: e.to_string(),
            })
        })
        .collect()
}

/// The reference's shard `[(index−1)·step, index·step)` of `n` items (`step = n / split_size`,
/// 1-based `index`, the last shard takes the remainder); `None`s = everything.
pub fn shard_range(
    n: usize,
    split_size: Option<usize>,
    index: Option<usize>,
) -> Result<std::ops::Range<usize>, InferError> {
    match (split_size, index) {
        (None, None) => Ok(0..n),
        (Some(s), Some(i)) if s >= 1 && i >= 1 && i <= s => {
            let step = n / s;
            let start = (i - 1) * step;
            let end = if i == s { n } else { i * step };
            Ok(start..end)
        }
        (Some(s), Some(i)) => Err(InferError::Config(format!(
            "--index {i} must be in 1..={s} (split size {s})"
        ))),
        _ => Err(InferError::Config(
            "--split-size and --index must be given together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_everything_once() {
        for n in 0..20 {
            let mut all = Vec::new();
            for i in 1..=4 {
                all.extend(shard_range(n, Some(4), Some(i)).unwrap());
            }
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
        assert_eq!(shard_range(10, Some(4), Some(4)).unwrap(), 6..10);
        assert!(shard_range(10, Some(4), None).is_err());
        assert!(shard_range(10, Some(4), Some(5)).is_err());
    }

    fn rec(idx: usize) -> Record {
        Record {
            idx,
            model_answer: "error".into(),
            gt_answer: serde_json::json!("7"),
            acc_state: false,
            output: "a <|splitter|>".into(),
            prompt: "p".into(),
            input_len: 1,
            output_len: 2,
            infer_time: 0.5,
            comp_pattern: "`error` <=> `7`".into(),
            max_token: 3,
            output_ids: vec![1, 2],
            n_compress: 0,
            peak_kv_bytes: 0,
            dep: 0,
            stop: "eos".into(),
            kv_trace: vec![2],
        }
    }

    #[test]
    fn torn_line_is_dropped_and_idx_deduped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.jsonl");
        {
            let mut w = RecordWriter::open(&p).unwrap();
            w.append(&rec(0)).unwrap();
            w.append(&rec(1)).unwrap();
        }
        // simulate a kill in the middle of a write
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"idx\": 2, \"model_ans").unwrap();
        drop(f);
        let mut w = RecordWriter::open(&p).unwrap();
        assert_eq!(w.done().iter().copied().collect::<Vec<_>>(), vec![0, 1]);
        w.append(&rec(1)).unwrap();
        w.append(&rec(2)).unwrap();
        let recs = read_records(&p).unwrap();
        assert_eq!(
            recs.iter().map(|r| r.idx).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("{\"idx\": 0, \"model_answer\": \"error\", \"gt_answer\": \"7\""));
    }
}
