//! Inference prepacking ([`Model::prepack`]): fused q|k|v and gate|up projections, oneDNN-packed
//! weights (large enough matrices), fused RMSNorm, host RoPE and the eager one-query attention
//! must give the plain model's logits; autograd never sees the packed copies.
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig};

/// Weights at or above the oneDNN packing threshold (262,144 elements): q|k|v 768×512, gate|up
/// 2048×512, o 512×512, down 512×1024, lm_head 600×512. head_dim 128, 4 heads: the bf16 eager
/// attention kicks in from 256 cached keys.
fn cfg(qwen: bool) -> ModelConfig {
    let mut c = if qwen {
        ModelConfig::tiny_qwen2(600, 512, 2, 4, 2, 1024)
    } else {
        ModelConfig::tiny_llama(600, 512, 2, 4, 2, 1024)
    };
    c.initializer_range = 0.05;
    c
}

/// Logits of: a prefill with a LightThinker-style bool mask and holes in the positions, an
/// eviction, then single-token decode steps (Logits::All for the prefill, Last for the steps).
fn run(m: &Model, prompt: usize, steps: usize) -> Vec<tch::Tensor> {
    let toks = ids(prompt + steps, 0, 600, 5);
    let pos: Vec<i64> = (0..prompt as i64)
        .map(|p| if p < 4 { p } else { p + 3 })
        .collect();
    let rows: Vec<Vec<(u32, u32)>> = (0..prompt)
        .map(|r| {
            if r >= 6 {
                vec![(0, 2), (4, r as u32 + 1)]
            } else {
                vec![(0, r as u32 + 1)]
            }
        })
        .collect();
    let mask = bool_mask(prompt, &rows);
    let mut cache = m.new_cache(1, 8);
    let mut out = vec![m
        .forward(
            &row(&toks[..prompt]),
            &row(&pos),
            AttnMask::Bool(&mask),
            Some(&mut cache),
            Logits::All,
        )
        .unwrap()];
    cache.evict(2..4);
    let first = *pos.last().unwrap() + 1;
    for i in 0..steps {
        let next = first + i as i64;
        out.push(
            m.forward(
                &row(&toks[prompt + i..prompt + i + 1]),
                &row(&[next]),
                AttnMask::Causal,
                Some(&mut cache),
                Logits::Last,
            )
            .unwrap(),
        );
    }
    out
}

/// Multiply one named weight in place by `f` (no autograd).
fn scale_param(m: &Model, name: &str, f: f64) {
    let _g = tch::no_grad_guard();
    let (_, mut w) = m
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap();
    let _ = w.g_mul_scalar_(f);
}

fn worst(a: &[tch::Tensor], b: &[tch::Tensor]) -> (f64, f64) {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| max_diff(x, y))
        .fold(0.0, f64::max);
    let s = a.iter().map(max_abs).fold(0.0, f64::max);
    (d, s)
}

#[test]
fn prepacked_f32_equals_plain() {
    let _g = tch::no_grad_guard();
    for qwen in [true, false] {
        // one seed, one model (Model::random draws under a lock, also across test threads)
        let plain = Model::random(&cfg(qwen), Device::Cpu, Kind::Float, 7).unwrap();
        let mut packed = Model::random(&cfg(qwen), Device::Cpu, Kind::Float, 7).unwrap();
        let stats = packed.prepack().unwrap();
        let extra = stats.bytes;
        assert!(packed.is_prepacked());
        // every matrix is above the threshold: 2 fused + o + down per layer, and the head
        assert_eq!((stats.fused, stats.onednn), (4, 9));
        // fused copies of every projection + the head (dense or packed): at least the weights
        let linear: usize = 2 * (768 * 512 + 2048 * 512 + 512 * 512 + 512 * 1024) + 600 * 512;
        assert!(extra >= linear * 4, "{extra} < {}", linear * 4);
        let (d, s) = worst(&run(&plain, 24, 6), &run(&packed, 24, 6));
        assert!(d <= 2e-5 * s, "qwen={qwen}: max diff {d} (scale {s})");
        // unpack restores the plain path exactly
        packed.unpack();
        let (d, _) = worst(&run(&plain, 24, 6), &run(&packed, 24, 6));
        assert_eq!(d, 0.0);
    }
}

