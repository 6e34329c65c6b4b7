//! The fused step's matrix product `y = x · Wᵀ + b` on a pre-transposed weight `Wᵀ` (`[k, n]`,
//! row-major), so that every output row is a sum of weight rows scaled by broadcast inputs: no
//! horizontal reductions, one accumulator register per 16 (AVX-512) or 8 (AVX2) outputs.
//!
//! Register tiles by the rows left: AVX-512 8 … 4 input rows × 48 outputs, 3 × 64, 2 × 96,
//! 1 × 128 (so up to 8 rows in one pass); AVX2 4 × 24, 3 × 24, 2 × 32, 1 × 64 (enough independent accumulators to keep both
//! FMA pipes busy; each tile streams its weight columns once, so tall tiles: a 10-token block
//! is 8 + 2 rows, not 4 + 4 + 1 + 1). Column tails use masked loads and stores. The
//! instruction set is picked at run time (AVX-512F, else AVX2 + FMA, else scalar). One thread:
//! the fused step splits its work over threads itself.
use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

/// Whether the AVX-512 kernels (here and in `fused.rs`) are used: AVX-512F present and not
/// disabled by `LT_NO_AVX512`.
pub(crate) fn avx512() -> bool {
    isa() == Isa::Avx512
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("LT_NO_AVX512").is_err() && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    })
}

/// `[k, n]` row-major copy of an HF `[n, k]` weight.
pub(crate) fn transpose(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * k];
    for (j, row) in w.chunks_exact(k).take(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            t[i * n + j] = v;
        }
    }
    t
}

/// `y[i, j] (+)= Σ_t x[i, t] · wt[t, j] + bias[j]` for `x` `[m, k]`, `wt` `[k, n]`, `y`
/// `[m, n]`; `accumulate` adds to what `y` holds (a residual).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_t(
    x: &[f32],
    m: usize,
    k: usize,
    wt: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    accumulate: bool,
) {
    assert!(x.len() >= m * k && wt.len() >= n * k && y.len() >= m * n);
    if let Some(b) = bias {
        assert!(b.len() >= n);
    }
    let a = Args {
        x: x.as_ptr(),
        m,
        k,
        wt: wt.as_ptr(),
        n,
        bias: bias.map(|b| b.as_ptr()),
        y: y.as_mut_ptr(),
        accumulate,
    };
    // SAFETY: bounds asserted above
    unsafe { cols(&a, 0, n) }
}

struct Args {
    x: *const f32,
    m: usize,
    k: usize,
    wt: *const f32,
    n: usize,
    bias: Option<*const f32>,
    y: *mut f32,
    accumulate: bool,
}

impl Args {
    /// Final value of `y[i, j]` from the product `s`.
    #[inline]
    unsafe fn finish(&self, i: usize, j: usize, s: f32) {
        let s = s + self.bias.map_or(0.0, |b| *b.add(j));
        let o = self.y.add(i * self.n + j);
        *o = if self.accumulate { *o + s } else { s };
    }
}

