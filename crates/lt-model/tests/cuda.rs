//! CUDA checks (run by `scripts/gpu-check.sh`: `cargo test -- --ignored cuda_`).
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model};

/// bf16 forward + cached greedy decode with an eviction on CUDA; compared with the f32 CPU model.
#[test]
#[ignore = "needs CUDA"]
fn cuda_bf16_forward_and_decode() {
    assert!(
        lt_model::device::cuda_available(),
        "CUDA not available (libtorch_cuda.so not loadable?)"
    );
    let dev = lt_model::device::cuda_if_available();
    assert!(matches!(dev, Device::Cuda(_)));
    let dir = fixtures().join("qwen2_lt").join("model");
    let gpu = Model::load(&dir, dev, Kind::BFloat16).unwrap();
    let cpu = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let _g = tch::no_grad_guard();
    let toks = ids(40, 0, 597, 3);
    let full_cpu = cpu
        .forward(
            &row(&toks),
            &arange_row(0, 40),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap();
    let full_gpu = gpu
        .forward(
            &row(&toks),
            &arange_row(0, 40),
            AttnMask::Causal,
            None,
            Logits::All,
        )
        .unwrap();
    assert_eq!(full_gpu.device(), dev);
    let scale = max_abs(&full_cpu);
    assert!(max_diff(&full_gpu.to_device(Device::Cpu), &full_cpu) < 0.05 * scale);
    // decode through the cache (prefill 30, 10 single steps) == full forward on the GPU (bf16 tolerance)
    let mut cache = gpu.new_cache(1, 8);
    decode_matches_full(&gpu, &mut cache, &toks, 30, &full_gpu, scale);
    let before = cache.keys(0).unwrap().narrow(2, 20, 20).copy();
    cache.evict(5..20);
    assert_eq!(cache.len(), 25);
    assert!(cache.keys(0).unwrap().narrow(2, 5, 20).equal(&before));
    assert_eq!(cache.bytes(), 25 * 2 * 2 * 2 * 16 * 2);
}

/// The inference entry points on CUDA: `load_for_inference` (prepack is a no-op there) and a
/// decode inside `InferenceMode` over a cache long enough for the CPU-only eager-attention rule,
/// equal the plain model's logits.
#[test]
#[ignore = "needs CUDA"]
fn cuda_inference_mode_and_prepack_noop() {
    let dev = lt_model::device::cuda_if_available();
    assert!(matches!(dev, Device::Cuda(_)), "CUDA not available");
    let dir = fixtures().join("qwen2_lt").join("model");
    let plain = Model::load(&dir, dev, Kind::BFloat16).unwrap();
    let mut fast = Model::load(&dir, dev, Kind::BFloat16).unwrap();
    assert_eq!(fast.prepack().unwrap(), lt_model::PrepackStats::default());
    let toks = ids(700, 0, 597, 5);
    let want = {
        let _g = tch::no_grad_guard();
        plain
            .forward(
                &row(&toks),
                &arange_row(0, 700),
                AttnMask::Causal,
                None,
                Logits::All,
            )
            .unwrap()
    };
    let _mode = lt_model::InferenceMode::new();
    let mut cache = fast.new_cache(1, 16);
    decode_matches_full(&fast, &mut cache, &toks, 690, &want, max_abs(&want));
}

/// Prefill `toks[..prefill]` into `cache`, then feed the rest one token at a time: each step's
/// logits equal row `i` of `full` (the whole sequence in one forward) within bf16 tolerance.
fn decode_matches_full(
    m: &Model,
    cache: &mut lt_model::KvCache,
    toks: &[i64],
    prefill: usize,
    full: &tch::Tensor,
    scale: f64,
) {
    let _ = m
        .forward(
            &row(&toks[..prefill]),
            &arange_row(0, prefill as i64),
            AttnMask::Causal,
            Some(&mut *cache),
            Logits::None,
        )
        .unwrap();
    for i in prefill..toks.len() {
        let l = m
            .forward(
                &row(&toks[i..i + 1]),
                &arange_row(i as i64, i as i64 + 1),
                AttnMask::Causal,
                Some(&mut *cache),
                Logits::Last,
            )
            .unwrap();
        let want = full
            .get(0)
            .get(i as i64)
            .unsqueeze(0)
            .to_device(Device::Cpu);
        let d = max_diff(&l.to_device(Device::Cpu), &want);
        assert!(d < 0.05 * scale, "step {i}: {d}");
    }
}
