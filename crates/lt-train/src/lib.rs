//! `lt-train`: LightThinker training on libtorch — every mode of the reference (normal, aug,
//! aug-wo-pc, recover, hybrid) on `lt-data` batches and an `lt-model` [`Model`](lt_model::Model).
//!
//! * [`AdamW`] — `torch.optim.AdamW` bit for bit (f32 master weights for bf16 models), with
//!   global-norm clipping; its state saves to safetensors.
//! * [`Schedule`] — HF's linear / cosine schedules with warmup.
//! * [`train`] / [`train_with`] — gradient accumulation with the reference's loss reduction
//!   (token mean over the accumulation window), `metrics.jsonl`, a loss-curve SVG, atomic
//!   HF-format checkpoints and exact `resume`.
//! * [`DataSource`] — [`RowsSource`] (built samples, shuffled per epoch) or any
//!   `FnMut(epoch, index) -> TrainBatch` via [`FnSource`] (e.g. fresh synthetic problems per step).
//!
//! ```no_run
//! use lt_train::{train, FnSource, TrainBatch, TrainConfig};
//! # fn rows_for(step: usize) -> Vec<lt_data::BuiltRow> { unimplemented!() }
//! let cfg = lt_model::ModelConfig::tiny_llama(64, 32, 2, 4, 2, 64);
//! let mut model = lt_model::Model::random(&cfg, tch::Device::Cpu, tch::Kind::Float, 0)?;
//! let mut data = FnSource(|_epoch: usize, i: usize| {
//!     TrainBatch::from_rows(&rows_for(i), &Default::default(), lt_data::PadTo::Longest, 0)
//! });
//! let tc = TrainConfig { lr: 1e-3, max_steps: Some(100), gradient_accumulation_steps: 1, ..Default::default() };
//! let report = train(&tc, &mut model, &mut data)?;
//! println!("final loss {:?}", report.final_loss());
//! # Ok::<(), lt_train::TrainError>(())
//! ```
#![warn(missing_docs)]

mod batch;
pub mod checkpoint;
mod data;
mod error;
mod loss;
mod metrics;
mod optim;
mod schedule;
mod trainer;

pub use batch::{DataSource, DeviceBatch, FnSource, RowsSource, TrainBatch};
pub use checkpoint::{write_atomic, TrainerState};
pub use data::{prepare_data, PreparedData};
pub use error::{Result, TrainError};
pub use loss::{count_labels, selected_ce_sum, shifted_ce_sum, window_loss, IGNORE_INDEX};
pub use metrics::{append_metrics, loss_curve_svg, read_metrics, StepMetrics};
pub use optim::{AdamW, AdamWConfig};
pub use schedule::{warmup_steps, Schedule, SchedulerKind};
pub use trainer::{
    holds_run, micro_batch_ce_sum, prepare_output_dir, train, train_with, Control, SaveDtype,
    TrainConfig, TrainReport, LOSS_CURVE_FILE, METRICS_FILE,
};
