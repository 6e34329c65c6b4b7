//! The training loop.
use crate::batch::{DataSource, TrainBatch};
use crate::checkpoint::{self, TrainerState};
use crate::error::{Result, TrainError};
use crate::loss;
use crate::metrics::{self, StepMetrics};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::{warmup_steps, Schedule, SchedulerKind};
use lt_model::{AttnMask, Kind, Logits, Model};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// Name of the metrics file in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Name of the loss-curve file in the output directory.
pub const LOSS_CURVE_FILE: &str = "loss.svg";

/// Optimisation settings of a run (the reference's defaults: [`TrainConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Scheduler family.
    pub scheduler: SchedulerKind,
    /// Warmup as a fraction of the total steps (used when `warmup_steps == 0`).
    pub warmup_ratio: f64,
    /// Warmup steps (wins over the ratio when > 0).
    pub warmup_steps: usize,
    /// Epochs over a finite data source.
    pub epochs: usize,
    /// Micro-batches accumulated per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Global gradient-norm clip threshold (`<= 0` disables clipping; the norm is still logged).
    pub max_grad_norm: f64,
    /// Stop after this many optimizer steps (also the schedule's length); `None` = `epochs`
    /// worth of steps.
    pub max_steps: Option<usize>,
    /// Extra checkpoint every N steps (`None` = only at epoch ends and at the end).
    pub save_steps: Option<usize>,
    /// Checkpoint at the end of every epoch (the reference's `save_strategy="epoch"`).
    pub save_each_epoch: bool,
    /// Data-order seed (and recorded in the checkpoint).
    pub seed: u64,
    /// Output directory (`metrics.jsonl`, `loss.svg`, `checkpoint-<step>/`); `None` = keep
    /// everything in memory (no checkpoints).
    pub output_dir: Option<PathBuf>,
    /// Continue from the newest checkpoint in `output_dir`.
    pub resume: bool,
    /// Replace an existing run in `output_dir`.
    pub overwrite: bool,
    /// Dtype of checkpoint weights (`None` = the model's own dtype, exact for resume).
    pub save_dtype: Option<SaveDtype>,
    /// AdamW hyper-parameters.
    pub adamw: AdamWConfig,
    /// Multiply each micro-batch loss by `1/gradient_accumulation_steps` before backward, as
    /// DeepSpeed did in the reference (changes the effective clip threshold; off by default).
    pub deepspeed_gas_scale: bool,
    /// Show a progress bar on stderr (hidden automatically when stderr is not a terminal).
    pub progress: bool,
    /// Stop (without a final checkpoint) after this many steps of this invocation: simulates a
    /// kill for resume tests.
    #[serde(skip)]
    pub halt_after: Option<usize>,
}

/// A checkpoint weight dtype (serialisable stand-in for `tch::Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    /// float32.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl SaveDtype {
    /// The tch kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-5,
            scheduler: SchedulerKind::Cosine,
            warmup_ratio: 0.05,
            warmup_steps: 0,
            epochs: 5,
            gradient_accumulation_steps: 4,
            max_grad_norm: 1.0,
            max_steps: None,
            save_steps: None,
            save_each_epoch: true,
            seed: 42,
            output_dir: None,
            resume: false,
            overwrite: false,
            save_dtype: None,
            adamw: AdamWConfig::default(),
            deepspeed_gas_scale: false,
            progress: false,
            halt_after: None,
        }
    }
}

/// What a finished (or halted) run reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    /// Completed optimizer steps (including those before a resume).
    pub steps: usize,
    /// Total steps of the run.
    pub max_steps: usize,
    /// Metrics of every step of this invocation.
    pub metrics: Vec<StepMetrics>,
    /// Checkpoint directories written by this invocation.
    pub checkpoints: Vec<PathBuf>,
    /// Step the run resumed from.
    pub resumed_from: Option<usize>,
    /// Real tokens processed by this invocation.
    pub tokens: u64,
    /// Wall seconds of this invocation.
    pub elapsed_s: f64,
}

impl TrainReport {
    /// Loss of the last step, if any.
    pub fn final_loss(&self) -> Option<f64> {
        self.metrics.last().map(|m| m.loss)
    }
    /// Mean real tokens per second over this invocation.
    pub fn tokens_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.tokens as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Control returned by a step callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop after this step (a final checkpoint is still written).
    Stop,
}

/// Train `model` on `data` (see [`train_with`]).
pub fn train(
    cfg: &TrainConfig,
    model: &mut Model,
    data: &mut dyn DataSource,
) -> Result<TrainReport> {
    train_with(cfg, model, data, &mut |_| Control::Continue)
}

