//! Proves the toolchain: libtorch is linked and loadable, and SDPA with a boolean
//! mask gives the same result as the explicit softmax(QK^T/sqrt(d) + mask) V.
use tch::{Device, Kind, Tensor};

#[test]
fn sdpa_with_boolean_mask_matches_explicit_attention() {
    tch::manual_seed(0);
    let (b, h, t, d) = (1i64, 2i64, 5usize, 4i64);
    let ti = t as i64;
    let q = Tensor::randn([b, h, ti, d], (Kind::Float, Device::Cpu));
    let k = Tensor::randn([b, h, ti, d], (Kind::Float, Device::Cpu));
    let v = Tensor::randn([b, h, ti, d], (Kind::Float, Device::Cpu));
    // A LightThinker-like mask: row 4 may not see columns 1..3 (an evicted thought).
    let mut allowed = vec![false; t * t];
    for r in 0..t {
        for c in 0..=r {
            allowed[r * t + c] = !(r == 4 && (1..3).contains(&c));
        }
    }
    let mask = Tensor::from_slice(&allowed).view([1, 1, ti, ti]);
    let out = Tensor::scaled_dot_product_attention(
        &q,
        &k,
        &v,
        Some(&mask),
        0.0,
        false,
        None::<f64>,
        false,
    );
    let additive = Tensor::zeros([1, 1, ti, ti], (Kind::Float, Device::Cpu))
        .masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt() + additive;
    let expect = scores.softmax(-1, Kind::Float).matmul(&v);
    let diff = (out - expect).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "max |diff| = {diff}");
}

#[test]
fn cuda_is_selected_only_when_present() {
    // On a CPU machine this must say CPU; on a GPU machine `scripts/gpu-check.sh` runs the CUDA tests.
    let dev = Device::cuda_if_available();
    assert_eq!(dev.is_cuda(), tch::Cuda::is_available());
}
