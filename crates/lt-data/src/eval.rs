//! Evaluation inputs: the reference's `data/eval/{gsm8k,mmlu,gpqa,bbh}.json` readers, plain JSONL, the
//! Bespoke-Stratos system prompt and inference-prompt building from a config template.
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::CompressConfig;
use crate::error::{DataError, Result};

/// The instruction every reader puts before the question.
pub const BOXED_INSTRUCTION: &str = "Return your final response within \\boxed{}.";

/// The Bespoke-Stratos system prompt's 11 sentences (`dataset_reader.py`); joined with single spaces they
/// give [`system_prompt`]. The sentence-level prompt path joins them with nothing.
pub const SYSTEM_PROMPT_LIST: [&str; 11] = [
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process before providing the final precise and accurate solutions.",
    "This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking process.",
    "Please structure your response into two main sections:",
    "Thought and Solution.",
    "In the Thought section, detail your reasoning process using the specified format:",
    "<|begin_of_thought|> {thought with steps separated with '\\n\\n'} <|end_of_thought|>",
    "Each step should include detailed considerations such as analisying questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps.",
    "In the Solution section, based on various attempts, explorations, and reflections from the Thought section, systematically present the final solution that you deem correct.",
    "The solution should remain a logical, accurate, concise expression style and detail necessary step needed to reach the conclusion, formatted as follows:",
    "<|begin_of_solution|> {final formatted, precise, and clear solution} <|end_of_solution|>",
    "Now, try to solve the following question through the above guidelines:",
];

/// The Bespoke-Stratos system prompt as one string (the 11 sentences joined with single spaces).
pub fn system_prompt() -> String {
    SYSTEM_PROMPT_LIST.join(" ")
}

/// The user turn of every eval question: `"Return your final response within \boxed{}. " + question`.
pub fn user_question(question: &str) -> String {
    format!("{BOXED_INSTRUCTION} {question}")
}

/// The inference prompt text (the reference, `compress_prompt=false`): the BOS string followed by the
/// config template filled with the Bespoke-Stratos system prompt and the user turn.
///
/// ```
/// # let cfg: lt_data::CompressConfig = serde_json::from_str(include_str!("../../../configs/LightThinker/qwen/v1.json")).unwrap();
/// let p = lt_data::inference_prompt(&cfg, "<|im_start|>", "1+1?");
/// assert!(p.starts_with("<|im_start|>system\nYour role"));
/// assert!(p.ends_with("\\boxed{}. 1+1?<|im_end|>\n<|im_start|>assistant\n"));
/// ```
pub fn inference_prompt(cfg: &CompressConfig, bos_token: &str, question: &str) -> String {
    build_prompt(cfg, bos_token, &system_prompt(), &user_question(question))
}

/// BOS string + the template filled with an arbitrary system prompt and user text.
pub fn build_prompt(cfg: &CompressConfig, bos_token: &str, system: &str, user: &str) -> String {
    format!("{bos_token}{}", cfg.fill_template(system, user))
}

/// Which reader layout a file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalDataset {
    /// `{"math": [{question, answer, meta_data}]}`
    Gsm8k,
    /// `{file: [{question, question_list, answer: letter, choices_list, domain}]}`
    Mmlu,
    /// `{"math": [{question, question_list, answer, choices_list, ...}]}`
    Gpqa,
    /// `{domain: [{question, question_list, answer, meta_data: {structured?: {choices}}}]}`
    Bbh,
    /// One JSON object per line with at least `question` and `answer`.
    Jsonl,
}

impl std::str::FromStr for EvalDataset {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gsm8k" => Ok(Self::Gsm8k),
            "mmlu" => Ok(Self::Mmlu),
            "gpqa" => Ok(Self::Gpqa),
            "bbh" => Ok(Self::Bbh),
            "jsonl" => Ok(Self::Jsonl),
            _ => Err(DataError::Invalid(format!(
                "dataset must be gsm8k, mmlu, gpqa, bbh or jsonl, got `{s}`"
            ))),
        }
    }
}

/// One evaluation question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalExample {
    /// Index in the flattened file (the reference's `idx`).
    pub idx: usize,
    /// The item's `question` (without the boxed instruction).
    pub question: String,
    /// The gold answer as a string (GPQA: converted).
    pub answer: String,
    /// The prompt sentence list for sentence-level prompt compression: the boxed instruction followed by
    /// `question_list` (GSM8K and JSONL without `question_list`: followed by `[question]`).
    pub prompt_list: Vec<String>,
    /// Multiple-choice options (`choices_list`, or BBH `meta_data.structured.choices`).
    pub choices: Option<Vec<String>>,
    /// The top-level key of the list the item came from (file name / domain), `None` for JSONL.
    pub group: Option<String>,
    /// The whole item, untouched.
    pub raw: Value,
}

impl EvalExample {
    /// `"Return your final response within \boxed{}. " + question`.
    pub fn user_turn(&self) -> String {
        user_question(&self.question)
    }
}

/// A JSON object whose values are lists, kept in file order.
struct OrderedLists(Vec<(String, Vec<Value>)>);

impl<'de> Deserialize<'de> for OrderedLists {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedLists;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object whose values are lists of items")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((k, items)) = m.next_entry::<String, Vec<Value>>()? {
                    v.push((k, items));
                }
                Ok(OrderedLists(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn str_field(item: &Value, key: &str) -> std::result::Result<String, String> {
    match item.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field `{key}`: expected a string")),
        None => Err(format!("missing field `{key}`")),
    }
}

fn answer_field(item: &Value) -> std::result::Result<String, String> {
    match item.get("answer") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Err("missing field `answer`".into()),
        Some(other) => Ok(other.to_string()),
    }
}

