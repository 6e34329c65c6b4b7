//! Learning-rate schedules exactly as `transformers` computes them.
//!
//! The multiplier functions are transcriptions of `transformers.optimization`
//! (`_get_linear_schedule_with_warmup_lr_lambda`, `_get_cosine_schedule_with_warmup_lr_lambda`
//! with `num_cycles = 0.5`), evaluated in `f64` like Python, and multiplied by the base lr like
//! `torch.optim.lr_scheduler.LambdaLR`. Optimizer step `s` (0-based) uses `lr_at(s)`, so the very
//! first update uses lr 0 whenever there is a warmup.
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The scheduler families of the reference (`--lr-scheduler-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Linear warmup, then linear decay to 0 at `total`.
    Linear,
    /// Linear warmup, then half a cosine down to 0 at `total` (the reference's choice).
    #[default]
    Cosine,
    /// Constant lr (after an optional linear warmup): `constant_with_warmup`.
    Constant,
}

impl FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear),
            "cosine" => Ok(Self::Cosine),
            "constant" | "constant_with_warmup" => Ok(Self::Constant),
            other => Err(format!(
                "unknown lr scheduler `{other}` (expected linear, cosine or constant)"
            )),
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Constant => "constant",
        })
    }
}

/// `TrainingArguments.get_warmup_steps`: `warmup_steps` if positive, else `ceil(total * ratio)`.
///
/// ```no_run
/// assert_eq!(lt_train::warmup_steps(1045, 0.05, 0), 53);
/// assert_eq!(lt_train::warmup_steps(1045, 0.05, 10), 10);
/// ```
pub fn warmup_steps(total: usize, warmup_ratio: f64, warmup_steps: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (total as f64 * warmup_ratio).ceil() as usize
    }
}

/// A learning-rate schedule: `lr_at(step) = base_lr * multiplier(step)`.
///
/// ```no_run
/// use lt_train::{Schedule, SchedulerKind};
/// let s = Schedule::new(SchedulerKind::Cosine, 2e-5, 53, 1045);
/// assert_eq!(s.lr_at(0), 0.0); // the first update uses lr 0
/// assert_eq!(s.lr_at(53), 2e-5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Family.
    pub kind: SchedulerKind,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Number of warmup steps.
    pub warmup: usize,
    /// Total number of optimizer steps (`num_training_steps`).
    pub total: usize,
}

impl Schedule {
    /// A schedule over `total` optimizer steps with `warmup` warmup steps.
    pub fn new(kind: SchedulerKind, base_lr: f64, warmup: usize, total: usize) -> Self {
        Self {
            kind,
            base_lr,
            warmup,
            total,
        }
    }

    /// The lr multiplier at 0-based optimizer step `step` (HF's `lr_lambda`).
    pub fn multiplier(&self, step: usize) -> f64 {
        let (w, t) = (self.warmup, self.total);
        if step < w {
            return step as f64 / w.max(1) as f64;
        }
        match self.kind {
            SchedulerKind::Constant => 1.0,
            SchedulerKind::Linear => {
                let num = t as f64 - step as f64;
                let den = (t.saturating_sub(w)).max(1) as f64;
                f64::max(0.0, num / den)
            }
            SchedulerKind::Cosine => {
                let num_cycles = 0.5_f64;
                let progress = (step - w) as f64 / (t.saturating_sub(w)).max(1) as f64;
                f64::max(
                    0.0,
                    0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos()),
                )
            }
        }
    }

    /// The learning rate used by 0-based optimizer step `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.multiplier(step)
    }
}
