//! The fused step's matrix product `y = x · Wᵀ + b` on a pre-transposed weight `Wᵀ` (`[k, n]`,
//! packed in panels of 16 columns, [`pack`]), so that every output row is a sum of weight rows scaled by broadcast inputs: no
//! horizontal reductions, one accumulator register per 16 (AVX-512) or 8 (AVX2) outputs.
//!
//! Register tiles by the rows left: AVX-512 8 … 4 input rows × 48 outputs, 3 × 64, 2 × 96,
//! 1 × 128 (so up to 8 rows in one pass); AVX2 4 × 24, 3 × 24, 2 × 32, 1 × 64 (enough independent accumulators to keep both
//! FMA pipes busy; each tile streams its weight columns once, so tall tiles: a 10-token block
//! is 8 + 2 rows, not 4 + 4 + 1 + 1). Column tails use masked loads and stores. The
//! instruction set is picked at run time (AVX-512F, else AVX2 + FMA, else scalar). One thread:
//! the fused step splits its work over threads itself.
//!
//! bf16 models on CPUs with AVX512-BF16 keep their weights bf16 ([`pack_bf16`]: the same panels,
//! two inputs per 32-bit word) and multiply with `vdpbf16ps`, which adds the two exact products
//! of a pair to an f32 accumulator: the arithmetic of the f32 kernel on the same bf16 values
//! (only the order within a pair differs), from half the bytes (tiny model, batch 1: 32 → 23–24
//! µs per token). Elsewhere they run on widened f32 copies (`LT_NO_BF16_DOT=1` forces that).
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

/// Output columns per panel of a [`pack`]ed weight.
pub(crate) const PANEL: usize = 16;

/// Panel rows (cache lines) a tile of two or more rows prefetches ahead of the one it
/// multiplies. A one-row tile (a decode step's matrix-vector product) does not: its loop is
/// bound by the load ports (one weight load per FMA), where a prefetch per load cost more than
/// it saved — the hardware prefetchers follow its panel streams (tiny model, batch 1:
/// 31.1–32.0 → 29.8–30.1 µs per token, alternating A/B; batch 8 unchanged).
const PREFETCH: usize = 16;

/// Floats of a [`pack`]ed `[n, k]` weight.
pub(crate) fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(PANEL) * panel_stride(k)
}

/// Floats from one panel to the next: `k` rows of [`PANEL`] plus one cache line, so that the
/// panels a tile reads at once do not all fall into the same cache sets (a power-of-two stride
/// such as 128 × 64 bytes would, and measured 35 % slower).
#[inline]
fn panel_stride(k: usize) -> usize {
    (k + 1) * PANEL
}

/// An HF `[n, k]` weight in panels of [`PANEL`] output columns: panel `p` holds `Wᵀ[t, 16p..16p+16]`
/// for `t = 0..k` contiguously (zero-padded past `n`). A register tile walks its panels
/// front to back — one sequential stream per 16 outputs — instead of striding through a `[k, n]`
/// matrix, so the hardware prefetchers keep the weights coming (they stream from L3 for all
/// but the smallest models).
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0f32; packed_len(n, k)];
    for (j, row) in w.chunks_exact(k).take(n).enumerate() {
        let (p, i) = (j / PANEL, j % PANEL);
        for (r, &v) in row.iter().enumerate() {
            t[p * panel_stride(k) + r * PANEL + i] = v;
        }
    }
    t
}

/// Whether bf16 weights can stay bf16 ([`pack_bf16`]): AVX-512F with AVX512-BF16 (`vdpbf16ps`,
/// Zen 4+, Cooper Lake, Sapphire Rapids+), not disabled by `LT_NO_AVX512` or `LT_NO_BF16_DOT=1`.
pub(crate) fn bf16_dot() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() == Isa::Avx512
                && is_x86_feature_detected!("avx512bf16")
                && !std::env::var("LT_NO_BF16_DOT").is_ok_and(|v| v == "1")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A bf16 model's `[n, k]` weight (bf16 values held as f32) in the panels of [`pack`], with
