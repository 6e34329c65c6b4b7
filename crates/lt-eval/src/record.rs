//! Inference records (one JSON object per line) and shard merging.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};

/// One inference record, as written by the reference driver (`idx, model_answer, gt_answer, acc_state,
/// output, prompt, input_len, output_len, infer_time, comp_pattern, max_token`) plus the optional fields
/// written by `lt-infer` (`output_ids, n_compress, peak_kv_bytes, dep, kv_trace`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Index of the question in the flattened eval data (global, not shard-relative).
    pub idx: i64,
    /// The extracted answer as stored in the record (`None` when absent).
    pub model_answer: Option<String>,
    /// The gold answer as stored in the record.
    pub gt_answer: Option<String>,
    /// The driver's quick correctness check (a progress indicator, not the judged accuracy).
    pub acc_state: Option<bool>,
    /// The decoded generation (first present of `old_output`, `output`, `model_output`).
    pub output: String,
    /// The decoded prompt.
    pub prompt: String,
    /// Prompt length in tokens (as generated).
    pub input_len: Option<usize>,
    /// Output length in tokens (as generated; includes splitters and the final stop token).
    pub output_len: Option<usize>,
    /// Wall-clock seconds of the generation.
    pub infer_time: f64,
    /// The driver's debug comparison string.
    pub comp_pattern: Option<String>,
    /// Peak KV length in tokens during the generation.
    pub max_token: Option<usize>,
    /// Generated ids (lt-infer): every model-generated token incl. splitters and the final stop token.
    pub output_ids: Option<Vec<u32>>,
    /// Number of compressions performed (lt-infer).
    pub n_compress: Option<usize>,
    /// Peak KV bytes (lt-infer).
    pub peak_kv_bytes: Option<u64>,
    /// Exact Dep from the real cache trace (lt-infer).
    pub dep: Option<f64>,
    /// KV length after each generated token (lt-infer).
    pub kv_trace: Option<Vec<usize>>,
}

fn field_err(path: &Path, idx: i64, field: &str, msg: impl Into<String>) -> EvalError {
    EvalError::Field {
        path: path.to_path_buf(),
        idx,
        field: field.to_string(),
        msg: msg.into(),
    }
}

fn opt_usize(v: &Value, path: &Path, idx: i64, field: &str) -> Result<Option<usize>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|u| Some(u as usize)).ok_or_else(|| {
            field_err(
                path,
                idx,
                field,
                format!("expected a non-negative integer, got {x}"),
            )
        }),
    }
}

fn opt_string(v: &Value, path: &Path, idx: i64, field: &str) -> Result<Option<String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // gt_answer may be a number (GPQA converts to str in the reference)
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(if *b { "True" } else { "False" }.to_string())),
        Some(x) => Err(field_err(
            path,
            idx,
            field,
            format!("expected a string, got {x}"),
        )),
    }
}

fn opt_vec<T: for<'de> Deserialize<'de>>(
    v: &Value,
    path: &Path,
    idx: i64,
    field: &str,
) -> Result<Option<Vec<T>>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => serde_json::from_value(x.clone()).map(Some).map_err(|e| {
            field_err(
                path,
                idx,
                field,
                format!("expected a list of non-negative integers: {e}"),
            )
        }),
    }
}

impl Record {
    /// Build a record from one parsed JSON object; `path` is used in error messages.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        if !v.is_object() {
            return Err(field_err(path, -1, "<record>", "expected a JSON object"));
        }
        let idx = v
            .get("idx")
            .and_then(Value::as_i64)
            .ok_or_else(|| field_err(path, -1, "idx", "missing or not an integer"))?;
        let output = ["old_output", "output", "model_output"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .ok_or_else(|| {
                field_err(
                    path,
                    idx,
                    "output",
                    "none of old_output/output/model_output is a string",
                )
            })?
            .to_string();
        let prompt = opt_string(v, path, idx, "prompt")?.unwrap_or_default();
        let infer_time = v
            .get("infer_time")
            .and_then(Value::as_f64)
            .ok_or_else(|| field_err(path, idx, "infer_time", "missing or not a number"))?;
        let dep = match v.get("dep") {
            None | Some(Value::Null) => None,
            Some(x) => Some(x.as_f64().ok_or_else(|| {
                field_err(path, idx, "dep", format!("expected a number, got {x}"))
            })?),
        };
        let acc_state = match v.get("acc_state") {
            None | Some(Value::Null) => None,
            Some(x) => Some(x.as_bool().ok_or_else(|| {
                field_err(path, idx, "acc_state", format!("expected a bool, got {x}"))
            })?),
        };
        Ok(Self {
            idx,
            model_answer: opt_string(v, path, idx, "model_answer")?,
            gt_answer: opt_string(v, path, idx, "gt_answer")?,
            acc_state,
            output,
            prompt,
            input_len: opt_usize(v, path, idx, "input_len")?,
            output_len: opt_usize(v, path, idx, "output_len")?,
            infer_time,
            comp_pattern: opt_string(v, path, idx, "comp_pattern")?,
            max_token: opt_usize(v, path, idx, "max_token")?,
            output_ids: opt_vec(v, path, idx, "output_ids")?,
            n_compress: opt_usize(v, path, idx, "n_compress")?,
            peak_kv_bytes: v.get("peak_kv_bytes").and_then(Value::as_u64),
            dep,
            kv_trace: opt_vec(v, path, idx, "kv_trace")?,
        })
    }
}

