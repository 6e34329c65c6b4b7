//! oneDNN weight prepacking for CPU inference (see `csrc/shim.cpp`).
//!
//! libtorch's default CPU matmul re-lays-out ("packs") the weight on every call and, for f32,
//! goes through the bundled MKL, which takes its AVX2 path on non-Intel CPUs. Packing each weight
//! once into oneDNN's blocked layout and calling oneDNN's linear directly is 1.2–2.4× faster per
//! matmul on a 2-core AMD EPYC (f32 and bf16, one token or a 64-token prompt); see docs/model.md.
use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn lt_onednn_available() -> i32;
    fn lt_onednn_pack(w: *const C_tensor, err: *mut c_char, n: usize) -> *mut C_tensor;
    fn lt_onednn_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        err: *mut c_char,
        n: usize,
    ) -> *mut C_tensor;
}

/// Whether the loaded libtorch registers the oneDNN operators (x86 builds do).
pub(crate) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| unsafe { lt_onednn_available() } != 0)
}

fn call(f: impl FnOnce(*mut c_char, usize) -> *mut C_tensor) -> Result<Tensor, String> {
    let mut buf = [0 as c_char; 512];
    let p = f(buf.as_mut_ptr(), buf.len());
    if p.is_null() {
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
        return Err(msg
            .to_string_lossy()
            .lines()
            .next()
            .unwrap_or("")
            .to_string());
    }
    // SAFETY: the shim returns a fresh heap `at::Tensor*`; tch's Tensor owns and frees it.
    Ok(unsafe { Tensor::from_ptr(p) })
}

/// Pack a dense `[out, in]` weight (f32 / bf16, CPU) into oneDNN's layout.
pub(crate) fn pack(w: &Tensor) -> Result<Tensor, String> {
    let w = w.contiguous();
    call(|e, n| unsafe { lt_onednn_pack(w.as_ptr(), e, n) })
}

/// `x Wᵀ + b` for `x` of shape `[..., in]` and a weight from [`pack`]; returns `[..., out]`.
pub(crate) fn linear(x: &Tensor, packed: &Tensor, b: Option<&Tensor>) -> Result<Tensor, String> {
    let size = x.size();
    let k = *size.last().unwrap_or(&0);
    let x2 = x.reshape([-1, k]).contiguous();
    let bp = b.map_or(std::ptr::null(), |b| b.as_ptr());
    let y = call(|e, n| unsafe { lt_onednn_linear(x2.as_ptr(), packed.as_ptr(), bp, e, n) })?;
    let mut out = size;
    if let Some(last) = out.last_mut() {
        *last = y.size()[1];
    }
    Ok(y.view(out.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The packed linear equals `x Wᵀ + b` for 2-D and 3-D inputs, with and without bias.
    #[test]
    fn packed_linear_equals_linear() {
        if !available() {
            return;
        }
        let _g = tch::no_grad_guard();
        tch::manual_seed(1);
        for kind in [Kind::Float, Kind::BFloat16] {
            let w = Tensor::randn([384, 256], (kind, Device::Cpu));
            let b = Tensor::randn([384], (kind, Device::Cpu));
            let p = pack(&w).unwrap();
            for shape in [
                vec![1i64, 256],
                vec![24, 256],
                vec![2, 5, 256],
                vec![1, 1, 256],
            ] {
                let x = Tensor::randn(shape.as_slice(), (kind, Device::Cpu));
                for bias in [None, Some(&b)] {
                    let want = x.linear(&w, bias);
                    let got = linear(&x, &p, bias).unwrap();
                    assert_eq!(got.size(), want.size());
                    let d = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                        .abs()
                        .max()
                        .double_value(&[]);
                    let tol = if kind == Kind::Float { 1e-3 } else { 0.25 };
                    assert!(d <= tol, "{kind:?} {shape:?} bias={}: {d}", bias.is_some());
                }
            }
        }
    }
}
