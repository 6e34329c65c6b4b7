//! End-to-end training on a tiny random model and the tiny arithmetic task
//! (`tests/fixtures/tiny_task`, made by `scripts/lt_train_make_fixtures.py`).
mod common;

use common::*;
use lt_data::{BuiltRow, Mode, PadTo, SourceVariant};
use lt_mask::MaskFlags;
use lt_model::Model;
use lt_train::{prepare_data, read_metrics, train, Control, TrainBatch, TrainConfig, TrainError};
use tch::Tensor;

#[test]
fn loss_falls_in_every_mode() {
    for (mode, hybrid) in [
        (Mode::Normal, false),
        (Mode::Aug, false),
        (Mode::AugWoPc, false),
        (Mode::Recover, false),
        (Mode::Aug, true),
    ] {
        let d = data(mode, hybrid);
        if mode == Mode::Recover {
            assert!(
                d.samples.iter().any(|r| r[0].recover.is_some()),
                "recover rows expected"
            );
        }
        if hybrid {
            assert!(d.samples.iter().all(|r| r.len() == 2));
        }
        let mut m = model(d.tokenizer.len(), 0);
        let mut src = source(&d, 4, true);
        let tc = TrainConfig {
            max_steps: Some(40),
            lr: 1e-2,
            ..cfg()
        };
        let rep = train(&tc, &mut m, &mut src).unwrap();
        let l: Vec<f64> = rep.metrics.iter().map(|m| m.loss).collect();
        assert_eq!(l.len(), 40);
        eprintln!("{mode} hybrid={hybrid}: {:.3} -> {:.3}", l[0], l[39]);
        assert_eq!(rep.metrics[0].lr, 0.0, "first update uses lr 0");
        let first = l[..3].iter().sum::<f64>() / 3.0;
        let last = l[l.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            last < 0.5 * first,
            "{mode} hybrid={hybrid}: loss {first:.3} -> {last:.3}"
        );
    }
}

fn params(m: &Model) -> Vec<(String, Tensor)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

#[test]
fn accumulation_4x1_equals_1x4() {
    // One intra-op thread: reductions then do not depend on what other tests run concurrently.
    tch::set_num_threads(1);
    let d = data(Mode::AugWoPc, false);
    let tc = |gas| TrainConfig {
        max_steps: Some(3),
        gradient_accumulation_steps: gas,
        lr: 1e-3,
        ..cfg()
    };
    let mut a = model(d.tokenizer.len(), 3);
    let ra = train(&tc(4), &mut a, &mut source(&d, 1, false)).unwrap();
    let mut b = model(d.tokenizer.len(), 3);
    let rb = train(&tc(1), &mut b, &mut source(&d, 4, false)).unwrap();
    for (x, y) in ra.metrics.iter().zip(&rb.metrics) {
        assert_eq!(x.labelled_tokens, y.labelled_tokens);
        assert!(
            (x.loss - y.loss).abs() < 1e-5 * y.loss.abs().max(1.0),
            "loss {} vs {}",
            x.loss,
            y.loss
        );
        assert!(
            (x.grad_norm - y.grad_norm).abs() < 1e-4 * y.grad_norm.max(1.0),
            "norm {} vs {}",
            x.grad_norm,
            y.grad_norm
        );
    }
    for ((n, p), (_, q)) in params(&a).iter().zip(params(&b).iter()) {
        let diff = (p - q).abs().max().double_value(&[]);
        assert!(diff < 2e-5, "{n}: {diff}");
    }
    // and they really trained
    let fresh = model(d.tokenizer.len(), 3);
    let moved = (params(&a)[0].1.copy() - params(&fresh)[0].1.copy())
        .abs()
        .max()
        .double_value(&[]);
    assert!(moved > 1e-4);
}

#[test]
fn overwrite_replaces_a_run_and_callback_can_stop() {
    let d = data(Mode::Normal, false);
    let dir = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        output_dir: Some(dir.path().into()),
        max_steps: Some(4),
        ..cfg()
    };
    let mut m = model(d.tokenizer.len(), 0);
    let mut seen = 0;
    let r = lt_train::train_with(&tc, &mut m, &mut source(&d, 4, true), &mut |s| {
        seen = s.step;
        if s.step == 2 {
            Control::Stop
        } else {
            Control::Continue
        }
    })
    .unwrap();
    assert_eq!((r.steps, seen), (2, 2));
    assert!(dir.path().join("checkpoint-2/config.json").is_file());
    assert!(matches!(
        train(&tc, &mut m, &mut source(&d, 4, true)),
        Err(TrainError::OutputExists(_))
    ));
    let r = train(
        &TrainConfig {
            overwrite: true,
            ..tc.clone()
        },
        &mut m,
        &mut source(&d, 4, true),
    )
    .unwrap();
    assert_eq!(r.steps, 4);
    assert!(!dir.path().join("checkpoint-2").exists(), "old run removed");
    let lines = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.iter().map(|m| m.step).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    for l in &lines {
        assert!(l.tokens_per_s > 0.0 && l.grad_norm > 0.0 && l.loss > 0.0);
    }
}

#[test]
fn bad_train_line_is_named_before_training() {
    let e = prepare_data(
        &task().join("bad.jsonl"),
        &task().join("tokenizer.json"),
        &task().join("compress.json"),
        opts(Mode::AugWoPc, false, 128),
    )
    .unwrap_err();
    match &e {
        TrainError::DataLine { line, field, .. } => {
            assert_eq!((*line, field.as_str()), (3, "thoughts_list"), "{e}")
        }
        other => panic!("expected DataLine, got {other:?}"),
    }
    assert!(e.to_string().contains("bad.jsonl:3"), "{e}");
}

#[test]
fn window_without_labels_gives_zero_loss_not_nan() {
    let row = BuiltRow {
        input_ids: vec![1, 20, 21, 22],
        labels: vec![-100; 4],
        position_ids: None,
        layout: None,
        recover: None,
        truncated: false,
        hybrid_row: None,
        source: SourceVariant::Normal,
    };
    let mut m = model(40, 0);
    let mut src = lt_train::FnSource(|_, _| {
        TrainBatch::from_rows(
            std::slice::from_ref(&row),
            &MaskFlags::default(),
            PadTo::Longest,
            2,
        )
    });
    let r = train(
        &TrainConfig {
            max_steps: Some(2),
            ..cfg()
        },
        &mut m,
        &mut src,
    )
    .unwrap();
    for s in &r.metrics {
        assert_eq!((s.loss, s.grad_norm, s.labelled_tokens), (0.0, 0.0, 0));
    }
}
