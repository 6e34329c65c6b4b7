//! Parity with PyTorch / transformers, against fixtures made by
//! `scripts/lt_train_make_fixtures.py` (torch 2.13, transformers 4.46.3).
use lt_data::{BuiltRow, PadTo, SourceVariant};
use lt_mask::{BlockKind, Layout, MaskFlags, ThoughtBlock};
use lt_model::{Device, Kind, Model};
use lt_train::{AdamW, AdamWConfig, Schedule, SchedulerKind, TrainBatch};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(name))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn schedules_equal_hf_at_every_step() {
    let cases = json("schedules.json");
    let mut n = 0;
    for c in cases.as_array().unwrap() {
        let kind: SchedulerKind = c["kind"].as_str().unwrap().parse().unwrap();
        let total = c["total"].as_u64().unwrap() as usize;
        let warm = lt_train::warmup_steps(
            total,
            c["warmup_ratio"].as_f64().unwrap(),
            c["warmup_steps"].as_u64().unwrap() as usize,
        );
        assert_eq!(warm, c["num_warmup"].as_u64().unwrap() as usize);
        let s = Schedule::new(kind, c["lr"].as_f64().unwrap(), warm, total);
        for (step, want) in c["lrs"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = s.lr_at(step);
            assert!(
                got == want || (got - want).abs() <= 1e-15 * want.abs(),
                "{kind} total {total} warmup {warm} step {step}: {got} != {want}"
            );
            n += 1;
        }
    }
    assert!(n > 2000);
}

#[test]
fn adamw_and_clipping_match_torch_bit_for_bit() {
    let meta = json("adamw.json");
    let t = tensors("adamw.safetensors");
    let names: Vec<String> = meta["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let params: Vec<(String, Tensor)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                t[&format!("init.{n}")].copy().set_requires_grad(true),
            )
        })
        .collect();
    let mut opt = AdamW::new(
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.shallow_clone()))
            .collect(),
        AdamWConfig::default(),
    );
    for (step, lr) in meta["lrs"].as_array().unwrap().iter().enumerate() {
        for (n, p) in &params {
            let mut g = p.grad();
            let src = &t[&format!("grad{step}.{n}")];
            if g.defined() {
                g.copy_(src);
            } else {
                // first step: create the grad buffer through autograd
                (p * src).sum(Kind::Float).backward();
            }
        }
        if step == 0 {
            let norm = opt.clip_grad_norm(1.0).unwrap();
            assert_eq!(
                norm as f32,
                meta["clip_total_norm0"].as_f64().unwrap() as f32
            );
            for (n, p) in &params {
                assert!(
                    p.grad().equal(&t[&format!("clipped0.{n}")]),
                    "clipped grad {n} differs"
                );
            }
        }
        opt.step(lr.as_f64().unwrap()).unwrap();
    }
    let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    for (n, p) in &params {
        assert!(
            p.detach().equal(&t[&format!("final.{n}")]),
            "param {n}: diff {}",
            max_abs_diff(p, &t[&format!("final.{n}")])
        );
        assert!(
            state[&format!("exp_avg.{n}")].equal(&t[&format!("exp_avg.{n}")]),
            "exp_avg {n}"
        );
        assert!(
            state[&format!("exp_avg_sq.{n}")].equal(&t[&format!("exp_avg_sq.{n}")]),
            "exp_avg_sq {n}"
        );
    }
}

fn fixture_rows(meta: &Value) -> Vec<BuiltRow> {
    meta["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v = |k: &str| -> Vec<i64> {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            };
            let ids = v("input_ids");
            let blocks = r["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let b: Vec<usize> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as usize)
                        .collect();
                    ThoughtBlock {
                        start: b[0],
                        end: b[1],
                        l_inst: b[2],
                        n_comp: b[3],
                        n_continue: b[4],
                        kind: BlockKind::Output,
                    }
                })
                .collect();
            BuiltRow {
                layout: Some(Layout {
                    len: ids.len(),
                    blocks,
                }),
                input_ids: ids,
                labels: v("labels"),
                position_ids: Some(v("position_ids")),
                recover: None,
                truncated: false,
                hybrid_row: None,
                source: SourceVariant::AugWoPc,
            }
        })
        .collect()
}

fn want_loss_early(meta: &Value) -> f64 {
    meta["loss"].as_f64().unwrap()
}

fn hf_step_parity(family: &str) {
    let meta = json(&format!("step_{family}.json"));
    let want = tensors(&format!("step_{family}.safetensors"));
    let model = Model::load(
        fixtures().join(format!("tiny_{family}")),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let rows = fixture_rows(&meta);
    let batch = TrainBatch::from_rows(
        &rows,
        &MaskFlags::default(),
        PadTo::Longest,
        meta["pad_id"].as_i64().unwrap(),
    )
    .unwrap();

    // The lt-data collated batch equals the reference's (ids, labels, positions, 4-D mask).
    let flat = |k: &str| -> Vec<i64> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
            .collect()
    };
    assert_eq!(
        batch.batch.seq_len,
        meta["pad_to"].as_u64().unwrap() as usize
    );
    assert_eq!(batch.batch.input_ids, flat("input_ids"));
    assert_eq!(batch.batch.labels, flat("labels"));
    assert_eq!(batch.batch.position_ids, flat("position_ids"));
    let dense: Vec<i64> = batch
        .batch
        .masks
        .as_ref()
        .unwrap()
        .iter()
        .flat_map(|m| m.to_dense())
        .map(i64::from)
        .collect();
    let want_mask: Vec<i64> = meta["mask"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
        })
        .collect();
    assert_eq!(dense, want_mask, "mask differs from the reference's");

    let n_items = batch.n_labelled();
    assert_eq!(n_items, meta["num_items"].as_u64().unwrap() as usize);
    let (ce, _, value) = lt_train::micro_batch_ce_sum(&model, &batch).unwrap();
    assert!((value / n_items as f64 - want_loss_early(&meta)).abs() < 1e-4);
    let loss = lt_train::window_loss(&ce, n_items, 1.0).unwrap();
    let want_loss = meta["loss"].as_f64().unwrap();
    assert!(
        (loss.double_value(&[]) - want_loss).abs() < 1e-4,
        "loss {} vs HF {want_loss}",
        loss.double_value(&[])
    );
    loss.backward();
    let params = model.named_parameters();
    assert_eq!(
        params.len(),
        want.keys().filter(|k| k.starts_with("grad.")).count()
    );
    for (n, p) in &params {
        let d = max_abs_diff(&p.grad(), &want[&format!("grad.{n}")]);
        assert!(d < 1e-4, "{family} grad {n}: max abs diff {d}");
    }
    let mut opt = AdamW::new(
        params
            .iter()
            .map(|(n, p)| (n.clone(), p.shallow_clone()))
            .collect(),
        AdamWConfig::default(),
    );
    let norm = opt.clip_grad_norm(1.0).unwrap();
    let want_norm = meta["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - want_norm).abs() < 1e-4 * want_norm.max(1.0),
        "grad norm {norm} vs {want_norm}"
    );
    opt.step(meta["lr"].as_f64().unwrap()).unwrap();
    for (n, p) in &params {
        let d = max_abs_diff(p, &want[&format!("after.{n}")]);
        assert!(d < 1e-4, "{family} param after step {n}: max abs diff {d}");
    }
}

#[test]
fn one_step_equals_hf_llama() {
    hf_step_parity("llama");
}

#[test]
fn one_step_equals_hf_qwen2() {
    hf_step_parity("qwen2");
}
