//! Reference lists (`alias` = accepted answers, `error` = known-wrong answers) built from the eval data
//! files `data/eval/{gsm8k,mmlu,gpqa,bbh}.json`, exactly as the reference's `evaluation/init.py` does.
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{EvalError, Result};

/// The four evaluation datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// GSM8K (numeric answers).
    Gsm8k,
    /// MMLU (letters A–D).
    Mmlu,
    /// GPQA-Diamond (letters A–D).
    Gpqa,
    /// BIG-Bench Hard (letters A–K, yes/no, true/false, valid/invalid, free text).
    Bbh,
}

impl Dataset {
    /// All datasets, in the paper's column order.
    pub const ALL: [Dataset; 4] = [Dataset::Gsm8k, Dataset::Mmlu, Dataset::Gpqa, Dataset::Bbh];

    /// The order in which the reference's inference driver runs them (`inference.sh`).
    pub const REFERENCE_ORDER: [Dataset; 4] =
        [Dataset::Mmlu, Dataset::Gsm8k, Dataset::Gpqa, Dataset::Bbh];

    /// The lower-case name (`gsm8k`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Gsm8k => "gsm8k",
            Dataset::Mmlu => "mmlu",
            Dataset::Gpqa => "gpqa",
            Dataset::Bbh => "bbh",
        }
    }

    /// The name as printed in the paper's tables (`GSM8K`, ...).
    pub fn title(self) -> &'static str {
        match self {
            Dataset::Gsm8k => "GSM8K",
            Dataset::Mmlu => "MMLU",
            Dataset::Gpqa => "GPQA",
            Dataset::Bbh => "BBH",
        }
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gsm8k" => Ok(Dataset::Gsm8k),
            "mmlu" => Ok(Dataset::Mmlu),
            "gpqa" => Ok(Dataset::Gpqa),
            "bbh" => Ok(Dataset::Bbh),
            _ => Err(EvalError::Invalid(format!(
                "unknown dataset `{s}` (expected gsm8k, mmlu, gpqa or bbh)"
            ))),
        }
    }
}

/// One question's reference record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefItem {
    /// Position in the flattened data list.
    pub idx: usize,
    /// The question text.
    pub question: String,
    /// The gold answer (string form).
    pub answer: String,
    /// Answers accepted as correct.
    pub alias: Vec<String>,
    /// Answers known to be wrong.
    pub error: Vec<String>,
    /// Option texts of a multiple-choice item, in letter order (empty otherwise). Used by the
    /// normalising judge only.
    #[serde(default)]
    pub choices: Vec<String>,
}

/// A JSON object read with its keys in file order (the reference concatenates the lists in key order).
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of lists")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for s in items {
        if !list.contains(&s) {
            list.push(s);
        }
    }
}

fn text(s: &str) -> String {
    format!("\\text{{{s}}}")
}

fn word_variants(w: &str) -> Vec<String> {
    let mut cap = w.to_string();
    if let Some(f) = cap.get_mut(0..1) {
        f.make_ascii_uppercase();
    }
    let low = w.to_ascii_lowercase();
    vec![cap.clone(), low.clone(), text(&low), text(&cap)]
}

/// The single letter of an answer such as `A`, `(A)`.
pub(crate) fn answer_letter(ans: &str, last: char) -> Option<char> {
    let t = ans.trim();
    let t = t
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(t);
    let mut cs = t.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_uppercase() && c <= last => Some(c),
        _ => None,
    }
}

fn choices_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(value_to_string).collect(),
        Value::Object(o) => {
            let mut kv: Vec<_> = o
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), value_to_string(v)?)))
                .collect();
            kv.sort();
            kv.into_iter().map(|(_, v)| v).collect()
        }
        _ => Vec::new(),
    }
}

impl RefItem {
    /// The plain reference record: `alias = [answer, \text{answer}]`, `error = ["error"]`.
    pub fn plain(idx: usize, question: String, answer: String) -> Self {
        let mut alias = Vec::new();
        push_unique(&mut alias, [answer.clone(), text(&answer)]);
        Self {
            idx,
            question,
            answer,
            alias,
            error: vec![crate::extract::NO_ANSWER.to_string()],
            choices: Vec::new(),
        }
    }

    /// Apply the dataset's extra alias/error entries (init.py's extended references).
    pub fn extend_for(&mut self, dataset: Dataset) {
        match dataset {
            Dataset::Gsm8k => {}
            Dataset::Mmlu | Dataset::Gpqa => {
                if let Some(g) = answer_letter(&self.answer, 'D') {
                    let others = ('A'..='D').filter(|&c| c != g).map(String::from);
                    push_unique(&mut self.error, others);
                }
            }
            Dataset::Bbh => {
                let low = self.answer.trim().to_ascii_lowercase();
                let pair = |a: &str, b: &str, la: Option<&str>, lb: Option<&str>| {
                    let mut good = word_variants(a);
                    let mut bad = word_variants(b);
                    good.extend(la.map(String::from));
                    bad.extend(lb.map(String::from));
                    (good, bad)
                };
                let (good, bad) = match low.as_str() {
                    "yes" => pair("yes", "no", Some("A"), Some("B")),
                    "no" => pair("no", "yes", Some("B"), Some("A")),
                    "true" => pair("true", "false", None, None),
                    "false" => pair("false", "true", None, None),
                    "valid" => pair("valid", "invalid", None, None),
                    "invalid" => pair("invalid", "valid", None, None),
                    _ => match answer_letter(&self.answer, 'K') {
                        Some(g) => (
                            Vec::new(),
                            ('A'..='K').filter(|&c| c != g).map(String::from).collect(),
                        ),
                        None => (Vec::new(), Vec::new()),
                    },
                };
                push_unique(&mut self.alias, good);
                push_unique(&mut self.error, bad);
            }
        }
    }
}

