//! Logits parity with HF transformers 4.46.3 (eager, f32): the shared goldens (`qwen2_lt`) and
//! this crate's own fixtures (`scripts/lt_model_make_fixtures.py`: llama3 RoPE scaling, tied
//! embeddings, 1-layer Qwen2, explicit head_dim + biases).
mod common;

use std::io::BufRead;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model};
use serde::Deserialize;
use tch::Tensor;

#[derive(Deserialize)]
struct Request {
    name: String,
    input_ids: Vec<i64>,
    position_ids: Option<Vec<i64>>,
    mask: Option<Vec<Vec<(u32, u32)>>>,
}

#[derive(Deserialize)]
struct Expected {
    name: String,
    max_abs_logit: f64,
    logits: Vec<Vec<f64>>,
}

fn read_jsonl<T: for<'a> Deserialize<'a>>(p: &std::path::Path) -> Vec<T> {
    let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::io::BufReader::new(f)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Check every request of a fixture folder; returns the number of requests checked.
/// Both the plain model and the inference-prepacked one ([`Model::load_for_inference`]: fused
/// q|k|v and gate|up, fused RMSNorm, host RoPE) must match.
fn check_fixture(name: &str) -> usize {
    let dir = fixtures().join(name);
    let plain = Model::load(dir.join("model"), Device::Cpu, Kind::Float).unwrap();
    let packed = Model::load_for_inference(dir.join("model"), Device::Cpu, Kind::Float).unwrap();
    assert!(packed.is_prepacked() && !plain.is_prepacked());
    let n = check_model(name, &plain);
    assert_eq!(check_model(name, &packed), n);
    n
}

fn check_model(name: &str, model: &Model) -> usize {
    let dir = fixtures().join(name);
    let reqs: Vec<Request> = read_jsonl(&dir.join("requests.jsonl"));
    let exps: Vec<Expected> = read_jsonl(&dir.join("expected.jsonl"));
    assert_eq!(reqs.len(), exps.len());
    let _g = tch::no_grad_guard();
    for (req, exp) in reqs.iter().zip(&exps) {
        assert_eq!(req.name, exp.name);
        let t = req.input_ids.len();
        let ids = row(&req.input_ids);
        let pos = match &req.position_ids {
            Some(p) => row(p),
            None => arange_row(0, t as i64),
        };
        let expected = Tensor::from_slice2(&exp.logits).to_kind(Kind::Float);
        let tol = 5e-5 * exp.max_abs_logit;
        let mask_t = req.mask.as_ref().map(|m| bool_mask(t, m));
        let add_t = mask_t.as_ref().map(|m| {
            Tensor::zeros(m.size(), (Kind::Float, Device::Cpu))
                .masked_fill(&m.logical_not(), f32::MIN as f64)
        });
        let masks: Vec<AttnMask> = match (&mask_t, &add_t) {
            (Some(b), Some(a)) => vec![AttnMask::Bool(b), AttnMask::Additive(a)],
            _ => vec![AttnMask::Causal],
        };
        for mask in masks {
            // no cache
            let got = model
                .forward(&ids, &pos, mask, None, Logits::All)
                .unwrap()
                .squeeze_dim(0);
            assert_eq!(got.size(), expected.size(), "{name}/{}", req.name);
            let d = max_diff(&got, &expected);
            assert!(
                d <= tol,
                "{name}/{}: max diff {d} > tol {tol} ({mask:?})",
                req.name
            );
            // through an empty cache (the mask's columns = keys after the append = T)
            let mut cache = model.new_cache(1, 4);
            let got = model
                .forward(&ids, &pos, mask, Some(&mut cache), Logits::All)
                .unwrap()
                .squeeze_dim(0);
            let d = max_diff(&got, &expected);
            assert!(
                d <= tol,
                "{name}/{} (cache): max diff {d} > tol {tol}",
                req.name
            );
            assert_eq!(cache.len(), t);
        }
        // Logits::Last is the last row
        let mask = match &mask_t {
            Some(b) => AttnMask::Bool(b),
            None => AttnMask::Causal,
        };
        let last = model.forward(&ids, &pos, mask, None, Logits::Last).unwrap();
        assert_eq!(last.size(), vec![1, model.config().vocab_size as i64]);
        assert!(max_diff(&last.squeeze_dim(0), &expected.get(t as i64 - 1)) <= tol);
    }
    reqs.len()
}

#[test]
fn golden_qwen2_lt_shared() {
    assert_eq!(check_fixture("qwen2_lt"), 2);
}

#[test]
fn golden_llama3_scaling_tied() {
    assert_eq!(check_fixture("llama3_tied"), 4);
}

#[test]
fn golden_qwen2_one_layer_tied() {
    assert_eq!(check_fixture("qwen2_1layer_tied"), 4);
}

#[test]
fn golden_llama_head_dim_biases_linear_rope() {
    assert_eq!(check_fixture("llama_headdim_bias"), 4);
}

/// The tolerance is tight enough to tell mask variants apart: a causal forward of the aug request
/// must NOT match its LightThinker-mask logits.
#[test]
fn golden_tolerance_discriminates_masks() {
    let dir = fixtures().join("qwen2_lt");
    let model = Model::load(dir.join("model"), Device::Cpu, Kind::Float).unwrap();
    let reqs: Vec<Request> = read_jsonl(&dir.join("requests.jsonl"));
    let exps: Vec<Expected> = read_jsonl(&dir.join("expected.jsonl"));
    let (req, exp) = reqs
        .iter()
        .zip(&exps)
        .find(|(r, _)| r.mask.is_some())
        .unwrap();
    let t = req.input_ids.len() as i64;
    let _g = tch::no_grad_guard();
    let got = model
        .forward(
            &row(&req.input_ids),
            &arange_row(0, t),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap()
        .squeeze_dim(0);
    let d = max_diff(&got, &Tensor::from_slice2(&exp.logits).to_kind(Kind::Float));
    assert!(
        d > 5e-5 * exp.max_abs_logit * 10.0,
        "causal unexpectedly matches the masked golden (diff {d})"
    );
}

/// bf16 stays close to the f32 golden (loose check: bf16 has ~3 significant digits).
#[test]
fn golden_bf16_close() {
    let dir = fixtures().join("qwen2_lt");
    // plain and prepacked (bf16 packs every matrix for oneDNN)
    for model in [
        Model::load(dir.join("model"), Device::Cpu, Kind::BFloat16).unwrap(),
        Model::load_for_inference(dir.join("model"), Device::Cpu, Kind::BFloat16).unwrap(),
    ] {
        check_bf16(&dir, &model);
    }
}

fn check_bf16(dir: &std::path::Path, model: &Model) {
    let reqs: Vec<Request> = read_jsonl(&dir.join("requests.jsonl"));
    let exps: Vec<Expected> = read_jsonl(&dir.join("expected.jsonl"));
    let _g = tch::no_grad_guard();
    let req = &reqs[0];
    let t = req.input_ids.len() as i64;
    let got = model
        .forward(
            &row(&req.input_ids),
            &arange_row(0, t),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap();
    assert_eq!(got.kind(), Kind::BFloat16);
    let d = max_diff(&got.squeeze_dim(0), &Tensor::from_slice2(&exps[0].logits));
    assert!(d < 0.05 * exps[0].max_abs_logit, "bf16 diff {d}");
}