/// consecutive inputs paired: panel `p` row `u` holds, for each of its 16 columns `j`, one
/// 32-bit word `bf16(W[j, 2u]) | bf16(W[j, 2u+1]) << 16` (a missing odd input is 0) — the operand
/// of `vdpbf16ps`, which adds both products of a pair to an f32 accumulator. Half the bytes of
/// the f32 panels, and half the instructions.
pub(crate) fn pack_bf16(w: &[f32], n: usize, k: usize) -> Vec<u32> {
    let k2 = k.div_ceil(2);
    let mut t = vec![0u32; packed_len(n, k2)];
    for (j, row) in w.chunks_exact(k).take(n).enumerate() {
        let (p, i) = (j / PANEL, j % PANEL);
        for (r, &v) in row.iter().enumerate() {
            let bits = crate::fused::bf16_bits(v) as u32;
            t[p * panel_stride(k2) + (r / 2) * PANEL + i] |= bits << (16 * (r % 2));
        }
    }
    t
}

/// A packed weight: f32 panels ([`pack`]) or paired bf16 panels ([`pack_bf16`], only where
/// [`bf16_dot`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Packed<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u32]),
}

/// `Wᵀ[t, j]` of a [`pack`]ed weight.
#[inline]
unsafe fn at(wt: *const f32, k: usize, t: usize, j: usize) -> *const f32 {
    wt.add((j / PANEL) * panel_stride(k) + t * PANEL + j % PANEL)
}

/// `y[i, j] (+)= Σ_t x[i, t] · W[j, t] + bias[j]` for `x` `[m, k]`, `W` `[n, k]` given
/// [`pack`]ed as `wt`, `y` `[m, n]`; `accumulate` adds to what `y` holds (a residual). (The
/// fused step calls [`linear_t_cols`]; this whole-output form is the tests' reference.)
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_t(
    x: &[f32],
    m: usize,
    k: usize,
    wt: Packed<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    accumulate: bool,
) {
    assert!(x.len() >= m * k && y.len() >= m * n);
    // SAFETY: `y` holds `m` rows of `n` (asserted); the rest is checked by `linear_t_part`
    unsafe { linear_t_cols(x, k, m, k, wt, n, bias, y.as_mut_ptr(), n, accumulate, 0..n) }
}

/// [`linear_t`] for the output columns `cols` only, into `y` given as a pointer: the rest of `y`
/// is neither read nor written, so threads may fill disjoint column ranges of one output at
/// once. Each value is the same sum in the same order as [`linear_t`]'s (bit-identical). The
/// range starts on a panel (a multiple of [`PANEL`]). Rows of `x` are `ldx` floats apart, rows
/// of `y` `ldy` apart (padded rows keep two threads' columns off each other's cache lines).
///
/// # Safety
/// `y` must point to `m` rows of `ldy` floats; no one else may access columns `cols` of them
/// meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn linear_t_cols(
    x: &[f32],
    ldx: usize,
    m: usize,
    k: usize,
    wt: Packed<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    accumulate: bool,
    cols: std::ops::Range<usize>,
) {
    linear_t_part(x, ldx, m, 0..k, k, wt, n, bias, y, ldy, accumulate, cols)
}