/// Build the (extended) reference items of one dataset from its eval data JSON text.
/// `path` is only used in error messages.
pub fn build_references_from_str(
    json: &str,
    dataset: Dataset,
    path: &Path,
) -> Result<Vec<RefItem>> {
    let Ordered(groups) = serde_json::from_str(json).map_err(|e| EvalError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        msg: format!("{} eval data: {e}", dataset.name()),
    })?;
    let mut out = Vec::new();
    for (key, list) in groups {
        let items = list.as_array().ok_or_else(|| EvalError::Field {
            path: path.to_path_buf(),
            idx: -1,
            field: key.clone(),
            msg: "expected a list of items".into(),
        })?;
        for it in items {
            let idx = out.len();
            let ferr = |field: &str, msg: &str| EvalError::Field {
                path: path.to_path_buf(),
                idx: idx as i64,
                field: field.to_string(),
                msg: msg.to_string(),
            };
            let question = it
                .get("question")
                .and_then(Value::as_str)
                .ok_or_else(|| ferr("question", "missing or not a string"))?
                .to_string();
            let answer = it
                .get("answer")
                .and_then(value_to_string)
                .ok_or_else(|| ferr("answer", "missing or not a string/number"))?;
            let mut item = RefItem::plain(idx, question, answer);
            item.choices = match dataset {
                Dataset::Mmlu | Dataset::Gpqa => {
                    it.get("choices_list").map(choices_of).unwrap_or_default()
                }
                Dataset::Bbh => it
                    .pointer("/meta_data/structured/choices")
                    .map(choices_of)
                    .unwrap_or_default(),
                Dataset::Gsm8k => Vec::new(),
            };
            item.extend_for(dataset);
            out.push(item);
        }
    }
    Ok(out)
}

/// Read `data/eval/<dataset>.json` and build its reference items.
///
/// ```no_run
/// use lt_eval::{build_references, Dataset};
/// let refs = build_references("data/eval/gsm8k.json", Dataset::Gsm8k)?;
/// println!("{} questions", refs.len());
/// # Ok::<(), lt_eval::EvalError>(())
/// ```
pub fn build_references(path: impl AsRef<Path>, dataset: Dataset) -> Result<Vec<RefItem>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    build_references_from_str(&text, dataset, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(json: &str, d: Dataset) -> Vec<RefItem> {
        build_references_from_str(json, d, Path::new("t.json")).unwrap()
    }

    #[test]
    fn gsm8k_plain_in_key_order() {
        let r = refs(
            r#"{"z": [{"question": "q0", "answer": "7"}], "a": [{"question": "q1", "answer": 12}]}"#,
            Dataset::Gsm8k,
        );
        assert_eq!(r[0].question, "q0");
        assert_eq!(r[1].idx, 1);
        assert_eq!(r[1].alias, vec!["12", "\\text{12}"]);
        assert_eq!(r[1].error, vec!["error"]);
    }

    #[test]
    fn mmlu_gpqa_letters() {
        let r = refs(
            r#"{"f": [{"question": "q", "answer": "C", "choices_list": ["x", "y", "z", "w"]}]}"#,
            Dataset::Mmlu,
        );
        assert_eq!(r[0].alias, vec!["C", "\\text{C}"]);
        assert_eq!(r[0].error, vec!["error", "A", "B", "D"]);
        assert_eq!(r[0].choices, vec!["x", "y", "z", "w"]);
        let r = refs(
            r#"{"math": [{"question": "q", "answer": "A"}]}"#,
            Dataset::Gpqa,
        );
        assert_eq!(r[0].error, vec!["error", "B", "C", "D"]);
    }

    #[test]
    fn bbh_rules() {
        let j = r#"{"d": [
            {"question": "q", "answer": "Yes"},
            {"question": "q", "answer": "no"},
            {"question": "q", "answer": "False"},
            {"question": "q", "answer": "invalid"},
            {"question": "q", "answer": "(C)", "meta_data": {"structured": {"choices": ["a","b","c"]}}},
            {"question": "q", "answer": "dyck ] )"}
        ]}"#;
        let r = refs(j, Dataset::Bbh);
        assert_eq!(
            r[0].alias,
            vec!["Yes", "\\text{Yes}", "yes", "\\text{yes}", "A"]
        );
        assert_eq!(
            r[0].error,
            vec!["error", "No", "no", "\\text{no}", "\\text{No}", "B"]
        );
        assert_eq!(
            r[1].alias,
            vec!["no", "\\text{no}", "No", "\\text{No}", "B"]
        );
        assert_eq!(
            r[1].error,
            vec!["error", "Yes", "yes", "\\text{yes}", "\\text{Yes}", "A"]
        );
        assert_eq!(
            r[2].alias,
            vec!["False", "\\text{False}", "false", "\\text{false}"]
        );
        assert_eq!(
            r[2].error,
            vec!["error", "True", "true", "\\text{true}", "\\text{True}"]
        );
        assert!(r[3].error.contains(&"Valid".to_string()));
        assert!(!r[3].error.contains(&"A".to_string()));
        assert_eq!(r[4].error.len(), 11);
        assert!(!r[4].error.contains(&"C".to_string()));
        assert_eq!(r[4].choices, vec!["a", "b", "c"]);
        assert_eq!(r[5].error, vec!["error"]);
    }

    #[test]
    fn bad_data_is_a_typed_error() {
        let e = build_references_from_str(
            r#"{"m": [{"answer": "1"}]}"#,
            Dataset::Gsm8k,
            Path::new("d.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("d.json") && e.contains("question"), "{e}");
        assert!(build_references_from_str("[1]", Dataset::Gsm8k, Path::new("d.json")).is_err());
    }
}
