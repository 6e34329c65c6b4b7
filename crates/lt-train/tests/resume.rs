//! Kill + resume equals the uninterrupted run, bit for bit. In its own test binary: the
//! comparison is bitwise, and libtorch/MKL reductions must not share the process with other
//! tests running concurrently (their thread settings are process-global).
mod common;

use common::*;
use lt_data::Mode;
use lt_model::{Device, Kind, Model};
use lt_train::{read_metrics, train, TrainConfig, TrainError};
use std::path::Path;
use tch::Tensor;

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn kill_and_resume_equals_uninterrupted() {
    tch::set_num_threads(1);
    let d = data(Mode::AugWoPc, false);
    // 24 samples / micro-batch 4 = 6 micro-batches, GAS 2 -> 3 steps per epoch, 3 epochs = 9 steps.
    let base = TrainConfig {
        gradient_accumulation_steps: 2,
        epochs: 3,
        warmup_ratio: 0.1,
        warmup_steps: 0,
        ..cfg()
    };
    let full_dir = tempfile::tempdir().unwrap();
    let mut m = model(d.tokenizer.len(), 0);
    let full = train(
        &TrainConfig {
            output_dir: Some(full_dir.path().into()),
            ..base.clone()
        },
        &mut m,
        &mut source(&d, 4, true),
    )
    .unwrap();
    assert_eq!(full.steps, 9);
    let names: Vec<String> = full
        .checkpoints
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["checkpoint-3", "checkpoint-6", "checkpoint-9"]);

    let dir = tempfile::tempdir().unwrap();
    let run = TrainConfig {
        output_dir: Some(dir.path().into()),
        ..base.clone()
    };
    let mut m1 = model(d.tokenizer.len(), 0);
    // "killed" after step 5: checkpoint-3 exists, metrics has 5 lines
    let part = train(
        &TrainConfig {
            halt_after: Some(5),
            ..run.clone()
        },
        &mut m1,
        &mut source(&d, 4, true),
    )
    .unwrap();
    assert_eq!(part.steps, 5);
    assert_eq!(
        read_metrics(&dir.path().join("metrics.jsonl"))
            .unwrap()
            .len(),
        5
    );
    // a plain re-run refuses to clobber it
    let mut m2 = model(d.tokenizer.len(), 99);
    match train(&run, &mut m2, &mut source(&d, 4, true)) {
        Err(TrainError::OutputExists(_)) => {}
        other => panic!("expected OutputExists, got {other:?}"),
    }
    // resume into a model with different random weights: everything comes from checkpoint-3
    let resumed = train(
        &TrainConfig {
            resume: true,
            ..run.clone()
        },
        &mut m2,
        &mut source(&d, 4, true),
    )
    .unwrap();
    assert_eq!(resumed.resumed_from, Some(3));
    assert_eq!(resumed.steps, 9);

    let a = read_metrics(&full_dir.path().join("metrics.jsonl")).unwrap();
    let b = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 9);
    assert_eq!(b.len(), 9);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (
                x.step,
                x.loss.to_bits(),
                x.lr.to_bits(),
                x.grad_norm.to_bits()
            ),
            (
                y.step,
                y.loss.to_bits(),
                y.lr.to_bits(),
                y.grad_norm.to_bits()
            )
        );
    }
    let (wa, wb) = (
        weights(&full_dir.path().join("checkpoint-9")),
        weights(&dir.path().join("checkpoint-9")),
    );
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (_, y)) in wa.iter().zip(&wb) {
        assert!(x.equal(y), "weight {n} differs after resume");
    }
    let oa = Tensor::read_safetensors(full_dir.path().join("checkpoint-9/optimizer.safetensors"))
        .unwrap();
    let ob: std::collections::HashMap<_, _> =
        Tensor::read_safetensors(dir.path().join("checkpoint-9/optimizer.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    for (n, x) in &oa {
        assert!(x.equal(&ob[n]), "optimizer state {n} differs after resume");
    }
    // The lines themselves (step, epoch, loss, lr, grad_norm come first) are identical text.
    let raw = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| l.split(",\"tokens_per_s\"").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(raw(full_dir.path()), raw(dir.path()));
    assert!(dir.path().join("loss.svg").is_file());

    // The checkpoint is an HF directory lt-model loads, with the in-memory model's logits.
    let loaded = Model::load(dir.path().join("checkpoint-9"), Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::from_slice(&[1i64, 20, 3, 21]).view([1, 4]);
    let pos = Tensor::from_slice(&[0i64, 1, 2, 3]).view([1, 4]);
    let _g = tch::no_grad_guard();
    let la = loaded
        .forward(
            &ids,
            &pos,
            lt_model::AttnMask::Causal,
            None,
            lt_model::Logits::All,
        )
        .unwrap();
    let lb = m2
        .forward(
            &ids,
            &pos,
            lt_model::AttnMask::Causal,
            None,
            lt_model::Logits::All,
        )
        .unwrap();
    assert!(la.equal(&lb));
}