/// [`linear_t_cols`] over the products `ks` only (a range of the `kw` inputs the weight was
/// packed with): `y[i, j] (+)= Σ_{t ∈ ks} x[i, t] · W[j, t] + bias[j]` — one member's partial
/// sum when two threads split a product by its inputs. `ks` starts anywhere; `x` rows hold all
/// `kw` inputs (`ldx >= kw`). A [`Packed::Bf16`] weight takes `ks` starting on a pair (even), and
/// inputs that are bf16 values (a bf16 model's activations are, where HF multiplies them).
///
/// # Safety
/// As [`linear_t_cols`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn linear_t_part(
    x: &[f32],
    ldx: usize,
    m: usize,
    ks: std::ops::Range<usize>,
    kw: usize,
    wt: Packed<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    accumulate: bool,
    cols: std::ops::Range<usize>,
) {
    assert!(ks.start <= ks.end && ks.end <= kw);
    assert!(ldx >= kw && ldy >= n && (m == 0 || x.len() >= (m - 1) * ldx + kw));
    match wt {
        Packed::F32(wt) => assert!(wt.len() >= packed_len(n, kw)),
        Packed::Bf16(wt) => {
            assert!(wt.len() >= packed_len(n, kw.div_ceil(2)) && ks.start.is_multiple_of(2))
        }
    }
    assert!(
        cols.start <= cols.end
            && cols.end <= n
            && (cols.start.is_multiple_of(PANEL) || cols.is_empty())
    );
    if let Some(b) = bias {
        assert!(b.len() >= n);
    }
    if cols.is_empty() || m == 0 {
        return;
    }
    let wt = match wt {
        Packed::F32(wt) => wt,
        Packed::Bf16(wt) => {
            return linear_bf16(x, ldx, m, ks, kw, wt, bias, y, ldy, accumulate, cols);
        }
    };
    let a = Args {
        x: x.as_ptr().add(ks.start),
        ldx,
        m,
        k: ks.len(),
        kw,
        // row `ks.start` of every panel (panels keep their stride)
        wt: wt.as_ptr().add(ks.start * PANEL),
        bias: bias.map(|b| b.as_ptr()),
        y,
        ldy,
        accumulate,
    };
    cols_of(&a, cols.start, cols.end)
}

struct Args {
    x: *const f32,
    /// Floats from one input row to the next (`>= k`).
    ldx: usize,
    m: usize,
    /// Products summed per output (the rows of each weight panel read).
    k: usize,
    /// The `k` the weight was [`pack`]ed with (panel stride); `> k` for a range of it.
    kw: usize,
    wt: *const f32,
    bias: Option<*const f32>,
    y: *mut f32,
    /// Floats from one output row to the next (`>= n`).
    ldy: usize,
    accumulate: bool,
}

impl Args {
    /// Final value of `y[i, j]` from the product `s`.
    #[inline]
    unsafe fn finish(&self, i: usize, j: usize, s: f32) {
        let s = s + self.bias.map_or(0.0, |b| *b.add(j));
        let o = self.y.add(i * self.ldy + j);
        *o = if self.accumulate { *o + s } else { s };
    }
}

/// [`linear_t_part`] for a [`Packed::Bf16`] weight (arguments checked there, `cols` and `m`
/// not empty): the inputs paired into bf16 words once (per call, in a per-thread buffer), then
/// `vdpbf16ps` tiles (a scalar loop without AVX512-BF16; such weights are only packed where it
/// exists).
#[allow(clippy::too_many_arguments)]
unsafe fn linear_bf16(
    x: &[f32],
    ldx: usize,
    m: usize,
    ks: std::ops::Range<usize>,
    kw: usize,
    wt: &[u32],
    bias: Option<&[f32]>,
    y: *mut f32,
    ldy: usize,
    accumulate: bool,
    cols: std::ops::Range<usize>,
) {
    thread_local! {
        static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let k2 = ks.len().div_ceil(2);
    PAIRS.with(|buf| {
        let mut xp = buf.borrow_mut();
        xp.clear();
        xp.resize(m * k2, 0);
        for (i, row) in xp.chunks_exact_mut(k2).enumerate() {
            let xr = &x[i * ldx + ks.start..i * ldx + ks.end];
            // 16 at a time with `vcvtneps2bf16` (the same round-to-nearest-even)
            let mut u = 0;
            #[cfg(target_arch = "x86_64")]
            if bf16_dot() {
                u = avx512::pairs(xr, row);
            }
            for (u, w) in row.iter_mut().enumerate().skip(u) {
                let lo = crate::fused::bf16_bits(xr[2 * u]) as u32;
                let hi = xr
                    .get(2 * u + 1)
                    .map_or(0, |&v| crate::fused::bf16_bits(v) as u32);
                *w = lo | hi << 16;
            }
        }
        let a = Args16 {
            x: xp.as_ptr(),
            m,
            k2,
            kw2: kw.div_ceil(2),
            wt: wt.as_ptr().add(ks.start / 2 * PANEL),
            bias: bias.map(|b| b.as_ptr()),
            y,
            ldy,
            accumulate,
        };
        #[cfg(test)]
        let scalar = tests::FORCE_SCALAR.with(|f| f.get());
        #[cfg(not(test))]
        let scalar = false;
        match isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if bf16_dot() && !scalar => avx512::cols_bf16(&a, cols.start, cols.end),
            _ => {
                let f = |w: u32| f32::from_bits(w << 16);
                for i in 0..m {
                    for j in cols.clone() {
                        let mut s = 0f32;
                        for u in 0..k2 {
                            let (xw, ww) = (
                                *a.x.add(i * k2 + u),
                                *a.wt
                                    .add((j / PANEL) * panel_stride(a.kw2) + u * PANEL + j % PANEL),
                            );
                            s += f(xw >> 16) * f(ww >> 16);
                            s += f(xw & 0xFFFF) * f(ww & 0xFFFF);
                        }
                        a.finish(i, j, s);
                    }
                }
            }
        }
    })
}

