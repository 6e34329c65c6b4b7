//! Answer extraction: the last balanced `\boxed{...}` of a generation.

/// The answer string used when no `\boxed{}` is found (the reference's literal).
pub const NO_ANSWER: &str = "error";

const BOXED: &str = "\\boxed{";

/// Byte index of the `}` that closes a group whose contents start at `start` (just after its `{`),
/// counting nested braces; `None` when it never closes.
pub(crate) fn closing_brace(text: &str, start: usize) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(start + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// All balanced `\boxed{...}` contents of `text`, left to right, non-overlapping, untrimmed.
///
/// Unlike the reference's regex (which allows only one level of nested braces), any nesting depth is
/// accepted, e.g. `\boxed{\frac{a^{2}}{b}}`. An occurrence whose braces never balance is skipped, and
/// scanning resumes after its `\boxed{`. Empty contents (`\boxed{}`) are dropped, as in the reference.
pub fn boxed_contents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = text[from..].find(BOXED) {
        let start = from + rel + BOXED.len();
        let end = closing_brace(text, start);
        match end {
            Some(e) => {
                if e > start {
                    out.push(&text[start..e]);
                }
                from = e + 1;
            }
            None => from = start,
        }
    }
    out
}

/// The model's answer: the content of the last balanced `\boxed{}`, whitespace-trimmed, or
/// [`NO_ANSWER`] (`"error"`) when there is none.
///
/// ```
/// use lt_eval::extract_answer;
/// assert_eq!(extract_answer(r"so \boxed{3} then \boxed{ \frac{1}{2} }"), r"\frac{1}{2}");
/// assert_eq!(extract_answer("no box"), "error");
/// ```
pub fn extract_answer(text: &str) -> String {
    boxed_contents(text)
        .last()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| NO_ANSWER.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cases() {
        assert_eq!(extract_answer(r"\boxed{42}"), "42");
        assert_eq!(extract_answer(r"a \boxed{1} b \boxed{2} c"), "2");
        assert_eq!(extract_answer(r"\boxed{\frac{1}{2}}"), r"\frac{1}{2}");
        assert_eq!(
            extract_answer(r"\boxed{\frac{a^{2}}{b}}"),
            r"\frac{a^{2}}{b}"
        );
        assert_eq!(extract_answer(r"\boxed{  7 }"), "7");
        assert_eq!(extract_answer(r"\boxed{   }"), "");
        assert_eq!(extract_answer(r"\boxed{}"), "error");
        assert_eq!(extract_answer(r"\boxed{1} \boxed{}"), "1");
        assert_eq!(extract_answer("nothing"), "error");
        assert_eq!(extract_answer(""), "error");
        // unbalanced last box: the previous balanced one wins
        assert_eq!(extract_answer(r"\boxed{3} and \boxed{4"), "3");
        // unbalanced first box does not swallow a later one
        assert_eq!(extract_answer(r"\boxed{{3} \boxed{5}"), "5");
        // nested boxes: the outer one (findall is non-overlapping)
        assert_eq!(extract_answer(r"\boxed{\boxed{1}}"), r"\boxed{1}");
        // the word-level golden decoder spaces the braces: no match, like the reference
        assert_eq!(extract_answer(r"\ boxed { 7 }"), "error");
        // multi-byte content
        assert_eq!(extract_answer(r"\boxed{π≈3}"), "π≈3");
    }
}