unsafe fn cols(a: &Args, j0: usize, j1: usize) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::cols(a, j0, j1),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::cols(a, j0, j1),
        _ => {
            for i in 0..a.m {
                for j in j0..j1 {
                    let mut s = 0f32;
                    for t in 0..a.k {
                        s += *a.x.add(i * a.k + t) * *a.wt.add(t * a.n + j);
                    }
                    a.finish(i, j, s);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // register tiles read clearer indexed
mod avx512 {
    use super::Args;
    use std::arch::x86_64::*;

    /// Lanes `j..j+16` that exist below `n`.
    #[inline]
    fn mask(j: usize, n: usize) -> __mmask16 {
        if j >= n {
            0
        } else if n - j >= 16 {
            0xFFFF
        } else {
            ((1u32 << (n - j)) - 1) as __mmask16
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cols(a: &Args, j0: usize, j1: usize) {
        let mut i = 0;
        while i < a.m {
            i += match a.m - i {
                8.. => {
                    tile_rows::<8, 3>(a, i, j0, j1);
                    8
                }
                7 => {
                    tile_rows::<7, 3>(a, i, j0, j1);
                    7
                }
                6 => {
                    tile_rows::<6, 3>(a, i, j0, j1);
                    6
                }
                5 => {
                    tile_rows::<5, 3>(a, i, j0, j1);
                    5
                }
                4 => {
                    tile_rows::<4, 3>(a, i, j0, j1);
                    4
                }
                3 => {
                    tile_rows::<3, 4>(a, i, j0, j1);
                    3
                }
                2 => {
                    tile_rows::<2, 6>(a, i, j0, j1);
                    2
                }
                _ => {
                    tile_rows::<1, 8>(a, i, j0, j1);
                    1
                }
            };
        }
    }

    /// Rows `i..i+MR`, columns `j0..j1` in tiles of `16 NV`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_rows<const MR: usize, const NV: usize>(
        a: &Args,
        i: usize,
        j0: usize,
        j1: usize,
    ) {
        let mut j = j0;
        while j < j1 {
            let masks: [__mmask16; NV] = std::array::from_fn(|v| mask(j + 16 * v, j1));
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for t in 0..a.k {
                let w = a.wt.add(t * a.n + j);
                let wv: [__m512; NV] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], w.add(16 * v)));
                for r in 0..MR {
                    let xb = _mm512_set1_ps(*a.x.add((i + r) * a.k + t));
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
                    }
                }
            }
            for r in 0..MR {
                let row = a.y.add((i + r) * a.n + j);
                for v in 0..NV {
                    let mut s = acc[r][v];
                    if let Some(b) = a.bias {
                        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(masks[v], b.add(j + 16 * v)));
                    }
                    if a.accumulate {
                        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(masks[v], row.add(16 * v)));
                    }
                    _mm512_mask_storeu_ps(row.add(16 * v), masks[v], s);
                }
            }
            j += 16 * NV;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // register tiles read clearer indexed
mod avx2 {
    use super::Args;
    use std::arch::x86_64::*;

    /// Lanes `j..j+8` that exist below `n`, as a maskload/maskstore mask.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mask(j: usize, n: usize) -> __m256i {
        let left = n.saturating_sub(j).min(8) as i32;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lanes)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn cols(a: &Args, j0: usize, j1: usize) {
        let mut i = 0;
        while i < a.m {
            i += match a.m - i {
                4.. => {
                    tile_rows::<4, 3>(a, i, j0, j1);
                    4
                }
                3 => {
                    tile_rows::<3, 3>(a, i, j0, j1);
                    3
                }
                2 => {
                    tile_rows::<2, 4>(a, i, j0, j1);
                    2
                }
                _ => {
                    tile_rows::<1, 8>(a, i, j0, j1);
                    1
                }
            };
        }
    }

    /// Rows `i..i+MR`, columns `j0..j1` in tiles of `8 NV`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_rows<const MR: usize, const NV: usize>(
        a: &Args,
        i: usize,
        j0: usize,
        j1: usize,
    ) {
        let mut j = j0;
        while j < j1 {
            let masks: [__m256i; NV] = std::array::from_fn(|v| mask(j + 8 * v, j1));
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            for t in 0..a.k {
                let w = a.wt.add(t * a.n + j);
                let wv: [__m256; NV] =
                    std::array::from_fn(|v| _mm256_maskload_ps(w.add(8 * v), masks[v]));
                for r in 0..MR {
                    let xb = _mm256_set1_ps(*a.x.add((i + r) * a.k + t));
                    for v in 0..NV {
                        acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
                    }
                }
            }
            for r in 0..MR {
                let row = a.y.add((i + r) * a.n + j);
                for v in 0..NV {
                    let mut s = acc[r][v];
                    if let Some(b) = a.bias {
                        s = _mm256_add_ps(s, _mm256_maskload_ps(b.add(j + 8 * v), masks[v]));
                    }
                    if a.accumulate {
                        s = _mm256_add_ps(s, _mm256_maskload_ps(row.add(8 * v), masks[v]));
                    }
                    _mm256_maskstore_ps(row.add(8 * v), masks[v], s);
                }
            }
            j += 8 * NV;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// Every row tile (1…8 rows left, and sums of them) and column tail (n off the tile widths),
    /// bias and accumulation, against an f64 reference, on the instruction set this CPU uses.
    #[test]
    fn linear_t_matches_reference() {
        let mut seed = 7;
        let mut shapes = vec![(1, 1, 1), (1, 5, 7), (1, 1030, 128), (16, 1030, 160)];
        shapes.extend((1..=17).map(|m| (m, 37 + 13 * m, 5 + 7 * m)));
        for &(m, n, k) in &shapes {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let wt = transpose(&w, n, k);
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let r: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
            for (bias, acc) in [(false, false), (true, false), (true, true)] {
                let mut y = r.clone();
                linear_t(&x, m, k, &wt, n, bias.then_some(&b[..]), &mut y, acc);
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = (0..k)
                            .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                            .sum();
                        if bias {
                            s += b[j] as f64;
                        }
                        if acc {
                            s += r[i * n + j] as f64;
                        }
                        let d = (y[i * n + j] as f64 - s).abs();
                        assert!(
                            d < 1e-4,
                            "{:?} m{m} n{n} k{k} ({i},{j}): {} vs {s}",
                            isa(),
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }

    /// The AVX2 kernel is checked too on AVX-512 machines (which use the other one).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_kernel_matches_scalar() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let mut seed = 3;
        for &(m, n, k) in &[
            (1, 70, 9),
            (6, 33, 20),
            (4, 24, 5),
            (2, 41, 7),
            (3, 50, 11),
            (7, 90, 3),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let wt: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let mut y = vec![0.5f32; m * n];
            let a = Args {
                x: x.as_ptr(),
                m,
                k,
                wt: wt.as_ptr(),
                n,
                bias: Some(b.as_ptr()),
                y: y.as_mut_ptr(),
                accumulate: true,
            };
            unsafe { avx2::cols(&a, 0, n) };
            for i in 0..m {
                for j in 0..n {
                    let s: f32 =
                        (0..k).map(|t| x[i * k + t] * wt[t * n + j]).sum::<f32>() + b[j] + 0.5;
                    assert!((y[i * n + j] - s).abs() < 1e-4, "m{m} n{n} k{k}");
                }
            }
        }
    }
}