/// [`Args`] of a bf16 product: inputs and weights as bf16 pairs.
struct Args16 {
    /// `m` rows of `k2` pairs, contiguous.
    x: *const u32,
    m: usize,
    /// Pairs summed per output.
    k2: usize,
    /// Pairs per panel column the weight was packed with.
    kw2: usize,
    wt: *const u32,
    bias: Option<*const f32>,
    y: *mut f32,
    ldy: usize,
    accumulate: bool,
}

impl Args16 {
    /// Final value of `y[i, j]` from the product `s` (as [`Args::finish`]).
    #[inline]
    unsafe fn finish(&self, i: usize, j: usize, s: f32) {
        let s = s + self.bias.map_or(0.0, |b| *b.add(j));
        let o = self.y.add(i * self.ldy + j);
        *o = if self.accumulate { *o + s } else { s };
    }
}

unsafe fn cols_of(a: &Args, j0: usize, j1: usize) {
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
                        s += *a.x.add(i * a.ldx + t) * *at(a.wt, a.kw, t, j);
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
    use super::{Args, Args16, PREFETCH};
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

    /// The row tiles of [`cols`]: as many rows at once as are left, up to 8 (tall tiles stream
    /// the weights fewer times), each with as many 16-column vectors as fit the registers.
    macro_rules! by_rows {
        ($tile_rows:ident, $a:expr, $j0:expr, $j1:expr) => {{
            let mut i = 0;
            while i < $a.m {
                i += match $a.m - i {
                    8.. => {
                        $tile_rows::<8, 3>($a, i, $j0, $j1);
                        8
                    }
                    7 => {
                        $tile_rows::<7, 3>($a, i, $j0, $j1);
                        7
                    }
                    6 => {
                        $tile_rows::<6, 3>($a, i, $j0, $j1);
                        6
                    }
                    5 => {
                        $tile_rows::<5, 3>($a, i, $j0, $j1);
                        5
                    }
                    4 => {
                        $tile_rows::<4, 3>($a, i, $j0, $j1);
                        4
                    }
                    3 => {
                        $tile_rows::<3, 4>($a, i, $j0, $j1);
                        3
                    }
                    2 => {
                        $tile_rows::<2, 6>($a, i, $j0, $j1);
                        2
                    }
                    _ => {
                        $tile_rows::<1, 8>($a, i, $j0, $j1);
                        1
                    }
                };
            }
        }};
    }

    /// Rows `i..i+MR`, columns `j0..j1` in tiles of `16 NV`; a narrow last tile (a column range
    /// split between threads, a width off the tile) takes as few vectors as it needs.
    macro_rules! by_cols {
        ($tile:ident, $mr:ident, $nv:ident, $a:expr, $i:expr, $j0:expr, $j1:expr) => {{
            let (a, i, j1) = ($a, $i, $j1);
            let mut j = $j0;
            while j < j1 && j1 - j > 16 * ($nv - 1) {
                $tile::<$mr, $nv>(a, i, j, j1);
                j += 16 * $nv;
            }
            if j < j1 {
                match (j1 - j).div_ceil(16) {
                    1 => $tile::<$mr, 1>(a, i, j, j1),
                    2 => $tile::<$mr, 2>(a, i, j, j1),
                    3 => $tile::<$mr, 3>(a, i, j, j1),
                    4 => $tile::<$mr, 4>(a, i, j, j1),
                    _ => $tile::<$mr, $nv>(a, i, j, j1),
                }
            }
        }};
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn cols(a: &Args, j0: usize, j1: usize) {
        by_rows!(tile_rows, a, j0, j1)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_rows<const MR: usize, const NV: usize>(
        a: &Args,
        i: usize,
        j0: usize,
        j1: usize,
    ) {
        by_cols!(tile, MR, NV, a, i, j0, j1)
    }

    /// One register tile: rows `i..i+MR`, columns `j..min(j+16 NV, j1)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const MR: usize, const NV: usize>(a: &Args, i: usize, j: usize, j1: usize) {
        let masks: [__mmask16; NV] = std::array::from_fn(|v| mask(j + 16 * v, j1));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        // panel of each vector (one past the last panel is never loaded: masked off)
        let panel: [*const f32; NV] =
            std::array::from_fn(|v| a.wt.wrapping_add((j / 16 + v) * super::panel_stride(a.kw)));
        // vectors past the last column are never loaded, not even masked off: a masked load
        // reaching into an unmapped page takes a microcode assist on some CPUs (measured: a
        // 344-column product 30 µs instead of 0.6 when its buffer ended the mapping)
        let live = (j1 - j).div_ceil(16).min(NV);
        for t in 0..a.k {
            if MR > 1 && t + PREFETCH < a.k {
                for v in 0..live {
                    _mm_prefetch::<_MM_HINT_T0>(panel[v].add((t + PREFETCH) * 16) as *const i8);
                }
            }
            let wv: [__m512; NV] = std::array::from_fn(|v| {
                if v < live {
                    _mm512_maskz_loadu_ps(masks[v], panel[v].add(t * 16))
                } else {
                    _mm512_setzero_ps()
                }
            });
            for r in 0..MR {
                let xb = _mm512_set1_ps(*a.x.add((i + r) * a.ldx + t));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
                }
            }
        }
        for r in 0..MR {
            let row = a.y.add((i + r) * a.ldy + j);
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
    }
    /// The bf16 pairs of `x` into `out` (`out[u] = bf16(x[2u]) | bf16(x[2u+1]) << 16`, which is
    /// the bf16 array of `x` read as 32-bit words), 16 inputs at a time; returns how many words
    /// it wrote (the caller does the odd tail).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pairs(x: &[f32], out: &mut [u32]) -> usize {
        let mut u = 0;
        while 2 * u + 16 <= x.len() && u + 8 <= out.len() {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(2 * u)));
            _mm256_storeu_si256(
                out.as_mut_ptr().add(u) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
            u += 8;
        }
        u
    }

    /// [`cols`] for a bf16 product ([`super::Args16`]): the same tiles, each `vdpbf16ps` adding
    /// the products of one input pair.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn cols_bf16(a: &Args16, j0: usize, j1: usize) {
        by_rows!(tile_rows_bf16, a, j0, j1)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_rows_bf16<const MR: usize, const NV: usize>(
        a: &Args16,
        i: usize,
        j0: usize,
        j1: usize,
    ) {
        by_cols!(tile_bf16, MR, NV, a, i, j0, j1)
    }

    /// [`tile`] over input pairs: one 64-byte load holds 16 columns × 2 inputs.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile_bf16<const MR: usize, const NV: usize>(
        a: &Args16,
        i: usize,
        j: usize,
        j1: usize,
    ) {
        let masks: [__mmask16; NV] = std::array::from_fn(|v| mask(j + 16 * v, j1));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let panel: [*const u32; NV] =
            std::array::from_fn(|v| a.wt.wrapping_add((j / 16 + v) * super::panel_stride(a.kw2)));
        // (see `tile`: vectors past the last column are never loaded)
        let live = (j1 - j).div_ceil(16).min(NV);
        for u in 0..a.k2 {
            if MR > 1 && u + PREFETCH < a.k2 {
                for v in 0..live {
                    _mm_prefetch::<_MM_HINT_T0>(panel[v].add((u + PREFETCH) * 16) as *const i8);
                }
            }
            let wv: [__m512i; NV] = std::array::from_fn(|v| {
                if v < live {
                    _mm512_maskz_loadu_epi32(masks[v], panel[v].add(u * 16) as *const i32)
                } else {
                    _mm512_setzero_si512()
                }
            });
            for r in 0..MR {
                let xb = _mm512_set1_epi32(*a.x.add((i + r) * a.k2 + u) as i32);
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbf16_ps(
                        acc[r][v],
                        std::mem::transmute::<__m512i, __m512bh>(xb),
                        std::mem::transmute::<__m512i, __m512bh>(wv[v]),
                    );
                }
            }
        }
        for r in 0..MR {
            let row = a.y.add((i + r) * a.ldy + j);
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
            // each 8 columns: half of a 16-column panel (masked off past the last one)
            let panel: [*const f32; NV] = std::array::from_fn(|v| {
                let c = j + 8 * v;
                a.wt.wrapping_add((c / 16) * super::panel_stride(a.kw) + c % 16)
            });
            // no load past the last column (see the AVX-512 tile)
            let live = (j1 - j).div_ceil(8).min(NV);
            for t in 0..a.k {
                let wv: [__m256; NV] = std::array::from_fn(|v| {
                    if v < live {
                        _mm256_maskload_ps(panel[v].add(t * 16), masks[v])
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                for r in 0..MR {
                    let xb = _mm256_set1_ps(*a.x.add((i + r) * a.ldx + t));
                    for v in 0..NV {
                        acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
                    }
                }
            }
            for r in 0..MR {
                let row = a.y.add((i + r) * a.ldy + j);
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

    thread_local! {
        /// Makes the bf16 products take their scalar loop (what a CPU without AVX512-BF16 runs).
        pub(super) static FORCE_SCALAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// `len` values in [-0.5, 0.5) from the generator.
    fn rand(seed: &mut u64, len: usize) -> Vec<f32> {
        (0..len).map(|_| lcg(seed)).collect()
    }

    /// A random `m × k` input, `n × k` weight (and its [`pack`]ed form) and bias of `n`, drawn
    /// from `seed` in that order.
    fn problem(
        seed: &mut u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = rand(seed, m * k);
        let w = rand(seed, n * k);
        let wt = pack(&w, n, k);
        (x, w, wt, rand(seed, n))
    }

    /// Every row tile (1…8 rows left, and sums of them) and column tail (n off the tile widths),
    /// bias and accumulation, against an f64 reference, on the instruction set this CPU uses.
    #[test]
    fn linear_t_matches_reference() {
        let mut seed = 7;
        let mut shapes = vec![(1, 1, 1), (1, 5, 7), (1, 1030, 128), (16, 1030, 160)];
        shapes.extend((1..=17).map(|m| (m, 37 + 13 * m, 5 + 7 * m)));
        for &(m, n, k) in &shapes {
            let (x, w, wt, b) = problem(&mut seed, m, n, k);
            let r = rand(&mut seed, m * n);
            for (bias, acc) in [(false, false), (true, false), (true, true)] {
                let mut y = r.clone();
                linear_t(
                    &x,
                    m,
                    k,
                    Packed::F32(&wt),
                    n,
                    bias.then_some(&b[..]),
                    &mut y,
                    acc,
                );
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

    /// The bf16 pair kernel ([`pack_bf16`], `vdpbf16ps` where the CPU has it, else the scalar
    /// loop): bf16 inputs and weights, every row tile and column tail, odd `k` (a half pair),
    /// bias and accumulation, input ranges from an even start — against an f64 reference of the
    /// same bf16 values (the products are exact in f32; only the summation order differs).
    #[test]
    fn bf16_pairs_match_reference() {
        let round =
            |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(crate::fused::to_bf16).collect() };
        let mut seed = 21;
        let mut shapes = vec![(1, 1, 1), (1, 5, 7), (1, 1030, 128), (16, 1030, 160)];
        shapes.extend((1..=17).map(|m| (m, 37 + 13 * m, 5 + 7 * m)));
        let shapes: Vec<(usize, usize, usize, bool)> = shapes
            .iter()
            .map(|&(m, n, k)| (m, n, k, false))
            .chain([(1, 40, 9, true), (5, 70, 33, true)])
            .collect();
        for &(m, n, k, scalar) in &shapes {
            FORCE_SCALAR.with(|f| f.set(scalar));
            let (x, w, b) = (
                round(rand(&mut seed, m * k)),
                round(rand(&mut seed, n * k)),
                rand(&mut seed, n),
            );
            let wt = pack_bf16(&w, n, k);
            let r = rand(&mut seed, m * n);
            for (bias, acc, ks) in [
                (false, false, 0..k),
                (true, false, 0..k),
                (true, true, 0..k),
                (false, false, (k / 4) * 2..k),
            ] {
                let mut y = r.clone();
                // SAFETY: `y` is m × n
                unsafe {
                    linear_t_part(
                        &x,
                        k,
                        m,
                        ks.clone(),
                        k,
                        Packed::Bf16(&wt),
                        n,
                        bias.then_some(&b[..]),
                        y.as_mut_ptr(),
                        n,
                        acc,
                        0..n,
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let mut s: f64 = ks
                            .clone()
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
                            "bf16 dot {} scalar {scalar} m{m} n{n} k{k} {ks:?} ({i},{j}): {} vs {s}",
                            bf16_dot(),
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }

    /// Partial products over input ranges add up to the whole product (within rounding), an
    /// empty range adds nothing, and the full range is the whole product bit for bit.
    #[test]
    fn input_ranges_add_up() {
        let mut seed = 13;
        for &(m, n, k) in &[(1, 344, 128), (3, 128, 344), (8, 70, 33), (11, 1030, 64)] {
            let (x, _, wt, b) = problem(&mut seed, m, n, k);
            let mut whole = vec![0f32; m * n];
            linear_t(&x, m, k, Packed::F32(&wt), n, Some(&b), &mut whole, false);
            let part = |ks: std::ops::Range<usize>, bias: bool, y: &mut [f32], acc: bool| unsafe {
                linear_t_part(
                    &x,
                    k,
                    m,
                    ks,
                    k,
                    Packed::F32(&wt),
                    n,
                    bias.then_some(&b[..]),
                    y.as_mut_ptr(),
                    n,
                    acc,
                    0..n,
                )
            };
            let mut full = vec![0f32; m * n];
            part(0..k, true, &mut full, false);
            assert!(full
                .iter()
                .zip(&whole)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            for cut in [0, 1, k / 2, k - 1, k] {
                let mut y = vec![0f32; m * n];
                part(0..cut, true, &mut y, false);
                part(cut..k, false, &mut y, true);
                for (i, (a, b)) in y.iter().zip(&whole).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "m{m} n{n} k{k} cut {cut} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Each row of a many-row product (tiles of every height)
    /// is bit-identical to that row multiplied alone: a batch row or a compression block's token
    /// gets the same values as in any other step.
    #[test]
    fn rows_equal_rows_alone() {
        let mut seed = 5;
        for &(m, n, k) in &[(9, 344, 128), (11, 1024, 128), (20, 70, 33), (88, 128, 344)] {
            let (x, _, wt, b) = problem(&mut seed, m, n, k);
            let mut all = vec![0f32; m * n];
            linear_t(&x, m, k, Packed::F32(&wt), n, Some(&b), &mut all, false);
            for i in 0..m {
                let mut one = vec![0f32; n];
                linear_t(
                    &x[i * k..(i + 1) * k],
                    1,
                    k,
                    Packed::F32(&wt),
                    n,
                    Some(&b),
                    &mut one,
                    false,
                );
                assert!(
                    one.iter()
                        .zip(&all[i * n..(i + 1) * n])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "m{m} n{n} k{k}: row {i} differs from the row alone"
                );
            }
        }
    }

    /// Column ranges (as two threads split a product, on panel boundaries) put together give
    /// exactly [`linear_t`]'s output, bias and accumulation included, and leave
    /// the other columns untouched.
    #[test]
    fn column_ranges_compose_bit_identically() {
        let mut seed = 11;
        for &(m, n, k) in &[
            (8, 344, 128),
            (8, 128, 128),
            (5, 1030, 64),
            (1, 256, 96),
            (13, 70, 9),
        ] {
            let (x, _, wt, b) = problem(&mut seed, m, n, k);
            let r = rand(&mut seed, m * n);
            for acc in [false, true] {
                let mut whole = r.clone();
                linear_t(&x, m, k, Packed::F32(&wt), n, Some(&b), &mut whole, acc);
                for cuts in [
                    vec![n / 2 / 16 * 16],
                    vec![16, n / 2 / 16 * 16 + 16],
                    vec![0, n],
                ] {
                    let mut y = r.clone();
                    let mut bounds = vec![0];
                    bounds.extend(cuts.iter().map(|&c| c.min(n)));
                    bounds.push(n);
                    for w in bounds.windows(2) {
                        unsafe {
                            linear_t_cols(
                                &x,
                                k,
                                m,
                                k,
                                Packed::F32(&wt),
                                n,
                                Some(&b),
                                y.as_mut_ptr(),
                                n,
                                acc,
                                w[0]..w[1],
                            )
                        };
                    }
                    assert!(
                        y.iter()
                            .zip(&whole)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "m{m} n{n} k{k} cuts {cuts:?}"
                    );
                }
                // rows padded apart on both sides (ldx > k, ldy > n): the same values
                let (ldx, ldy) = (k + 5, n + 16);
                let xp: Vec<f32> = (0..m * ldx)
                    .map(|i| {
                        if i % ldx < k {
                            x[i / ldx * k + i % ldx]
                        } else {
                            f32::NAN
                        }
                    })
                    .collect();
                let mut yp: Vec<f32> = (0..m * ldy)
                    .map(|i| {
                        if i % ldy < n {
                            r[i / ldy * n + i % ldy]
                        } else {
                            -7.0
                        }
                    })
                    .collect();
                let half = n / 2 / 16 * 16;
                for c in [0..half, half..n] {
                    unsafe {
                        linear_t_cols(
                            &xp,
                            ldx,
                            m,
                            k,
                            Packed::F32(&wt),
                            n,
                            Some(&b),
                            yp.as_mut_ptr(),
                            ldy,
                            acc,
                            c,
                        )
                    };
                }
                for i in 0..m * ldy {
                    let want = if i % ldy < n {
                        whole[i / ldy * n + i % ldy]
                    } else {
                        -7.0
                    };
                    assert_eq!(
                        yp[i].to_bits(),
                        want.to_bits(),
                        "padded m{m} n{n} k{k} at {i}"
                    );
                }
                // one range leaves everything else as it was
                let mut y = r.clone();
                unsafe {
                    linear_t_cols(
                        &x,
                        k,
                        m,
                        k,
                        Packed::F32(&wt),
                        n,
                        Some(&b),
                        y.as_mut_ptr(),
                        n,
                        acc,
                        16..48.min(n),
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let want = if (16..48.min(n)).contains(&j) {
                            whole[i * n + j]
                        } else {
                            r[i * n + j]
                        };
                        assert_eq!(
                            y[i * n + j].to_bits(),
                            want.to_bits(),
                            "m{m} n{n} ({i},{j})"
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
            let (x, w, wt, b) = problem(&mut seed, m, n, k);
            let mut y = vec![0.5f32; m * n];
            let a = Args {
                x: x.as_ptr(),
                ldx: k,
                m,
                k,
                kw: k,
                wt: wt.as_ptr(),
                bias: Some(b.as_ptr()),
                y: y.as_mut_ptr(),
                ldy: n,
                accumulate: true,
            };
            unsafe { avx2::cols(&a, 0, n) };
            for i in 0..m {
                for j in 0..n {
                    let s: f32 =
                        (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>() + b[j] + 0.5;
                    assert!((y[i * n + j] - s).abs() < 1e-4, "m{m} n{n} k{k}");
                }
            }
        }
    }
}