#[test]
fn prepacked_bf16_with_eager_attention_stays_close() {
    let _g = tch::no_grad_guard();
    let reference = Model::random(&cfg(true), Device::Cpu, Kind::Float, 9).unwrap();
    let mut packed = Model::random(&cfg(true), Device::Cpu, Kind::BFloat16, 9).unwrap();
    packed.prepack().unwrap();
    // 600-token prompt: the decode steps attend to > 512 keys (eager path in bf16)
    let want = run(&reference, 600, 4);
    let got = run(&packed, 600, 4);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (d, s) = (max_diff(g, w), max_abs(w));
        assert!(d <= 0.05 * s, "forward {i}: bf16 diff {d} vs scale {s}");
    }
    // and a wrong context is detectably different at that tolerance: drop the eviction
    let other = {
        let toks = ids(604, 0, 600, 5);
        let mut cache = packed.new_cache(1, 8);
        let pos: Vec<i64> = (0..600).collect();
        packed
            .forward(
                &row(&toks[..600]),
                &row(&pos),
                AttnMask::Causal,
                Some(&mut cache),
                Logits::All,
            )
            .unwrap()
    };
    assert!(
        max_diff(&other.narrow(1, 10, 100), &want[0].narrow(1, 10, 100)) > 0.05 * max_abs(&want[0])
    );
}

#[test]
fn autograd_ignores_the_packed_copies() {
    let cfg = cfg(false);
    let mut m = Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap();
    let fresh = Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap();
    m.prepack().unwrap();
    // change a weight after packing: the packed copy is now stale
    let up = "model.layers.0.mlp.up_proj.weight";
    scale_param(&m, up, 2.0);
    scale_param(&fresh, up, 2.0);
    let toks = ids(10, 0, 600, 1);
    let x = |m: &Model| {
        m.forward(
            &row(&toks),
            &arange_row(0, 10),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap()
    };
    // with autograd on, training sees the current weights (bit-identical to an unpacked model)
    let train = x(&m);
    assert!(train.requires_grad());
    assert_eq!(max_diff(&train, &x(&fresh)), 0.0);
    // without autograd the (stale) snapshot is used: documented, and detectable
    let _g = tch::no_grad_guard();
    assert!(max_diff(&x(&m), &x(&fresh)) > 1e-3);
    m.prepack().unwrap();
    assert!(max_diff(&x(&m), &x(&fresh)) <= 2e-5 * max_abs(&x(&fresh)));
}

#[test]
fn resize_vocab_drops_the_packs() {
    let mut m = Model::random(&cfg(true), Device::Cpu, Kind::Float, 1).unwrap();
    m.prepack().unwrap();
    m.resize_vocab(610, &[]).unwrap();
    assert!(!m.is_prepacked());
    let _g = tch::no_grad_guard();
    let l = m
        .forward(
            &row(&[1, 2, 609]),
            &arange_row(0, 3),
            AttnMask::Causal,
            None,
            Logits::Last,
        )
        .unwrap();
    assert_eq!(l.size(), vec![1, 610]);
}

/// InferenceMode gives the no_grad logits; a cache grown inside the mode can still be evicted
/// (updated in place) outside it.
#[test]
fn inference_mode_matches_no_grad_and_cache_survives_it() {
    let cfg = ModelConfig::tiny_llama(61, 32, 2, 4, 2, 48);
    let m = Model::random(&cfg, Device::Cpu, Kind::Float, 4).unwrap();
    let toks = ids(20, 0, 61, 2);
    let want = {
        let _g = tch::no_grad_guard();
        m.forward(
            &row(&toks),
            &arange_row(0, 20),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap()
    };
    let mut cache = m.new_cache(1, 2); // grows inside the mode
    let got = {
        let _mode = lt_model::InferenceMode::new();
        m.forward(
            &row(&toks[..12]),
            &arange_row(0, 12),
            AttnMask::Causal,
            Some(&mut cache),
            Logits::All,
        )
        .unwrap()
    };
    assert!(max_diff(&got, &want.narrow(1, 0, 12)) <= 1e-6 * max_abs(&want));
    // outside the mode: evict (in-place compaction), then decode under plain no_grad
    cache.evict(3..5);
    let _g = tch::no_grad_guard();
    let next = m
        .forward(
            &row(&toks[12..13]),
            &arange_row(12, 13),
            AttnMask::Causal,
            Some(&mut cache),
            Logits::Last,
        )
        .unwrap();
    assert_eq!(next.size(), vec![1, 61]);
    assert_eq!(cache.len(), 11);
}
