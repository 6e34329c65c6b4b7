//! Shared set-up of lt-train's tests and its `train_step` bench: the tiny arithmetic task
//! (`tests/fixtures/tiny_task`, made by `scripts/lt_train_make_fixtures.py`), a tiny random
//! Llama, a row source and a short cosine schedule.
#![allow(dead_code)]
use lt_data::{BuildOptions, Mode, PadTo};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model, ModelConfig};
use lt_train::{prepare_data, PreparedData, RowsSource, SchedulerKind, TrainConfig};
use std::path::PathBuf;

pub fn task() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_task")
}

pub fn opts(mode: Mode, hybrid: bool, max_length: usize) -> BuildOptions {
    BuildOptions {
        mode,
        hybrid,
        max_length,
        train_on_input: false,
        flags: MaskFlags::default(),
        output_compress_instruction: String::new(),
        bos_token: "<|bos|>".into(),
        eos_token: "<|eos|>".into(),
    }
}

/// The task's `train.jsonl` built with `opts(mode, hybrid, max_length)`.
pub fn data_with(mode: Mode, hybrid: bool, max_length: usize) -> PreparedData {
    prepare_data(
        &task().join("train.jsonl"),
        &task().join("tokenizer.json"),
        &task().join("compress.json"),
        opts(mode, hybrid, max_length),
    )
    .unwrap()
}

/// [`data_with`] at `max_length` 128.
pub fn data(mode: Mode, hybrid: bool) -> PreparedData {
    data_with(mode, hybrid, 128)
}

pub fn model(vocab: usize, seed: i64) -> Model {
    let cfg = ModelConfig::tiny_llama(vocab, 32, 2, 4, 2, 64);
    Model::random(&cfg, Device::Cpu, Kind::Float, seed).unwrap()
}

pub fn source(d: &PreparedData, mbs: usize, shuffle: bool) -> RowsSource {
    RowsSource::new(
        d.samples.clone(),
        mbs,
        MaskFlags::default(),
        PadTo::Longest,
        d.pad_id,
        7,
        shuffle,
    )
    .unwrap()
}

pub fn cfg() -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        scheduler: SchedulerKind::Cosine,
        warmup_steps: 2,
        gradient_accumulation_steps: 1,
        epochs: 1,
        ..Default::default()
    }
}