/// Validate a config.
fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |f: &str, m: &str| TrainError::config(f, m);
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
        return Err(bad(
            "lr",
            &format!("must be a finite number >= 0, got {}", cfg.lr),
        ));
    }
    if cfg.gradient_accumulation_steps == 0 {
        return Err(bad("gradient_accumulation_steps", "must be at least 1"));
    }
    if !(0.0..=1.0).contains(&cfg.warmup_ratio) {
        return Err(bad(
            "warmup_ratio",
            &format!("must be in [0, 1], got {}", cfg.warmup_ratio),
        ));
    }
    if cfg.max_steps == Some(0) {
        return Err(bad("max_steps", "must be at least 1"));
    }
    if cfg.max_steps.is_none() && cfg.epochs == 0 {
        return Err(bad("epochs", "must be at least 1 (or give max_steps)"));
    }
    if cfg.save_steps == Some(0) {
        return Err(bad("save_steps", "must be at least 1"));
    }
    if cfg.resume && cfg.overwrite {
        return Err(bad("resume", "--resume and --overwrite exclude each other"));
    }
    if (cfg.resume || cfg.overwrite) && cfg.output_dir.is_none() {
        return Err(bad(
            "output_dir",
            "resume/overwrite need an output directory",
        ));
    }
    Ok(())
}

/// Whether `out` already holds (part of) a training run.
pub fn holds_run(out: &Path) -> bool {
    out.join(METRICS_FILE).exists() || !checkpoint::list_checkpoints(out).is_empty() || {
        std::fs::read_dir(out).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        })
    }
}

/// Prepare the output directory: refuse to clobber a run, clear it on overwrite.
pub fn prepare_output_dir(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if holds_run(out) && !resume {
        if !overwrite {
            return Err(TrainError::OutputExists(out.to_path_buf()));
        }
        // Remove only what a run writes.
        let rd = std::fs::read_dir(out).map_err(|e| TrainError::io(out, e))?;
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name.starts_with("checkpoint-") || name.starts_with(".tmp-checkpoint-") {
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            } else if name == METRICS_FILE || name == LOSS_CURVE_FILE || name == "run_config.json" {
                std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))
}

/// Forward one micro-batch: the summed next-token cross-entropy (differentiable f32 scalar), the
/// number of predicted (shifted, labelled) tokens and the sum's value computed deterministically
/// in f64 (see [`selected_ce_sum`](crate::selected_ce_sum)).
///
/// Only the positions whose next label is supervised go through the lm_head, so the
/// `[B, T, V]` logits are never materialised.
pub fn micro_batch_ce_sum(model: &Model, batch: &TrainBatch) -> Result<(Tensor, usize, f64)> {
    let dev = model.device();
    let t = batch.to_tensors(dev)?;
    let mask = match &t.mask {
        Some(m) => AttnMask::Bool(m),
        None => AttnMask::Causal,
    };
    let hidden = model.forward(&t.input_ids, &t.position_ids, mask, None, Logits::None)?;
    let (b, s) = (batch.batch.batch as i64, batch.batch.seq_len as i64);
    // predictor positions: (row, p-1) for every labelled p >= 1
    let mut pred = Vec::new();
    let mut targets = Vec::new();
    for r in 0..b as usize {
        let row = &batch.batch.labels[r * s as usize..(r + 1) * s as usize];
        for (p, &l) in row.iter().enumerate().skip(1) {
            if l != loss::IGNORE_INDEX {
                pred.push((r * s as usize + p - 1) as i64);
                targets.push(l);
            }
        }
    }
    let n = targets.len();
    if n == 0 {
        // Keep the graph connected so backward is well defined; the value is exactly 0.
        return Ok((hidden.f_sum(Kind::Float)?.f_mul_scalar(0.0)?, 0, 0.0));
    }
    let h = hidden.f_view([b * s, -1])?;
    let idx = Tensor::from_slice(&pred).to_device(dev);
    let sel = h.f_index_select(0, &idx)?;
    let tgt = Tensor::from_slice(&targets).to_device(dev);
    let (sum, value) = loss::selected_ce_sum(&sel, model.lm_head(), &tgt)?;
    Ok((sum, n, value))
}

