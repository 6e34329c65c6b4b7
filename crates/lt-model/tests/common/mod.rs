//! Shared test helpers.
#![allow(dead_code)]
use std::path::PathBuf;

use lt_model::{Device, Kind, Model};
use tch::Tensor;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// `[1, n]` Int64 tensor.
pub fn row(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, v.len() as i64])
}

pub fn arange_row(start: i64, end: i64) -> Tensor {
    row(&(start..end).collect::<Vec<_>>())
}

/// max |a - b| as f64.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// Dense `[1, 1, rows, cols]` Bool mask from per-row visible intervals.
pub fn bool_mask(cols: usize, rows: &[Vec<(u32, u32)>]) -> Tensor {
    let m = lt_mask::IntervalMask::from_intervals(cols, rows.to_vec()).expect("valid intervals");
    m.to_bool_tensor(Device::Cpu)
        .view([1, 1, rows.len() as i64, cols as i64])
}

/// Standard-normal-ish deterministic token ids in [lo, hi).
pub fn ids(n: usize, lo: i64, hi: i64, seed: u64) -> Vec<i64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + ((s >> 33) % (hi - lo) as u64) as i64
        })
        .collect()
}

pub fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    p.is_file().then_some(p)
}

/// `m` prepared for inference with the fused step's weights made; `None` (the test is skipped)
/// where the fused step cannot run: not x86-64 with AVX2 + FMA, or `LT_FUSED_DECODE=0`.
pub fn prepacked(mut m: Model) -> Option<Model> {
    let stats = m.prepack().unwrap();
    let here = cfg!(target_arch = "x86_64")
        && std::env::var("LT_FUSED_DECODE").map_or(true, |v| v != "0")
        && avx2_fma();
    if !stats.fused_step {
        assert!(
            !here,
            "a small CPU model gets the fused step on this machine"
        );
        eprintln!("fused CPU step unavailable here: test skipped");
        return None;
    }
    Some(m)
}

pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
