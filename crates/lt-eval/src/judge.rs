//! The judging cascade: strict (the reference's exact alias/error lookup and numeric check), an opt-in
//! normalising judge, and interactive `y/n/e` judging whose decisions are saved and reused.
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::extract::NO_ANSWER;
use crate::reference::{answer_letter, Dataset, RefItem};

/// Outcome of an automatic comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The answer is accepted.
    Correct,
    /// The answer is rejected.
    Wrong,
    /// The automatic rules cannot decide (counted wrong unless a human decides).
    Undecided,
}

/// Which automatic judge runs before the (optional) human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    /// The reference's rules only: exact alias, exact error, numeric. Paper-compatible fallback.
    #[default]
    Strict,
    /// Strict, then normalisation of undecided answers (`$`, `\text{}`, thousands separators,
    /// fractions, `(A)` / `A.` / option text → letter).
    Normalized,
}

/// A number evaluated the way Python's `eval` does for strings over `0123456789.-+`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PyNum {
    Int(i128),
    Float(f64),
}

impl PyNum {
    fn neg(self) -> Self {
        match self {
            PyNum::Int(i) => PyNum::Int(-i),
            PyNum::Float(f) => PyNum::Float(-f),
        }
    }
    fn add(self, o: Self) -> Option<Self> {
        Some(match (self, o) {
            (PyNum::Int(a), PyNum::Int(b)) => PyNum::Int(a.checked_add(b)?),
            (a, b) => PyNum::Float(a.f() + b.f()),
        })
    }
    fn f(self) -> f64 {
        match self {
            PyNum::Int(i) => i as f64,
            PyNum::Float(f) => f,
        }
    }
    fn py_eq(self, o: Self) -> bool {
        match (self, o) {
            (PyNum::Int(a), PyNum::Int(b)) => a == b,
            (a, b) => a.f() == b.f(),
        }
    }
}

/// Python expression grammar restricted to `+ - . digits`: `expr := unary (('+'|'-') unary)*`,
/// `unary := ('+'|'-') unary | number`. Python rejects decimal integers with leading zeros (`007`).
fn py_eval(s: &str) -> Option<PyNum> {
    let b = s.as_bytes();
    let mut i = 0;
    fn number(b: &[u8], i: &mut usize) -> Option<PyNum> {
        let st = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        let int_part = &b[st..*i];
        if *i < b.len() && b[*i] == b'.' {
            *i += 1;
            let fs = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            if int_part.is_empty() && *i == fs {
                return None;
            }
            std::str::from_utf8(&b[st..*i])
                .ok()?
                .parse::<f64>()
                .ok()
                .map(PyNum::Float)
                .or_else(|| {
                    // "5." parses in Python; Rust's parser accepts it too, but be explicit.
                    std::str::from_utf8(&b[st..*i - 1])
                        .ok()?
                        .parse::<f64>()
                        .ok()
                        .map(PyNum::Float)
                })
        } else {
            if int_part.is_empty() {
                return None;
            }
            if int_part.len() > 1 && int_part[0] == b'0' && int_part.iter().any(|&c| c != b'0') {
                return None;
            }
            std::str::from_utf8(int_part)
                .ok()?
                .parse::<i128>()
                .ok()
                .map(PyNum::Int)
        }
    }
    fn unary(b: &[u8], i: &mut usize) -> Option<PyNum> {
        match b.get(*i) {
            Some(b'+') => {
                *i += 1;
                unary(b, i)
            }
            Some(b'-') => {
                *i += 1;
                unary(b, i).map(PyNum::neg)
            }
            _ => number(b, i),
        }
    }
    let mut acc = unary(b, &mut i)?;
    while i < b.len() {
        let op = b[i];
        i += 1;
        let rhs = unary(b, &mut i)?;
        acc = match op {
            b'+' => acc.add(rhs)?,
            b'-' => acc.add(rhs.neg())?,
            _ => return None,
        };
    }
    Some(acc)
}

