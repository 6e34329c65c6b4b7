//! The demo's seeded synthetic reasoning task: a running value changed by a list of labelled steps.
//!
//! Prompt `47 A-2 B-7 C+5 D-9 E-3 F=`: start with 47, apply the steps in order, report the value at `F`.
//! Each thought performs one step and restates the running value (so that the cache tokens of a compressed
//! thought must carry it): `Step C: now we take 38, then we add 5 to it and so we get 43.`; the last thought is
//! `Step F: so the final answer is \boxed{31}.`. Every step depends on the previous result, so a model that
//! lost the running value when the thought was evicted cannot answer.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The instruction every LightThinker eval reader puts in front of the question.
pub use lt_data::BOXED_INSTRUCTION;

/// Shape of the generated problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskShape {
    /// Fewest steps in a problem.
    pub min_steps: usize,
    /// Most steps in a problem.
    pub max_steps: usize,
}

impl Default for TaskShape {
    fn default() -> Self {
        TaskShape {
            min_steps: 4,
            max_steps: 8,
        }
    }
}

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Start value, 0..=99.
    pub start: i64,
    /// Signed step amounts (±1..=9), applied in order.
    pub steps: Vec<i64>,
}

/// Step label of step `i` (A, B, …).
pub fn label(i: usize) -> char {
    (b'A' + i as u8) as char
}

impl Problem {
    /// A random problem whose running value stays in 0..=99.
    pub fn sample(rng: &mut StdRng, shape: TaskShape) -> Self {
        let n = rng.gen_range(shape.min_steps..=shape.max_steps);
        let start = rng.gen_range(0..=99);
        let mut value = start;
        let mut steps = Vec::with_capacity(n);
        for _ in 0..n {
            let step = loop {
                let mag = rng.gen_range(1..=9);
                let s = if rng.gen_bool(0.5) { mag } else { -mag };
                if (0..=99).contains(&(value + s)) {
                    break s;
                }
            };
            value += step;
            steps.push(step);
        }
        Problem { start, steps }
    }

    /// Running values after each step.
    pub fn values(&self) -> Vec<i64> {
        let mut v = self.start;
        self.steps
            .iter()
            .map(|s| {
                v += s;
                v
            })
            .collect()
    }

    /// The final value.
    pub fn answer(&self) -> i64 {
        self.start + self.steps.iter().sum::<i64>()
    }

    /// The problem text, e.g. `47 A-2 B-7 C+5 F=`.
    pub fn question(&self) -> String {
        let mut q = self.start.to_string();
        for (i, s) in self.steps.iter().enumerate() {
            q.push_str(&format!(
                " {}{}{}",
                label(i),
                if *s >= 0 { '+' } else { '-' },
                s.abs()
            ));
        }
        q.push_str(&format!(" {}=", label(self.steps.len())));
        q
    }

    /// The reasoning: one thought per step, then the answer thought.
    pub fn thoughts(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.steps.len() + 1);
        let mut v = self.start;
        for (i, s) in self.steps.iter().enumerate() {
            let verb = if *s >= 0 { "add" } else { "subtract" };
            let prep = if *s >= 0 { "to" } else { "from" };
            let next = v + s;
            out.push(format!(
                "Step {}: now we take {v}, then we {verb} {} {prep} it and so we get {next}.",
                label(i),
                s.abs()
            ));
            v = next;
        }
        out.push(format!(
            "Step {}: so the final answer is \\boxed{{{}}}.",
            label(self.steps.len()),
            self.answer()
        ));
        out
    }

    /// A line of the LightThinker training JSONL schema (empty system prompt).
    pub fn training_record(&self) -> Value {
        let thoughts = self.thoughts();
        json!({
            "question": format!("{BOXED_INSTRUCTION} {}", self.question()),
            "system_prompt": "",
            "system_list": [],
            "question_list": [BOXED_INSTRUCTION, self.question()],
            "thoughts_list": thoughts,
            "gt_output": thoughts.join("\n\n"),
        })
    }

    /// An item of the reference's `data/eval/gsm8k.json` layout.
    pub fn gsm8k_item(&self) -> Value {
        json!({
            "meta_data": {"question": self.question(), "answer": self.answer().to_string()},
            "question": self.question(),
            "answer": self.answer().to_string(),
        })
    }
}

/// A seeded stream of problems. Train and eval streams use different seeds; eval problems that
/// also occur in training are possible but rare (~1e6 distinct problems per length).
pub struct ProblemStream {
    rng: StdRng,
    shape: TaskShape,
}

impl ProblemStream {
    /// A stream from `seed`.
    pub fn new(seed: u64, shape: TaskShape) -> Self {
        ProblemStream {
            rng: StdRng::seed_from_u64(seed),
            shape,
        }
    }
}

impl Iterator for ProblemStream {
    type Item = Problem;
    fn next(&mut self) -> Option<Problem> {
        Some(Problem::sample(&mut self.rng, self.shape))
    }
}

/// The eval file (gsm8k layout) for `problems`.
pub fn gsm8k_file(problems: &[Problem]) -> Value {
    json!({ "math": problems.iter().map(Problem::gsm8k_item).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_chain_the_running_value() {
        let p = Problem {
            start: 47,
            steps: vec![-2, -7, 5],
        };
        assert_eq!(p.question(), "47 A-2 B-7 C+5 D=");
        assert_eq!(p.answer(), 43);
        let t = p.thoughts();
        assert_eq!(
            t[0],
            "Step A: now we take 47, then we subtract 2 from it and so we get 45."
        );
        assert_eq!(
            t[2],
            "Step C: now we take 38, then we add 5 to it and so we get 43."
        );
        assert_eq!(t[3], "Step D: so the final answer is \\boxed{43}.");
        let r = p.training_record();
        assert_eq!(r["gt_output"].as_str().unwrap().matches("\n\n").count(), 3);
    }

    #[test]
    fn values_stay_in_range_and_streams_are_seeded() {
        let a: Vec<Problem> = ProblemStream::new(7, TaskShape::default())
            .take(500)
            .collect();
        let b: Vec<Problem> = ProblemStream::new(7, TaskShape::default())
            .take(500)
            .collect();
        assert_eq!(a, b);
        for p in &a {
            assert!((4..=8).contains(&p.steps.len()));
            assert!(p.values().iter().all(|v| (0..=99).contains(v)));
            assert!(p.steps.iter().all(|s| (1..=9).contains(&s.abs())));
        }
    }
}