/// Train with a per-step callback (called after every optimizer step; return
/// [`Control::Stop`] to end early).
///
/// Each optimizer step accumulates `gradient_accumulation_steps` micro-batches (an epoch's
/// last window may be shorter): every micro-batch loss is `CE_sum / N_window`, `N_window` being
/// the labelled tokens of the whole window, so the summed gradient is that of the window's
/// token-mean loss. Then global-norm clipping, one AdamW update with the schedule's lr for that
/// step (step 0 uses lr 0 when warming up), and a `metrics.jsonl` line.
///
/// The schedule spans `max_steps` or else `epochs * max(micro_batches_per_epoch / GAS, 1)`
/// optimizer steps, as transformers' Trainer computes it; training stops there.
pub fn train_with(
    cfg: &TrainConfig,
    model: &mut Model,
    data: &mut dyn DataSource,
    on_step: &mut dyn FnMut(&StepMetrics) -> Control,
) -> Result<TrainReport> {
    validate(cfg)?;
    let start = Instant::now();
    let gas = cfg.gradient_accumulation_steps;
    let mb_per_epoch = data.micro_batches_per_epoch();
    if mb_per_epoch == Some(0) {
        return Err(TrainError::Data(
            "the data source has no micro-batches".into(),
        ));
    }
    let updates_per_epoch = mb_per_epoch.map(|n| (n / gas).max(1));
    let total = match (cfg.max_steps, updates_per_epoch) {
        (Some(m), _) => m,
        (None, Some(u)) => cfg.epochs * u,
        (None, None) => {
            return Err(TrainError::config(
                "max_steps",
                "an unbounded data source needs max_steps",
            ))
        }
    };
    let warmup = warmup_steps(total, cfg.warmup_ratio, cfg.warmup_steps);
    let schedule = Schedule::new(cfg.scheduler, cfg.lr, warmup, total);
    let save_kind = cfg.save_dtype.map_or(model.kind(), SaveDtype::kind);

    let out = cfg.output_dir.clone();
    if let Some(out) = &out {
        prepare_output_dir(out, cfg.resume, cfg.overwrite)?;
    }
    let mut opt = AdamW::new(model.named_parameters(), cfg.adamw);
    let mut state = TrainerState {
        global_step: 0,
        epoch: 0,
        next_micro_batch: 0,
        max_steps: total,
        micro_batches_per_epoch: mb_per_epoch,
        tokens_seen: 0,
        seed: cfg.seed,
        lt_train_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut report = TrainReport {
        max_steps: total,
        ..Default::default()
    };

    if cfg.resume {
        let out = out.as_ref().expect("validated");
        let (step, dir) = checkpoint::list_checkpoints(out).pop().ok_or_else(|| {
            TrainError::Resume(format!(
                "no complete checkpoint-<step>/ in {}",
                out.display()
            ))
        })?;
        let st = checkpoint::read_state(&dir)?;
        if st.max_steps != total || st.micro_batches_per_epoch != mb_per_epoch {
            return Err(TrainError::Resume(format!(
                "{} was written by a run of {} steps over {:?} micro-batches/epoch; this run has {} over {:?}",
                dir.display(),
                st.max_steps,
                st.micro_batches_per_epoch,
                total,
                mb_per_epoch
            )));
        }
        checkpoint::load_weights_into(model, &dir)?;
        opt.load(&dir.join(checkpoint::OPTIMIZER))?;
        let saved_schedule = checkpoint::read_schedule(&dir)?;
        if saved_schedule != schedule {
            return Err(TrainError::Resume(format!(
                "{}: schedule {saved_schedule:?} differs from this run's {schedule:?}",
                dir.display()
            )));
        }
        state = st;
        let mpath = out.join(METRICS_FILE);
        if mpath.exists() {
            metrics::truncate_metrics(&mpath, step)?;
        }
        report.resumed_from = Some(step);
        tracing::info!(step, dir = %dir.display(), "resumed");
    }
    if let Some(out) = &out {
        let cfg_path = out.join("run_config.json");
        let s = serde_json::to_string_pretty(cfg).map_err(|e| TrainError::Json {
            path: cfg_path.clone(),
            source: e,
        })?;
        checkpoint::write_atomic(&cfg_path, s.as_bytes())?;
    }

    let pb = if cfg.progress {
        let pb = indicatif::ProgressBar::new(total as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position(state.global_step as u64);
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };

    opt.zero_grad();
    let mut last_saved = report.resumed_from;
    let mut steps_this_run = 0usize;
    let save = |state: &TrainerState,
                opt: &AdamW,
                model: &Model,
                report: &mut TrainReport|
     -> Result<()> {
        if let Some(out) = &out {
            let dir =
                checkpoint::save_checkpoint(out, model, save_kind, opt, &schedule, state, &[])?;
            let mpath = out.join(METRICS_FILE);
            if mpath.exists() {
                let ms = metrics::read_metrics(&mpath)?;
                let pts: Vec<(usize, f64)> = ms.iter().map(|m| (m.step, m.loss)).collect();
                checkpoint::write_atomic(
                    &out.join(LOSS_CURVE_FILE),
                    metrics::loss_curve_svg(&pts, "training loss").as_bytes(),
                )?;
            }
            tracing::info!(dir = %dir.display(), "checkpoint saved");
            report.checkpoints.push(dir);
        }
        Ok(())
    };

    while state.global_step < total {
        // Epoch boundary.
        if let Some(n) = mb_per_epoch {
            if state.next_micro_batch >= n {
                state.epoch += 1;
                state.next_micro_batch = 0;
            }
        }
        let t0 = Instant::now();
        let window_len = match mb_per_epoch {
            Some(n) => gas.min(n - state.next_micro_batch),
            None => gas,
        };
        let mut batches = Vec::with_capacity(window_len);
        for k in 0..window_len {
            batches.push(data.micro_batch(state.epoch, state.next_micro_batch + k)?);
        }
        let n_window: usize = batches.iter().map(TrainBatch::n_labelled).sum();
        let tokens: usize = batches.iter().map(|b| b.real_tokens).sum();
        let extra = if cfg.deepspeed_gas_scale {
            1.0 / gas as f64
        } else {
            1.0
        };
        let mut loss_value = 0.0f64;
        for b in &batches {
            let (ce_sum, _, value) = micro_batch_ce_sum(model, b)?;
            let l = loss::window_loss(&ce_sum, n_window, 1.0)?;
            loss_value += value / n_window.max(1) as f64;
            let l = if extra != 1.0 {
                l.f_mul_scalar(extra)?
            } else {
                l
            };
            l.f_backward()?;
        }
        let step_index = state.global_step; // 0-based index of this update
        if !loss_value.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                step: step_index + 1,
            });
        }
        let grad_norm = if cfg.max_grad_norm > 0.0 {
            opt.clip_grad_norm(cfg.max_grad_norm)?
        } else {
            opt.grad_norm()?
        };
        let lr = schedule.lr_at(step_index);
        opt.step(lr)?;
        opt.zero_grad();
        state.global_step += 1;
        state.next_micro_batch += window_len;
        state.tokens_seen += tokens as u64;
        steps_this_run += 1;
        let dt = t0.elapsed().as_secs_f64();
        let epoch_f = match mb_per_epoch {
            Some(n) => state.epoch as f64 + state.next_micro_batch as f64 / n as f64,
            None => 0.0,
        };
        let m = StepMetrics {
            step: state.global_step,
            epoch: epoch_f,
            loss: loss_value,
            lr,
            grad_norm,
            tokens_per_s: if dt > 0.0 { tokens as f64 / dt } else { 0.0 },
            tokens,
            labelled_tokens: n_window,
            step_time_s: dt,
        };
        if let Some(out) = &out {
            metrics::append_metrics(&out.join(METRICS_FILE), &m)?;
        }
        tracing::debug!(
            step = m.step,
            loss = m.loss,
            lr = m.lr,
            grad_norm = m.grad_norm,
            "step"
        );
        pb.set_position(state.global_step as u64);
        pb.set_message(format!("loss {:.4} lr {:.2e}", m.loss, m.lr));
        report.tokens += tokens as u64;
        let ctl = on_step(&m);
        report.metrics.push(m);
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "grad_norm",
                step: state.global_step,
            });
        }

        let epoch_done = mb_per_epoch.is_some_and(|n| state.next_micro_batch >= n);
        let periodic = cfg
            .save_steps
            .is_some_and(|k| state.global_step.is_multiple_of(k));
        if (epoch_done && cfg.save_each_epoch) || periodic {
            save(&state, &opt, model, &mut report)?;
            last_saved = Some(state.global_step);
        }
        if cfg.halt_after.is_some_and(|h| steps_this_run >= h) {
            report.steps = state.global_step;
            report.elapsed_s = start.elapsed().as_secs_f64();
            pb.abandon();
            return Ok(report);
        }
        if ctl == Control::Stop {
            break;
        }
    }
    if last_saved != Some(state.global_step) && state.global_step > 0 {
        save(&state, &opt, model, &mut report)?;
    }
    pb.finish_and_clear();
    report.steps = state.global_step;
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}
