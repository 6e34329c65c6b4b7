//! Vocabulary resize, HF save → reload (here and in transformers), load errors.
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig, ModelError};
use tch::Tensor;

fn logits(m: &Model, toks: &[i64]) -> Tensor {
    let _g = tch::no_grad_guard();
    m.forward(
        &row(toks),
        &arange_row(0, toks.len() as i64),
        AttnMask::Causal,
        None,
        Logits::All,
    )
    .unwrap()
}

#[test]
fn save_reload_identical_single_and_sharded() {
    let dir = tempfile::tempdir().unwrap();
    for (i, tied) in [false, true].into_iter().enumerate() {
        let mut cfg = ModelConfig::tiny_qwen2(50, 16, 2, 2, 1, 24);
        cfg.tie_word_embeddings = tied;
        let m = Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap();
        let toks = ids(7, 0, 50, 9);
        let want = logits(&m, &toks);
        let single = dir.path().join(format!("single{i}"));
        m.save_hf(&single, Kind::Float).unwrap();
        assert!(single.join("model.safetensors").is_file());
        let r = Model::load(&single, Device::Cpu, Kind::Float).unwrap();
        assert!(logits(&r, &toks).equal(&want), "single-file reload differs");
        assert_eq!(r.config().tie_word_embeddings, tied);
        assert_eq!(r.named_parameters().len(), m.named_parameters().len());

        let sharded = dir.path().join(format!("sharded{i}"));
        m.save_hf_sharded(&sharded, Kind::Float, 4096).unwrap();
        assert!(sharded.join("model.safetensors.index.json").is_file());
        assert!(!sharded.join("model.safetensors").exists());
        let r = Model::load(&sharded, Device::Cpu, Kind::Float).unwrap();
        assert!(logits(&r, &toks).equal(&want), "sharded reload differs");
    }
}

#[test]
fn bf16_save_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::random(
        &ModelConfig::tiny_llama(40, 16, 1, 2, 2, 24),
        Device::Cpu,
        Kind::BFloat16,
        1,
    )
    .unwrap();
    m.save_hf(dir.path(), Kind::BFloat16).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let r = Model::load(dir.path(), Device::Cpu, Kind::BFloat16).unwrap();
    for ((n1, a), (n2, b)) in m.named_parameters().iter().zip(r.named_parameters().iter()) {
        assert_eq!(n1, n2);
        assert!(a.equal(b), "{n1}");
    }
}

#[test]
fn resize_vocab_grow_with_description_mean_and_shrink() {
    let cfg = ModelConfig::tiny_llama(20, 8, 1, 2, 1, 16);
    let mut m = Model::random(&cfg, Device::Cpu, Kind::Float, 5).unwrap();
    let e0 = m.embed_tokens().copy();
    let l0 = m.lm_head().copy();
    // reference order: later tokens first; token 23 copies row 22 *after* 22 was set
    let init = vec![(22usize, vec![1i64, 2, 3]), (23, vec![22]), (21, vec![])];
    m.resize_vocab(24, &init).unwrap();
    assert_eq!(m.config().vocab_size, 24);
    let e = m.embed_tokens();
    assert_eq!(e.size(), vec![24, 8]);
    assert!(e.narrow(0, 0, 20).equal(&e0));
    let mean = e0.narrow(0, 1, 3).mean_dim(0, false, Kind::Float);
    assert!(max_diff(&e.get(22), &mean) < 1e-7);
    assert!(e.get(23).equal(&e.get(22)));
    let lm = m.lm_head();
    assert!(
        max_diff(
            &lm.get(22),
            &l0.narrow(0, 1, 3).mean_dim(0, false, Kind::Float)
        ) < 1e-7
    );
    // grown rows without description are random N(0, 0.02), not zeros
    assert!(e.get(21).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // still runs, and named_parameters see the new shapes
    let out = logits(&m, &[23, 22, 1]);
    assert_eq!(out.size(), vec![1, 3, 24]);
    assert_eq!(m.named_parameters()[0].1.size(), vec![24, 8]);
    // shrink
    m.resize_vocab(10, &[]).unwrap();
    assert!(m.embed_tokens().equal(&e0.narrow(0, 0, 10)));
    assert_eq!(logits(&m, &[1, 2]).size(), vec![1, 2, 10]);
    assert!(m.resize_vocab(10, &[(12, vec![1])]).is_err());
}

#[test]
fn load_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // missing config
    assert!(matches!(
        Model::load(p, Device::Cpu, Kind::Float),
        Err(ModelError::MissingFile(_))
    ));
    let m = Model::random(
        &ModelConfig::tiny_llama(30, 16, 1, 2, 1, 24),
        Device::Cpu,
        Kind::Float,
        0,
    )
    .unwrap();
    m.save_hf(p, Kind::Float).unwrap();
    // unsupported architecture
    let cfg_path = p.join("config.json");
    let orig = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        orig.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let e = Model::load(p, Device::Cpu, Kind::Float).unwrap_err();
    assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
    // mis-shaped tensor: config says a larger hidden size
    std::fs::write(
        &cfg_path,
        orig.replace("\"intermediate_size\": 24", "\"intermediate_size\": 32"),
    )
    .unwrap();
    let e = Model::load(p, Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        matches!(&e, ModelError::TensorShape { name, .. } if name.contains("mlp")),
        "{e}"
    );
    // missing tensor: untied config over a checkpoint without lm_head
    let tied = Model::random(
        &ModelConfig {
            tie_word_embeddings: true,
            ..ModelConfig::tiny_llama(30, 16, 1, 2, 1, 24)
        },
        Device::Cpu,
        Kind::Float,
        0,
    )
    .unwrap();
    tied.save_hf(p, Kind::Float).unwrap();
    let txt = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        txt.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let e = Model::load(p, Device::Cpu, Kind::Float).unwrap_err();
    assert!(e.to_string().contains("lm_head.weight"), "{e}");
    // missing weights file
    std::fs::remove_file(p.join("model.safetensors")).unwrap();
    assert!(matches!(
        Model::load(p, Device::Cpu, Kind::Float),
        Err(ModelError::MissingFile(_))
    ));
    // invalid JSON names the file
    std::fs::write(&cfg_path, "{ \"hidden_size\": }").unwrap();
    let e = Model::load(p, Device::Cpu, Kind::Float).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
}