/// Read one JSONL file of records (blank lines are skipped).
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg: e.to_string(),
        })?;
        out.push(Record::from_value(&v, path).map_err(|e| match e {
            EvalError::Field {
                idx, field, msg, ..
            } => EvalError::Field {
                path: PathBuf::from(format!("{}:{}", path.display(), i + 1)),
                idx,
                field,
                msg,
            },
            other => other,
        })?);
    }
    Ok(out)
}

/// Shards merged into one record list, with what was wrong with the shards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    /// Unique records sorted by idx (the first occurrence of a duplicated idx wins).
    pub records: Vec<Record>,
    /// Idx values that occurred more than once (sorted, each once).
    pub duplicates: Vec<i64>,
    /// Idx values in `0..expected` (or `0..=max idx` without an expected count) with no record.
    pub missing: Vec<i64>,
    /// Records whose idx is outside `0..expected` (kept out of `records`).
    pub out_of_range: Vec<i64>,
}

/// Merge shard record lists. `expected`: the number of questions in the eval data, when known.
pub fn merge_shards(shards: Vec<Vec<Record>>, expected: Option<usize>) -> Merged {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    let mut records = Vec::new();
    let mut out_of_range = Vec::new();
    for r in shards.into_iter().flatten() {
        if r.idx < 0 || expected.is_some_and(|n| r.idx as usize >= n) {
            out_of_range.push(r.idx);
            continue;
        }
        if seen.insert(r.idx) {
            records.push(r);
        } else {
            dups.insert(r.idx);
        }
    }
    records.sort_by_key(|r| r.idx);
    let upper = match expected {
        Some(n) => n as i64,
        None => seen.iter().next_back().map_or(0, |m| m + 1),
    };
    let missing = (0..upper).filter(|i| !seen.contains(i)).collect();
    Merged {
        records,
        duplicates: dups.into_iter().collect(),
        missing,
        out_of_range,
    }
}

/// Read and merge several shard files.
pub fn read_shards<P: AsRef<Path>>(files: &[P], expected: Option<usize>) -> Result<Merged> {
    let shards = files.iter().map(read_records).collect::<Result<Vec<_>>>()?;
    let merged = merge_shards(shards, expected);
    if !merged.duplicates.is_empty() {
        tracing::warn!(
            "duplicated idx across shards (first kept): {:?}",
            merged.duplicates
        );
    }
    if !merged.missing.is_empty() {
        tracing::warn!(
            "{} idx without a record: {:?}",
            merged.missing.len(),
            merged.missing
        );
    }
    if !merged.out_of_range.is_empty() {
        tracing::warn!(
            "idx outside the eval data (ignored): {:?}",
            merged.out_of_range
        );
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(idx: i64) -> Record {
        Record {
            idx,
            ..Default::default()
        }
    }

    #[test]
    fn merge_reports_missing_and_duplicates() {
        let m = merge_shards(
            vec![vec![rec(2), rec(0)], vec![rec(2), rec(5), rec(7)]],
            Some(6),
        );
        assert_eq!(
            m.records.iter().map(|r| r.idx).collect::<Vec<_>>(),
            vec![0, 2, 5]
        );
        assert_eq!(m.duplicates, vec![2]);
        assert_eq!(m.missing, vec![1, 3, 4]);
        assert_eq!(m.out_of_range, vec![7]);
        let m = merge_shards(vec![vec![rec(3), rec(1)]], None);
        assert_eq!(m.missing, vec![0, 2]);
    }

    #[test]
    fn record_fields_and_errors() {
        let p = Path::new("x.jsonl");
        let v: Value = serde_json::from_str(
            r#"{"idx": 3, "model_output": "hi", "prompt": "p", "infer_time": 1.5, "gt_answer": 7, "dep": 12, "kv_trace": [3,4]}"#,
        )
        .unwrap();
        let r = Record::from_value(&v, p).unwrap();
        assert_eq!(r.output, "hi");
        assert_eq!(r.gt_answer.as_deref(), Some("7"));
        assert_eq!(r.dep, Some(12.0));
        assert_eq!(r.kv_trace, Some(vec![3, 4]));
        let v: Value =
            serde_json::from_str(r#"{"idx": 3, "prompt": "p", "infer_time": 1.5}"#).unwrap();
        let e = Record::from_value(&v, p).unwrap_err().to_string();
        assert!(e.contains("output"), "{e}");
        let v: Value =
            serde_json::from_str(r#"{"idx": 3, "output": "", "infer_time": 1, "max_token": -1}"#)
                .unwrap();
        let e = Record::from_value(&v, p).unwrap_err().to_string();
        assert!(e.contains("max_token"), "{e}");
    }
}
