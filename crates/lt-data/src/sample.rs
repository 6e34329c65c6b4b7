//! The training JSONL schema.
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// One training sample (one JSONL line). All six list/text keys are mandatory; `add_eos` is optional
/// (default true). Other keys are kept in `meta_info` and never read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSample {
    /// User question placed in `{question}`.
    pub question: String,
    /// System prompt placed in `{system}`.
    pub system_prompt: String,
    /// The system prompt split into sentences (sentence-level prompt compression).
    pub system_list: Vec<String>,
    /// The question split into sentences.
    pub question_list: Vec<String>,
    /// The response split into thoughts; must hold the entire response.
    pub thoughts_list: Vec<String>,
    /// The full response (normal mode; token-level output compression).
    pub gt_output: String,
    /// Whether the aug-style sequences end with EOS (default true; normal mode always appends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_eos: Option<bool>,
    /// Every other key, untouched.
    #[serde(flatten)]
    pub meta_info: Map<String, Value>,
}

impl TrainSample {
    /// Parse one JSON object, naming the missing or mistyped field in the error message.
    pub fn from_value(v: Value) -> std::result::Result<Self, String> {
        let Value::Object(mut m) = v else {
            return Err(format!("expected a JSON object, got {}", kind(&v)));
        };
        let question = take_str(&mut m, "question")?;
        let system_prompt = take_str(&mut m, "system_prompt")?;
        let system_list = take_list(&mut m, "system_list")?;
        let question_list = take_list(&mut m, "question_list")?;
        let thoughts_list = take_list(&mut m, "thoughts_list")?;
        let gt_output = take_str(&mut m, "gt_output")?;
        let add_eos = match m.remove("add_eos") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(b),
            Some(o) => {
                return Err(format!(
                    "field `add_eos`: expected a boolean, got {}",
                    kind(&o)
                ))
            }
        };
        Ok(TrainSample {
            question,
            system_prompt,
            system_list,
            question_list,
            thoughts_list,
            gt_output,
            add_eos,
            meta_info: m,
        })
    }

    /// `add_eos` with its default (true).
    pub fn add_eos(&self) -> bool {
        self.add_eos.unwrap_or(true)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match m.remove(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => Ok(s),
        Some(o) => Err(format!(
            "field `{key}`: expected a string, got {}",
            kind(&o)
        )),
    }
}

fn take_list(m: &mut Map<String, Value>, key: &str) -> std::result::Result<Vec<String>, String> {
    match m.remove(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                o => Err(format!(
                    "field `{key}[{i}]`: expected a string, got {}",
                    kind(&o)
                )),
            })
            .collect(),
        Some(o) => Err(format!(
            "field `{key}`: expected an array of strings, got {}",
            kind(&o)
        )),
    }
}

/// Read a training JSONL file (`.gz` allowed), one entry per non-blank line, in order (a line of the form
/// `{"sample_id": …, "sample": {…}}`, as in the golden `samples.jsonl`, is unwrapped). A line that is not
/// valid JSON or lacks/mistypes a field gives an `Err` naming the file, line and field; the other lines are
/// still returned (nothing is dropped silently).
pub fn read_train_jsonl(path: impl AsRef<Path>) -> Result<Vec<Result<TrainSample>>> {
    let path = path.as_ref();
    let lines = crate::io::read_lines(path)?;
    Ok(lines
        .into_iter()
        .map(|(no, line)| {
            let perr = |message: String| DataError::Parse {
                path: path.to_path_buf(),
                line: Some(no),
                message,
            };
            let mut v: Value = serde_json::from_str(&line).map_err(|e| perr(e.to_string()))?;
            // Accept the goldens' `{"sample_id", "sample": {...}}` wrapper too.
            if v.get("question").is_none() && v.get("sample").is_some_and(Value::is_object) {
                v = v["sample"].take();
            }
            TrainSample::from_value(v).map_err(perr)
        })
        .collect())
}

/// Like [`read_train_jsonl`] but fails on the first bad line.
pub fn read_train_jsonl_strict(path: impl AsRef<Path>) -> Result<Vec<TrainSample>> {
    read_train_jsonl(path)?.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let v: Value = serde_json::json!({"question": "q", "system_prompt": "", "system_list": [],
            "question_list": ["a", 3], "thoughts_list": [], "gt_output": ""});
        let e = TrainSample::from_value(v).unwrap_err();
        assert!(e.contains("question_list[1]"), "{e}");
        let v: Value = serde_json::json!({"question": "q", "system_prompt": "", "system_list": [],
            "question_list": [], "gt_output": ""});
        assert!(TrainSample::from_value(v)
            .unwrap_err()
            .contains("`thoughts_list`"));
        let v: Value = serde_json::json!({"question": "q", "system_prompt": "", "system_list": [],
            "question_list": [], "thoughts_list": [], "gt_output": "", "add_eos": "no", "x": 1});
        assert!(TrainSample::from_value(v).unwrap_err().contains("add_eos"));
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"system_prompt\": \"\", \"system_list\": [], \"question_list\": [], \"thoughts_list\": [\"a\"], \"gt_output\": \"a\", \"extra\": 1}\n\n{\"question\": 1}\n",
        )
        .unwrap();
        let r = read_train_jsonl(&p).unwrap();
        assert_eq!(r.len(), 2);
        let s = r[0].as_ref().unwrap();
        assert!(s.add_eos());
        assert_eq!(s.meta_info["extra"], 1);
        let e = r[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("t.jsonl:3") && e.contains("`question`"), "{e}");
    }
}