/// transformers loads what we save and computes the same logits (grown vocab, sharded, tied and
/// untied, Qwen2 biases). Skips with a notice when `.venv/bin/python` is absent.
#[test]
fn saved_checkpoint_loads_in_transformers() {
    let Some(py) = python() else {
        eprintln!("NOTICE: .venv/bin/python not found; skipping the transformers reload check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for (i, (tied, qwen)) in [(false, true), (true, false)].into_iter().enumerate() {
        let mut cfg = if qwen {
            ModelConfig::tiny_qwen2(40, 16, 2, 4, 2, 24)
        } else {
            ModelConfig::tiny_llama(40, 16, 2, 4, 2, 24)
        };
        cfg.tie_word_embeddings = tied;
        cfg.initializer_range = 0.3;
        let mut m = Model::random(&cfg, Device::Cpu, Kind::Float, 7 + i as i64).unwrap();
        m.resize_vocab(45, &[(44, vec![1, 2]), (43, vec![44])])
            .unwrap();
        let toks = vec![44i64, 3, 43, 7, 1, 2];
        let want = logits(&m, &toks);
        let d = dir.path().join(format!("m{i}"));
        m.save_hf_sharded(&d, Kind::Float, if i == 0 { 8192 } else { 1 << 30 })
            .unwrap();
        let flat = Vec::<f32>::try_from(want.reshape([-1])).unwrap();
        cases.push(serde_json::json!({"dir": d, "ids": toks, "logits": flat}));
    }
    let spec = dir.path().join("cases.json");
    std::fs::write(&spec, serde_json::to_string(&cases).unwrap()).unwrap();
    let script = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
cases = json.load(open(sys.argv[1]))
for c in cases:
    m = AutoModelForCausalLM.from_pretrained(c["dir"], attn_implementation="eager", torch_dtype=torch.float32)
    with torch.no_grad():
        out = m(input_ids=torch.tensor([c["ids"]])).logits.reshape(-1)
    want = torch.tensor(c["logits"])
    d = (out - want).abs().max().item()
    tol = 1e-5 * max(1.0, want.abs().max().item())
    print(c["dir"], "vocab", m.config.vocab_size, "max diff", d)
    assert m.config.vocab_size == 45, m.config.vocab_size
    assert d <= tol, (d, tol)
"#;
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(&spec)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "transformers check failed:\n{log}");
    assert_eq!(log.matches("max diff").count(), 2, "{log}");
}