/// The reference's automatic comparison of `answer` against one reference item: exact alias →
/// correct; exact error → wrong; both pure digits and different → wrong; both over `0123456789.-+`
/// → compare as evaluated numbers (evaluation failure → undecided); otherwise undecided.
///
/// ```
/// use lt_eval::{judge_strict, RefItem, Verdict};
/// let item = RefItem::plain(0, "q".into(), "12".into());
/// assert_eq!(judge_strict("12", &item), Verdict::Correct);
/// assert_eq!(judge_strict("12.0", &item), Verdict::Correct);
/// assert_eq!(judge_strict("13", &item), Verdict::Wrong);
/// assert_eq!(judge_strict("$12", &item), Verdict::Undecided);
/// ```
pub fn judge_strict(answer: &str, item: &RefItem) -> Verdict {
    if item.alias.iter().any(|a| a == answer) {
        return Verdict::Correct;
    }
    if item.error.iter().any(|a| a == answer) {
        return Verdict::Wrong;
    }
    let gold = &item.answer;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if digits(answer) && digits(gold) {
        // equal strings would have hit the alias list
        return Verdict::Wrong;
    }
    let numeric = |s: &str| s.chars().all(|c| "0123456789.-+".contains(c));
    if numeric(answer) && numeric(gold) {
        return match (py_eval(answer), py_eval(gold)) {
            (Some(a), Some(g)) => {
                if a.py_eq(g) {
                    Verdict::Correct
                } else {
                    Verdict::Wrong
                }
            }
            _ => Verdict::Undecided,
        };
    }
    Verdict::Undecided
}

const WRAPPERS: [&str; 8] = [
    "\\boxed{",
    "\\text{",
    "\\textbf{",
    "\\mathrm{",
    "\\mathbf{",
    "\\textit{",
    "\\mbox{",
    "\\fbox{",
];

/// Replace `\cmd{X}` by `X` for the wrapper commands (balanced braces, repeatedly).
fn unwrap_commands(s: &str) -> String {
    let mut s = s.to_string();
    loop {
        let mut changed = false;
        for w in WRAPPERS {
            if let Some(p) = s.find(w) {
                let start = p + w.len();
                if let Some(e) = crate::extract::closing_brace(&s, start) {
                    s = format!("{}{}{}", &s[..p], &s[start..e], &s[e + 1..]);
                    changed = true;
                }
            }
        }
        if !changed {
            return s;
        }
    }
}

