//! The reference driver's answer extraction (`Reader.extract_answer`) and its inference-time quick
//! check (`compare_answer`, stored as `acc_state` / `comp_pattern`). The paper's accuracy comes
//! from `lt-eval`; these only reproduce the record fields.
/// The four evaluation datasets: one type shared with `lt-eval` (which owns it), so that a
/// record written here and judged there name their dataset alike.
pub use lt_eval::Dataset;

/// Contents of every `\boxed{…}` (one nesting level of braces allowed), left to right.
fn boxed_all(text: &str) -> Vec<&str> {
    const PAT: &str = "\\boxed{";
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find(PAT) {
        let start = i + off;
        let mut j = start + PAT.len();
        let mut ok = false;
        while j < b.len() {
            match b[j] {
                b'}' => {
                    ok = true;
                    break;
                }
                b'{' => {
                    // one nested group without further braces
                    let mut k = j + 1;
                    while k < b.len() && b[k] != b'{' && b[k] != b'}' {
                        k += 1;
                    }
                    if k < b.len() && b[k] == b'}' {
                        j = k + 1;
                    } else {
                        break;
                    }
                }
                _ => j += 1,
            }
        }
        if ok {
            out.push(&text[start + PAT.len()..j]);
            i = j + 1;
        } else {
            i = start + 1;
        }
    }
    out
}

/// `Reader.extract_answer`: the last non-empty `\boxed{…}` content, stripped; `"error"` if none.
///
/// ```
/// assert_eq!(lt_infer::quick::extract_answer("so \\boxed{1} or \\boxed{ {2} }"), "{2}");
/// assert_eq!(lt_infer::quick::extract_answer("no box"), "error");
/// ```
pub fn extract_answer(output: &str) -> String {
    boxed_all(output)
        .into_iter()
        .rfind(|s| !s.is_empty())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "error".to_string())
}

/// What the quick check needs from an evaluation item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuickItem {
    /// The gold answer as a string.
    pub answer: String,
    /// Choices (MMLU `choices_list`, GPQA `choices_list`, BBH `meta_data.structured.choices`).
    pub choices: Option<Vec<String>>,
}

fn letter_index(s: &str) -> Option<usize> {
    let c = s.trim().chars().next()?.to_ascii_uppercase();
    c.is_ascii_uppercase().then(|| (c as u8 - b'A') as usize)
}

/// `compare_answer`: `(acc_state, comp_pattern)`.
///
/// ```
/// use lt_infer::quick::{compare_answer, Dataset, QuickItem};
/// let item = QuickItem { answer: "1,000".into(), choices: None };
/// assert_eq!(compare_answer(Dataset::Gsm8k, "1000", &item), (true, "`1000` <=> `1000`".to_string()));
/// ```
pub fn compare_answer(ds: Dataset, model_answer: &str, item: &QuickItem) -> (bool, String) {
    let pat = |l: &str, r: &str| format!("`{l}` <=> `{r}`");
    match ds {
        Dataset::Gsm8k => {
            let left = match boxed_lazy_last(model_answer) {
                Some(s) => s,
                None => model_answer,
            };
            let norm = |s: &str| s.trim().to_lowercase().replace(',', "");
            let (l, r) = (norm(left), norm(&item.answer));
            (l == r, pat(&l, &r))
        }
        Dataset::Mmlu | Dataset::Gpqa => {
            let gold = item.answer.trim();
            if model_answer == "error" || model_answer.trim().is_empty() {
                return (false, pat(model_answer, gold));
            }
            let first = model_answer
                .trim()
                .chars()
                .next()
                .map(|c| c.to_ascii_lowercase());
            if let Some(c @ 'a'..='d') = first {
                let ok = gold.to_lowercase().starts_with(c) && gold.len() == 1;
                return (ok, pat(&c.to_string(), &gold.to_lowercase()));
            }
            let full = match (letter_index(gold), &item.choices) {
                (Some(i), Some(ch)) if i < ch.len() => format!("{gold}. {}", ch[i]),
                _ => gold.to_string(),
            };
            let (l, r) = (
                model_answer.trim().to_lowercase(),
                full.trim().to_lowercase(),
            );
            (l == r, pat(&l, &r))
        }
        Dataset::Bbh => {
            let gold = item.answer.trim();
            let (l, r) = match (&item.choices, letter_index(gold)) {
                // reference bug: the letter branch never fires; compare with "X. choice"
                (Some(ch), Some(i)) if i < ch.len() => (
                    model_answer.trim().to_lowercase(),
                    format!("{gold}. {}", ch[i]).to_lowercase(),
                ),
                _ => (model_answer.trim().to_lowercase(), gold.to_lowercase()),
            };
            (l == r, pat(&l, &r))
        }
    }
}

/// Last `\boxed{…}` content with a non-greedy match (GSM8K's unwrap).
fn boxed_lazy_last(s: &str) -> Option<&str> {
    let mut last = None;
    let mut i = 0;
    while let Some(off) = s[i..].find("\\boxed{") {
        let a = i + off + 7;
        match s[a..].find('}') {
            Some(e) => {
                last = Some(&s[a..a + e]);
                i = a + e + 1;
            }
            None => break,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_edge_cases() {
        assert_eq!(extract_answer("\\boxed{a} then \\boxed{b}"), "b");
        assert_eq!(extract_answer("\\boxed{\\frac{1}{2}}"), "\\frac{1}{2}");
        assert_eq!(extract_answer("\\boxed{{{x}}}"), "error");
        assert_eq!(extract_answer("\\boxed{  }"), "");
        assert_eq!(extract_answer("\\ boxed { 7 }"), "error");
    }

    #[test]
    fn golden_pattern() {
        let item = QuickItem {
            answer: "7".into(),
            choices: None,
        };
        assert_eq!(
            compare_answer(Dataset::Gsm8k, "error", &item),
            (false, "`error` <=> `7`".into())
        );
    }

    #[test]
    fn mmlu_letter_and_text() {
        let item = QuickItem {
            answer: "B".into(),
            choices: Some(vec!["x".into(), "y".into()]),
        };
        assert!(compare_answer(Dataset::Mmlu, "b", &item).0);
        assert!(!compare_answer(Dataset::Mmlu, "error", &item).0);
        assert!(compare_answer(Dataset::Mmlu, "B. y", &item).0);
    }
}
