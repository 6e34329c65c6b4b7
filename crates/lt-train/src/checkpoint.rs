//! Checkpoints: `OUT/checkpoint-<step>/` = HF weights (`config.json` + safetensors, via
//! `lt_model::Model::save_hf`) + `optimizer.safetensors` + `scheduler.json` +
//! `trainer_state.json` (+ `rng_state.json`), assembled in a temporary directory and renamed into
//! place, so a checkpoint directory either is complete or does not exist.
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use crate::schedule::Schedule;
use lt_model::{Kind, Model};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// File names inside a checkpoint directory.
pub const TRAINER_STATE: &str = "trainer_state.json";
/// Optimizer state file.
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// Scheduler state file.
pub const SCHEDULER: &str = "scheduler.json";
/// Data-order RNG state file.
pub const RNG_STATE: &str = "rng_state.json";

/// Where training stands: everything besides weights and optimizer needed to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Completed optimizer steps.
    pub global_step: usize,
    /// Epoch of the next micro-batch (0-based).
    pub epoch: usize,
    /// Index of the next micro-batch within `epoch`.
    pub next_micro_batch: usize,
    /// Total optimizer steps of the run (the schedule's `num_training_steps`).
    pub max_steps: usize,
    /// Micro-batches per epoch (`None` for an unbounded data source).
    pub micro_batches_per_epoch: Option<usize>,
    /// Real tokens seen so far.
    pub tokens_seen: u64,
    /// Data-order seed.
    pub seed: u64,
    /// Version of lt-train that wrote the state.
    pub lt_train_version: String,
}

/// The data-order RNG state (it is a pure function of `(seed, epoch)`, so this is all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Seed of the run.
    pub seed: u64,
    /// Epoch whose permutation is in use.
    pub epoch: usize,
}

/// Write `bytes` to `path` atomically (temp file in the same directory, synced, then renamed;
/// [`lt_data::io::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(lt_data::io::write_atomic(path, bytes)?)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| TrainError::Json {
        path: path.into(),
        source: e,
    })?;
    write_atomic(path, s.as_bytes())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let s = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&s).map_err(|e| TrainError::Json {
        path: path.into(),
        source: e,
    })
}

/// The directory name of the checkpoint after `step` optimizer steps.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Save a complete checkpoint of `step` under `out`, atomically; returns its directory.
/// Weights are written in `dtype` (use the model's own kind for an exact resume).
pub fn save_checkpoint(
    out: &Path,
    model: &Model,
    dtype: Kind,
    opt: &AdamW,
    schedule: &Schedule,
    state: &TrainerState,
    extra: &[(&str, serde_json::Value)],
) -> Result<PathBuf> {
    let step = state.global_step;
    let fin = checkpoint_dir(out, step);
    let tmp = out.join(format!(".tmp-checkpoint-{step}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    model.save_hf(&tmp, dtype)?;
    opt.save(&tmp.join(OPTIMIZER))?;
    write_json(&tmp.join(SCHEDULER), schedule)?;
    write_json(
        &tmp.join(RNG_STATE),
        &RngState {
            seed: state.seed,
            epoch: state.epoch,
        },
    )?;
    for (name, v) in extra {
        write_json(&tmp.join(name), v)?;
    }
    // trainer_state.json last: its presence marks a complete checkpoint.
    write_json(&tmp.join(TRAINER_STATE), state)?;
    if fin.exists() {
        let old = out.join(format!(".old-checkpoint-{step}-{}", std::process::id()));
        std::fs::rename(&fin, &old).map_err(|e| TrainError::io(&fin, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    std::fs::rename(&tmp, &fin).map_err(|e| TrainError::io(&fin, e))?;
    Ok(fin)
}

/// All complete checkpoints under `out` (those with a `trainer_state.json`), sorted by step.
pub fn list_checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut v: Vec<(usize, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            let p = e.path();
            p.join(TRAINER_STATE).is_file().then_some((step, p))
        })
        .collect();
    v.sort();
    v
}

/// Read a checkpoint's trainer state.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    read_json(&dir.join(TRAINER_STATE))
}

/// Read a checkpoint's schedule.
pub fn read_schedule(dir: &Path) -> Result<Schedule> {
    read_json(&dir.join(SCHEDULER))
}

/// Copy a checkpoint's HF weights (every `*.safetensors` file of `dir`, single or sharded) into
/// the model's parameters, in place. Every parameter must be present with the same shape.
pub fn load_weights_into(model: &Model, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                && p.file_name().is_some_and(|n| n != OPTIMIZER)
        })
        .collect();
    files.sort();
    let mut map = std::collections::HashMap::new();
    for f in &files {
        for (n, t) in Tensor::read_safetensors(f)? {
            map.insert(n, t);
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut p) in model.named_parameters() {
            let t = map
                .get(&name)
                .ok_or_else(|| TrainError::checkpoint(dir, format!("missing weight `{name}`")))?;
            if t.size() != p.size() {
                return Err(TrainError::checkpoint(
                    dir,
                    format!(
                        "weight `{name}` has shape {:?}, the model {:?}",
                        t.size(),
                        p.size()
                    ),
                ));
            }
            p.f_copy_(t)?;
        }
        Ok(())
    })
}