/// Canonical form of an answer for the normalising judge: wrappers (`\boxed`, `\text`, `\textbf`, ...)
/// and `$` removed, `\left`/`\right`/spacing commands dropped, thousands separators removed, trailing
/// period removed, whitespace collapsed, lower-cased.
///
/// ```
/// assert_eq!(lt_eval::canonical(r"$1,000$"), "1000");
/// assert_eq!(lt_eval::canonical(r"\text{Yes}."), "yes");
/// ```
pub fn canonical(s: &str) -> String {
    let mut t = unwrap_commands(s.trim());
    for (from, to) in [
        ("\\$", ""),
        ("$", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\%", "%"),
        ("^\\circ", ""),
        ("^{\\circ}", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("~", " "),
    ] {
        t = t.replace(from, to);
    }
    let mut t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    while t.ends_with('.') && !t.ends_with("..") {
        t.pop();
    }
    let t = strip_thousands(t.trim());
    t.to_lowercase()
}

/// `1,234,567.5` → `1234567.5`; strings that are not a well-formed grouped number are returned as-is.
fn strip_thousands(s: &str) -> String {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (body, None),
    };
    let groups: Vec<&str> = int.split(',').collect();
    let ok = groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && groups
            .iter()
            .all(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
        && match frac {
            None => true,
            Some(f) => !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()),
        };
    if ok {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

/// Numeric value of a canonical answer: integer/decimal, `\frac{a}{b}`, `a/b`, `x%`, or a number
/// followed by unit words (`18 apples`).
fn numeric_value(c: &str) -> Option<f64> {
    let plain = |s: &str| -> Option<f64> {
        let s = s.trim();
        if s.is_empty() || !s.chars().all(|ch| "0123456789.-+".contains(ch)) {
            return None;
        }
        py_eval(s).map(PyNum::f).or_else(|| s.parse::<f64>().ok())
    };
    if let Some(v) = plain(c) {
        return Some(v);
    }
    let (neg, body) = match c.strip_prefix('-') {
        Some(b) => (true, b.trim()),
        None => (false, c),
    };
    let sign = if neg { -1.0 } else { 1.0 };
    if let Some(rest) = body.strip_prefix("\\frac") {
        let rest = rest.trim();
        let (a, rest) = brace_arg(rest)?;
        let (b, rest) = brace_arg(rest.trim())?;
        if rest.trim().is_empty() {
            let (a, b) = (numeric_value(a)?, numeric_value(b)?);
            return (b != 0.0).then(|| sign * a / b);
        }
        return None;
    }
    if let Some((a, b)) = body.split_once('/') {
        let (a, b) = (plain(a)?, plain(b)?);
        return (b != 0.0).then(|| sign * a / b);
    }
    if let Some(p) = body.strip_suffix('%') {
        return plain(p).map(|v| sign * v);
    }
    // number followed by unit words
    let mut parts = body.splitn(2, ' ');
    let (n, rest) = (parts.next()?, parts.next()?);
    if rest.chars().all(|ch| ch.is_alphabetic() || ch == ' ') {
        return plain(n).map(|v| sign * v);
    }
    None
}

/// `{x}rest` → (`x`, `rest`); single-character arguments (`\frac12`) are accepted too.
fn brace_arg(s: &str) -> Option<(&str, &str)> {
    let mut it = s.char_indices();
    let (_, first) = it.next()?;
    if first != '{' {
        let l = first.len_utf8();
        return Some((&s[..l], &s[l..]));
    }
    let mut depth = 1usize;
    for (i, c) in it {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[1..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// The option letter an answer names: `A`, `(A)`, `A.`, `A)`, `A:`, `A. text`, `(A) text`,
/// `option A`, or the exact text of one of `choices`. `last` is the last valid letter.
pub fn option_letter(answer: &str, choices: &[String], last: char) -> Option<char> {
    let raw = unwrap_commands(answer.trim()).replace('$', "");
    let raw = raw.trim();
    let raw = raw
        .strip_prefix("Option ")
        .or_else(|| raw.strip_prefix("option "))
        .or_else(|| raw.strip_prefix("Answer: "))
        .unwrap_or(raw)
        .trim();
    let b: Vec<char> = raw.chars().collect();
    let is_letter = |c: char| c.is_ascii_uppercase() && c <= last;
    // (A) / (A) text
    if b.len() >= 3
        && b[0] == '('
        && is_letter(b[1])
        && b[2] == ')'
        && (b.len() == 3 || b[3] == ' ')
    {
        return Some(b[1]);
    }
    if !b.is_empty() && is_letter(b[0]) {
        if b.len() == 1 {
            return Some(b[0]);
        }
        if matches!(b[1], '.' | ')' | ':') && (b.len() == 2 || b[2] == ' ') {
            return Some(b[0]);
        }
    }
    let c = canonical(raw);
    if c.is_empty() {
        return None;
    }
    choices
        .iter()
        .position(|ch| canonical(ch) == c)
        .and_then(|i| char::from_u32('A' as u32 + i as u32))
        .filter(|&l| l <= last)
}

/// The normalising comparison, for answers the strict judge leaves undecided.
pub fn judge_normalized(answer: &str, item: &RefItem, dataset: Dataset) -> Verdict {
    let strict = judge_strict(answer, item);
    if strict != Verdict::Undecided || answer == NO_ANSWER {
        return strict;
    }
    let last = match dataset {
        Dataset::Mmlu | Dataset::Gpqa => 'D',
        Dataset::Bbh => 'K',
        Dataset::Gsm8k => '@', // no letters
    };
    if let Some(gold) = answer_letter(&item.answer, last) {
        if let Some(l) = option_letter(answer, &item.choices, last) {
            return if l == gold {
                Verdict::Correct
            } else {
                Verdict::Wrong
            };
        }
    }
    let c = canonical(answer);
    if item.alias.iter().any(|a| canonical(a) == c) {
        return Verdict::Correct;
    }
    if item
        .error
        .iter()
        .any(|a| a != NO_ANSWER && canonical(a) == c)
    {
        return Verdict::Wrong;
    }
    // BBH yes/no may also be answered with the letters A/B: covered by the alias/error lists above.
    if let (Some(a), Some(g)) = (numeric_value(&c), numeric_value(&canonical(&item.answer))) {
        let tol = 1e-9 * g.abs().max(1.0);
        return if (a - g).abs() <= tol {
            Verdict::Correct
        } else {
            Verdict::Wrong
        };
    }
    Verdict::Undecided
}

/// Human decisions for one dataset, keyed by idx: answers added to `alias` (said equal) or `error`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Judgments {
    /// The dataset these decisions belong to.
    pub dataset: Option<Dataset>,
    /// idx → decisions.
    pub items: BTreeMap<usize, Decisions>,
}

/// The answers a human accepted / rejected for one question.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// Accepted answers.
    #[serde(default)]
    pub alias: Vec<String>,
    /// Rejected answers.
    #[serde(default)]
    pub error: Vec<String>,
}

impl Judgments {
    /// Load decisions; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| EvalError::Parse {
                path: path.to_path_buf(),
                line: e.line(),
                msg: format!("judgments file: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(EvalError::io(path, e)),
        }
    }

    /// Save atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| EvalError::Invalid(e.to_string()))?;
        crate::write_atomic(path, text.as_bytes())
    }
}

/// Judges records of one dataset: automatic judge, then (optionally) a human whose decisions are
/// stored in a [`Judgments`] file and reused on the next run.
#[derive(Debug)]
pub struct Judge {
    dataset: Dataset,
    mode: JudgeMode,
    refs: Vec<RefItem>,
    store: Judgments,
    store_path: Option<PathBuf>,
}

impl Judge {
    /// A judge over the dataset's reference items (see [`crate::build_references`]).
    pub fn new(dataset: Dataset, refs: Vec<RefItem>, mode: JudgeMode) -> Self {
        Self {
            dataset,
            mode,
            refs,
            store: Judgments {
                dataset: Some(dataset),
                ..Default::default()
            },
            store_path: None,
        }
    }

    /// Load saved human decisions from `path` (if it exists), apply them to the reference lists, and
    /// save new decisions there.
    pub fn with_store(mut self, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let store = Judgments::load(&path)?;
        if let Some(d) = store.dataset {
            if d != self.dataset {
                return Err(EvalError::Invalid(format!(
                    "{}: judgments are for {d}, not {}",
                    path.display(),
                    self.dataset
                )));
            }
        }
        for (&idx, dec) in &store.items {
            if let Some(item) = self.refs.get_mut(idx) {
                push_all(&mut item.alias, &dec.alias);
                push_all(&mut item.error, &dec.error);
            }
        }
        self.store.items = store.items;
        self.store_path = Some(path);
        Ok(self)
    }

    /// The reference items (including applied decisions).
    pub fn refs(&self) -> &[RefItem] {
        &self.refs
    }

    fn item(&self, idx: i64) -> Result<&RefItem> {
        usize::try_from(idx)
            .ok()
            .and_then(|i| self.refs.get(i))
            .ok_or(EvalError::UnknownIdx {
                idx,
                n: self.refs.len(),
            })
    }

    /// The automatic verdict (strict or normalised) for `answer` to question `idx`.
    pub fn auto(&self, idx: i64, answer: &str) -> Result<Verdict> {
        let item = self.item(idx)?;
        Ok(match self.mode {
            JudgeMode::Strict => judge_strict(answer, item),
            JudgeMode::Normalized => judge_normalized(answer, item, self.dataset),
        })
    }

    /// Judge one answer. Undecided answers are wrong unless `human` is given: then the reference's
    /// prompt ``does `X` equal to `Y` `` is written and `y`/`yes`, `n`/`no` or `e` (show the output and
    /// prompt, then ask again) is read. Decisions extend the lists (so equal later answers are resolved
    /// automatically) and are saved when a store path is set. End of input counts as wrong.
    pub fn judge(
        &mut self,
        idx: i64,
        answer: &str,
        context: (&str, &str),
        human: Option<(&mut dyn BufRead, &mut dyn Write)>,
    ) -> Result<bool> {
        match self.auto(idx, answer)? {
            Verdict::Correct => return Ok(true),
            Verdict::Wrong => return Ok(false),
            Verdict::Undecided => {}
        }
        let Some((input, out)) = human else {
            return Ok(false);
        };
        let gold = self.item(idx)?.answer.clone();
        let io = |e: std::io::Error| EvalError::io("<stdin/stdout>", e);
        let verdict = loop {
            write!(out, "[{idx}] does `{answer}` equal to `{gold}`? [y/n/e] ").map_err(io)?;
            out.flush().map_err(io)?;
            let mut line = String::new();
            if input.read_line(&mut line).map_err(io)? == 0 {
                tracing::warn!("end of input while judging idx {idx}: counted wrong");
                return Ok(false);
            }
            match line.trim().to_ascii_lowercase().as_str() {
                "y" | "yes" => break true,
                "n" | "no" => break false,
                "e" => {
                    writeln!(
                        out,
                        "---- output ----\n{}\n---- prompt ----\n{}\n----",
                        context.0, context.1
                    )
                    .map_err(io)?;
                }
                _ => {}
            }
        };
        let i = idx as usize; // checked by item()
        let dec = self.store.items.entry(i).or_default();
        let item = &mut self.refs[i];
        if verdict {
            push_all(&mut item.alias, &[answer.to_string()]);
            push_all(&mut dec.alias, &[answer.to_string()]);
        } else {
            push_all(&mut item.error, &[answer.to_string()]);
            push_all(&mut dec.error, &[answer.to_string()]);
        }
        if let Some(p) = &self.store_path {
            self.store.save(p)?;
        }
        Ok(verdict)
    }
}

fn push_all(list: &mut Vec<String>, items: &[String]) {
    for s in items {
        if !list.contains(s) {
            list.push(s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(ans: &str, d: Dataset) -> RefItem {
        let mut it = RefItem::plain(0, "q".into(), ans.into());
        it.extend_for(d);
        it
    }

    #[test]
    fn python_eval_subset() {
        assert_eq!(py_eval("12"), Some(PyNum::Int(12)));
        assert_eq!(py_eval("-3+5"), Some(PyNum::Int(2)));
        assert_eq!(py_eval("--1"), Some(PyNum::Int(1)));
        assert_eq!(py_eval("1.5"), Some(PyNum::Float(1.5)));
        assert_eq!(py_eval(".5"), Some(PyNum::Float(0.5)));
        assert_eq!(py_eval("5."), Some(PyNum::Float(5.0)));
        assert_eq!(py_eval("007"), None);
        assert_eq!(py_eval("00"), Some(PyNum::Int(0)));
        assert_eq!(py_eval("1.2.3"), None);
        assert_eq!(py_eval(""), None);
        assert_eq!(py_eval("."), None);
        assert_eq!(py_eval("1-"), None);
    }

    #[test]
    fn strict_cascade() {
        let it = item("18", Dataset::Gsm8k);
        assert_eq!(judge_strict("18", &it), Verdict::Correct);
        assert_eq!(judge_strict("\\text{18}", &it), Verdict::Correct);
        assert_eq!(judge_strict("error", &it), Verdict::Wrong);
        assert_eq!(judge_strict("17", &it), Verdict::Wrong);
        assert_eq!(judge_strict("18.00", &it), Verdict::Correct);
        assert_eq!(judge_strict("20-2", &it), Verdict::Correct);
        assert_eq!(judge_strict("018", &it), Verdict::Wrong); // both pure digits, differ
        assert_eq!(judge_strict("1.8.0", &it), Verdict::Undecided);
        for s in ["$18", "1,8", "\\frac{36}{2}", "18 apples", ""] {
            assert_eq!(judge_strict(s, &it), Verdict::Undecided, "{s}");
        }
        let it = item("B", Dataset::Mmlu);
        assert_eq!(judge_strict("B", &it), Verdict::Correct);
        assert_eq!(judge_strict("C", &it), Verdict::Wrong);
        assert_eq!(judge_strict("(B)", &it), Verdict::Undecided);
    }

    #[test]
    fn normalized_resolves_formatting() {
        let d = Dataset::Gsm8k;
        let it = item("1000", d);
        for s in [
            "$1000",
            "1,000",
            "\\$1,000",
            "\\text{1000}.",
            "1000 dollars",
            "\\boxed{1000}",
        ] {
            assert_eq!(judge_normalized(s, &it, d), Verdict::Correct, "{s}");
        }
        assert_eq!(judge_normalized("$999", &it, d), Verdict::Wrong);
        assert_eq!(judge_normalized("error", &it, d), Verdict::Wrong);
        assert_eq!(judge_normalized("a thousand", &it, d), Verdict::Undecided);
        let it = item("0.5", d);
        assert_eq!(judge_normalized("\\frac{1}{2}", &it, d), Verdict::Correct);
        assert_eq!(judge_normalized("\\dfrac12", &it, d), Verdict::Correct);
        assert_eq!(judge_normalized("1/2", &it, d), Verdict::Correct);
        assert_eq!(judge_normalized("50\\%", &it, d), Verdict::Wrong);

        let d = Dataset::Mmlu;
        let mut it = item("B", d);
        it.choices = vec!["red".into(), "Blue".into(), "green".into(), "black".into()];
        for s in [
            "(B)",
            "B.",
            "B)",
            "B. Blue",
            "(B) Blue",
            "\\textbf{B}",
            "blue",
            "\\text{Blue}",
        ] {
            assert_eq!(judge_normalized(s, &it, d), Verdict::Correct, "{s}");
        }
        for s in ["(C)", "A. red", "green"] {
            assert_eq!(judge_normalized(s, &it, d), Verdict::Wrong, "{s}");
        }
        assert_eq!(judge_normalized("purple", &it, d), Verdict::Undecided);

        let d = Dataset::Bbh;
        let it = item("Yes", d);
        assert_eq!(judge_normalized("\\textbf{yes}", &it, d), Verdict::Correct);
        assert_eq!(judge_normalized("No.", &it, d), Verdict::Wrong);
        let it = item("(C)", d);
        assert_eq!(judge_normalized("C", &it, d), Verdict::Correct);
        assert_eq!(judge_normalized("(D)", &it, d), Verdict::Wrong);
    }

    #[test]
    fn interactive_decisions_saved_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("j.json");
        let refs = vec![
            RefItem::plain(0, "q".into(), "7".into()),
            RefItem::plain(1, "q".into(), "8".into()),
        ];
        let mut j = Judge::new(Dataset::Gsm8k, refs.clone(), JudgeMode::Strict)
            .with_store(&store)
            .unwrap();
        let mut input: &[u8] = b"maybe\ne\ny\nn\n";
        let mut out = Vec::new();
        assert!(j
            .judge(0, "seven", ("OUT", "PROMPT"), Some((&mut input, &mut out)))
            .unwrap());
        // same answer again: resolved automatically, nothing read
        let mut none: &[u8] = b"";
        assert!(j
            .judge(0, "seven", ("", ""), Some((&mut none, &mut out)))
            .unwrap());
        assert!(!j
            .judge(1, "eight?", ("", ""), Some((&mut input, &mut out)))
            .unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("does `seven` equal to `7`"), "{text}");
        assert!(text.contains("OUT") && text.contains("PROMPT"));
        // next run: decisions reused without a human
        let mut j2 = Judge::new(Dataset::Gsm8k, refs.clone(), JudgeMode::Strict)
            .with_store(&store)
            .unwrap();
        assert!(j2.judge(0, "seven", ("", ""), None).unwrap());
        assert_eq!(j2.auto(1, "eight?").unwrap(), Verdict::Wrong);
        // without a human, undecided = wrong
        let mut j3 = Judge::new(Dataset::Gsm8k, refs.clone(), JudgeMode::Strict);
        assert!(!j3.judge(0, "seven", ("", ""), None).unwrap());
        assert!(j3.auto(5, "1").is_err());
        // a store of another dataset is refused
        assert!(Judge::new(Dataset::Mmlu, refs, JudgeMode::Strict)
            .with_store(&store)
            .is_err());
    }
}