fn str_list(v: Option<&Value>, key: &str) -> std::result::Result<Option<Vec<String>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("field `{key}[{i}]`: expected a string")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("field `{key}`: expected an array of strings")),
    }
}

fn example(
    dataset: EvalDataset,
    idx: usize,
    group: Option<String>,
    item: Value,
) -> std::result::Result<EvalExample, String> {
    let question = str_field(&item, "question")?;
    let answer = answer_field(&item)?;
    let qlist = match dataset {
        EvalDataset::Gsm8k => None,
        EvalDataset::Jsonl => str_list(item.get("question_list"), "question_list")?,
        _ => Some(
            str_list(item.get("question_list"), "question_list")?
                .ok_or_else(|| "missing field `question_list`".to_string())?,
        ),
    };
    let mut prompt_list = vec![BOXED_INSTRUCTION.to_string()];
    match qlist {
        Some(l) => prompt_list.extend(l),
        None => prompt_list.push(question.clone()),
    }
    let choices = match dataset {
        EvalDataset::Bbh => str_list(
            item.pointer("/meta_data/structured/choices"),
            "meta_data.structured.choices",
        )?,
        EvalDataset::Gsm8k => None,
        _ => str_list(item.get("choices_list"), "choices_list")?,
    };
    Ok(EvalExample {
        idx,
        question,
        answer,
        prompt_list,
        choices,
        group,
        raw: item,
    })
}

/// Read an evaluation file: the reference's dict-of-lists JSON layouts (`gsm8k`, `mmlu`, `gpqa`, `bbh`;
/// lists concatenated in file order) or plain JSONL (`jsonl`, or any `.jsonl`/`.jsonl.gz` path).
/// Errors name the file, the item (`key[i]`) or line, and the field.
pub fn read_eval_dataset(dataset: &str, path: impl AsRef<Path>) -> Result<Vec<EvalExample>> {
    let path = path.as_ref();
    let name = path.to_string_lossy();
    let ds: EvalDataset = if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") {
        EvalDataset::Jsonl
    } else {
        dataset.parse()?
    };
    let perr = |line: Option<usize>, message: String| DataError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    if ds == EvalDataset::Jsonl {
        return crate::io::read_lines(path)?
            .into_iter()
            .enumerate()
            .map(|(i, (no, line))| {
                let v: Value =
                    serde_json::from_str(&line).map_err(|e| perr(Some(no), e.to_string()))?;
                example(ds, i, None, v).map_err(|m| perr(Some(no), m))
            })
            .collect();
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut crate::io::open_lines(path)?, &mut text)
        .map_err(|e| DataError::io(path, e))?;
    let lists: OrderedLists =
        serde_json::from_str(&text).map_err(|e| perr(Some(e.line()), e.to_string()))?;
    let mut out = Vec::new();
    for (key, items) in lists.0 {
        for (i, item) in items.into_iter().enumerate() {
            let idx = out.len();
            out.push(
                example(ds, idx, Some(key.clone()), item)
                    .map_err(|m| perr(None, format!("item `{key}`[{i}]: {m}")))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prompt_matches_reference_properties() {
        let s = system_prompt();
        assert!(s.contains("analisying"));
        assert!(s.contains("separated with '\\n\\n'"));
        assert!(!s.contains('\n'));
        assert_eq!(SYSTEM_PROMPT_LIST.len(), 11);
    }

    #[test]
    fn readers_keep_file_order_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bbh.json");
        std::fs::write(
            &p,
            r#"{"zeta": [{"question": "Q1", "answer": "(A)", "question_list": ["Q1"],
                 "meta_data": {"structured": {"choices": ["x", "y"]}}}],
               "alpha": [{"question": "Q2", "answer": "yes", "question_list": ["Q", "2"], "meta_data": {}}]}"#,
        )
        .unwrap();
        let ex = read_eval_dataset("bbh", &p).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].group.as_deref(), Some("zeta"));
        assert_eq!(
            ex[0].choices.as_deref(),
            Some(&["x".to_string(), "y".to_string()][..])
        );
        assert_eq!(ex[1].idx, 1);
        assert_eq!(ex[1].prompt_list, vec![BOXED_INSTRUCTION, "Q", "2"]);
        assert!(ex[1].choices.is_none());

        let p = dir.path().join("gsm8k.json");
        std::fs::write(&p, r#"{"math": [{"question": "How many?", "answer": 42}]}"#).unwrap();
        let ex = read_eval_dataset("gsm8k", &p).unwrap();
        assert_eq!(ex[0].answer, "42");
        assert_eq!(ex[0].prompt_list, vec![BOXED_INSTRUCTION, "How many?"]);
        assert_eq!(
            ex[0].user_turn(),
            "Return your final response within \\boxed{}. How many?"
        );

        let p = dir.path().join("mmlu.json");
        std::fs::write(&p, r#"{"f": [{"question": "Q", "answer": "A"}]}"#).unwrap();
        let e = read_eval_dataset("mmlu", &p).unwrap_err().to_string();
        assert!(e.contains("question_list") && e.contains("`f`[0]"), "{e}");

        let p = dir.path().join("x.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"a\", \"answer\": \"b\"}\n{\"answer\": \"b\"}\n",
        )
        .unwrap();
        let e = read_eval_dataset("jsonl", &p).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:2") && e.contains("`question`"), "{e}");
    }
}
