//! Kernels of the fused CPU step (norms, RoPE, SiLU, attention over the KV cache in place).
//!
//! A step of a small model is dominated by libtorch's per-operator cost (~1.5 µs for each of ~40
//! small operators per layer), not by arithmetic. After [`crate::Model::prepack`],
//! [`crate::Model::forward`] runs small steps (decode steps, compression blocks, a small model's
//! prompts) entirely through these kernels and `gemm.rs`, one call per row: RMSNorm → q|k|v →
//! RoPE → K/V written into the cache → attention over the row's slots → o-projection + residual →
//! RMSNorm → gated MLP + residual → final norm → the asked logits. The arithmetic is HF's (f32;
//! bf16 models rounded where HF rounds); only summation orders differ, so results agree with the
//! libtorch path to float rounding (tests: `tests/fused.rs`).
//!
//! Attention reads the cache in place: scores, softmax and the weighted sum of values per query
//! token and KV head, with AVX-512 kernels for head dims 16/32/64/128 (two query heads of a GQA
//! group per pass over the keys, 16 dot products reduced by one shuffle tree) and AVX2 ones for
//! other multiples of 8.
//!
//! x86-64 with AVX2 + FMA (checked at run time; AVX-512F used where present unless
//! `LT_NO_AVX512=1`); elsewhere, or with `LT_FUSED_DECODE=0`, the ordinary libtorch path runs.
use std::sync::OnceLock;

/// Whether the fused decode kernels can run here (x86-64 AVX2 + FMA, not disabled by
/// `LT_FUSED_DECODE=0`).
pub(crate) fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        if std::env::var("LT_FUSED_DECODE").is_ok_and(|v| v == "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// HF RMSNorm in f32 for each of the `rows` rows of `x` (`h` wide): `w * x / sqrt(mean(x²) + eps)`.
pub(crate) fn rms_norm(x: &[f32], h: usize, w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ss: f32 = sum_squares(xr);
        let r = 1.0 / (ss / h as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    // 8 partial sums, like a vectorised reduction
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for v in rest {
        s += v * v;
    }
    s
}

/// [`rms_norm`] with HF's bf16 roundings: `bf16(w * bf16(x / rms))`.
pub(crate) fn rms_norm_bf16(x: &[f32], h: usize, w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let r = 1.0 / (sum_squares(xr) / h as f32 + eps).sqrt();
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = v * r;
        }
        round_bf16(or);
        for (o, &g) in or.iter_mut().zip(w) {
            *o *= g;
        }
        round_bf16(or);
    }
}

/// [`rope`] with HF's bf16 roundings: `bf16(bf16(x·cos) + bf16(roll(x)·sin))`.
pub(crate) fn rope_bf16(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let r = to_bf16;
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = r(r(a * cos[i]) + r(b * sin[i]));
        hi[i] = r(r(b * cos[half + i]) + r(a * sin[half + i]));
    }
}

/// `out = silu(gate) * up`; with `bf16`, HF's roundings: `bf16(bf16(silu(gate)) * up)`.
pub(crate) fn silu_mul_rounded(gate: &[f32], up: &[f32], out: &mut [f32], bf16: bool) {
    if !bf16 {
        return silu_mul(gate, Some(up), out);
    }
    silu_mul(gate, None, out);
    round_bf16(out);
    for (o, &u) in out.iter_mut().zip(up) {
        *o *= u;
    }
    round_bf16(out);
}

/// RoPE on one head in place: `x·cos + roll(x, D/2)·sin` with the sign of `rotate_half` folded
/// into `sin` (see `rope::apply_rope`), one pass over both halves.
pub(crate) fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (lo, hi) = x.split_at_mut(half);
    let (c0, c1) = cos.split_at(half);
    let (s0, s1) = sin.split_at(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * c0[i] + b * s0[i];
        hi[i] = b * c1[i] + a * s1[i];
    }
}

/// `out[i] = silu(gate[i]) * up[i]` with HF's `x / (1 + exp(-x))`.
/// (`up: None`: silu alone.)
pub(crate) fn silu_mul(gate: &[f32], up: Option<&[f32]>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if available() {
            // SAFETY: feature checked
            return unsafe { avx2::silu_mul(gate, up, out) };
        }
    }
    for (i, (o, &g)) in out.iter_mut().zip(gate).enumerate() {
        *o = g / (1.0 + (-g).exp()) * up.map_or(1.0, |u| u[i]);
    }
}

/// Element type of a KV cache the fused kernels read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvElem {
    F32,
    /// bfloat16 bits (`u16`).
    Bf16,
}

impl KvElem {
    fn size(self) -> usize {
        match self {
            KvElem::F32 => 4,
            KvElem::Bf16 => 2,
        }
    }
}

/// Where one layer's K or V lives: base pointer, element type and element strides of `[batch,
/// kv_heads, slots, head_dim]` (the last dimension contiguous).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvLayout {
    pub(crate) base: *mut u8,
    pub(crate) elem: KvElem,
    pub(crate) row: isize,
    pub(crate) head: isize,
    pub(crate) slot: isize,
}

// SAFETY: the fused step's threads touch disjoint rows of the cache
unsafe impl Send for KvLayout {}
unsafe impl Sync for KvLayout {}

impl KvLayout {
    /// Pointer to `[row, head, slot, 0]`.
    ///
    /// # Safety
    /// The indices must be in bounds of the tensor this layout was taken from.
    pub(crate) unsafe fn at(&self, row: usize, head: usize, slot: usize) -> *mut u8 {
        let e = row as isize * self.row + head as isize * self.head + slot as isize * self.slot;
        self.base.offset(e * self.elem.size() as isize)
    }

    /// Store `src` (`head_dim` values) at `[row, head, slot, :]` (bf16: rounded to nearest even).
    ///
    /// # Safety
    /// As [`KvLayout::at`], and no other thread accesses that slot.
    pub(crate) unsafe fn write(&self, row: usize, head: usize, slot: usize, src: &[f32]) {
        let p = self.at(row, head, slot);
        match self.elem {
            KvElem::F32 => std::ptr::copy_nonoverlapping(src.as_ptr(), p as *mut f32, src.len()),
            KvElem::Bf16 => {
                let p = p as *mut u16;
                for (i, &x) in src.iter().enumerate() {
                    *p.add(i) = bf16_bits(x);
                }
            }
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// Round every value to the nearest bfloat16 (kept as f32).
pub(crate) fn round_bf16(x: &mut [f32]) {
    for v in x {
        *v = to_bf16(*v);
    }
}

/// `x` rounded to the nearest bfloat16 (kept as f32).
pub(crate) fn to_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Element `i` of a K/V row as f32.
#[inline]
unsafe fn kv_get<const BF16: bool>(p: *const u8, i: usize) -> f32 {
    if BF16 {
        f32::from_bits((*(p as *const u16).add(i) as u32) << 16)
    } else {
        *(p as *const f32).add(i)
    }
}

/// One query token's attention for the `g` query heads `q` (`g × d`, heads of one KV head)
/// over `len` cached slots (`k`, `v` point at slot 0 of a row's KV head, elements `elem`;
/// `slot` = element stride between slots): `softmax(q·kᵀ · scale + mask) · v` into `out`
/// (`g × d`), all in f32. `mask`: one additive value per slot (`-inf` hides it; a query that
/// sees nothing gets zeros). `scores` is scratch space. `kern`: [`Kern::best`] for `d` (or,
/// in tests, a kernel the CPU has).
///
/// # Safety
/// `k` and `v` must be valid for `len` slots of `d` contiguous elements at stride `slot`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_one(
    kern: Kern,
    q: &[f32],
    g: usize,
    d: usize,
    k: *const u8,
    v: *const u8,
    elem: KvElem,
    slot: isize,
    len: usize,
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let bytes = slot * elem.size() as isize;
    match elem {
        KvElem::F32 => {
            attend_one_t::<false>(kern, q, g, d, k, v, bytes, len, mask, scale, scores, out)
        }
        KvElem::Bf16 => {
            attend_one_t::<true>(kern, q, g, d, k, v, bytes, len, mask, scale, scores, out)
        }
    }
}

/// [`attend_one`] for one element type; `slot` in bytes.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one_t<const BF16: bool>(
    kern: Kern,
    q: &[f32],
    g: usize,
    d: usize,
    k: *const u8,
    v: *const u8,
    slot: isize,
    len: usize,
    mask: Option<&[f32]>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    if scores.len() < g * len {
        scores.resize(g * len, 0.0);
    }
    let scores = &mut scores[..g * len]; // every entry is written below
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kern::Avx512 => avx512::scores::<BF16>(q, g, d, k, slot, len, scale, scores),
        #[cfg(target_arch = "x86_64")]
        Kern::Avx2 => avx2::scores::<BF16>(q, g, d, k, slot, len, scale, scores),
        _ => {
            for j in 0..len {
                let kr = k.offset(j as isize * slot);
                for gi in 0..g {
                    let qr = &q[gi * d..(gi + 1) * d];
                    let s: f32 = qr
                        .iter()
                        .enumerate()
                        .map(|(c, a)| a * kv_get::<BF16>(kr, c))
                        .sum();
                    scores[gi * len + j] = s * scale;
                }
            }
        }
    }
    if let Some(m) = mask {
        for row in scores.chunks_exact_mut(len.max(1)) {
            for (s, &a) in row.iter_mut().zip(m) {
                *s += a;
            }
        }
    }
    // unnormalised exp(s - max) here, the 1/sum applied to the output
    let mut inv = [0f32; 64];
    let mut inv_big = Vec::new();
    let inv: &mut [f32] = if g <= 64 {
        &mut inv[..g]
    } else {
        inv_big.resize(g, 0.0);
        &mut inv_big
    };
    for gi in 0..g {
        let row = &mut scores[gi * len..(gi + 1) * len];
        let max = max_of(kern, row);
        if max == f32::NEG_INFINITY {
            row.fill(0.0); // every slot hidden: zeros
            inv[gi] = 0.0;
            continue;
        }
        inv[gi] = 1.0 / exp_shift_sum(kern, row, max);
    }
    out[..g * d].fill(0.0);
    match kern {
        #[cfg(target_arch = "x86_64")]
        Kern::Avx512 => avx512::weighted_values::<BF16>(scores, g, d, v, slot, len, out),
        #[cfg(target_arch = "x86_64")]
        Kern::Avx2 => avx2::weighted_values::<BF16>(scores, g, d, v, slot, len, out),
        _ => {
            for gi in 0..g {
                let o = &mut out[gi * d..(gi + 1) * d];
                for (j, &p) in scores[gi * len..(gi + 1) * len].iter().enumerate() {
                    let vr = v.offset(j as isize * slot);
                    for (c, a) in o.iter_mut().enumerate() {
                        *a += p * kv_get::<BF16>(vr, c);
                    }
                }
            }
        }
    }
    for (o, &r) in out[..g * d].chunks_exact_mut(d).zip(inv.iter()) {
        o.iter_mut().for_each(|v| *v *= r);
    }
}

/// Which attention kernels run for head dim `d`: AVX-512 for d = 16, 32, 64, 128; AVX2 for
/// other multiples of 8 up to 256; else scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kern {
    Avx512,
    Avx2,
    Scalar,
}

impl Kern {
    /// The fastest kernels this CPU has for head dim `d`.
    pub(crate) fn best(d: usize) -> Kern {
        if !available() {
            Kern::Scalar
        } else if matches!(d, 16 | 32 | 64 | 128) && crate::gemm::avx512() {
            Kern::Avx512
        } else if d.is_multiple_of(8) && d <= 256 {
            Kern::Avx2
        } else {
            Kern::Scalar
        }
    }

    /// This kernel for head dim `d` where the CPU has it, else the best one it has.
    #[cfg(test)]
    fn or_best(self, d: usize) -> Kern {
        let best = Kern::best(d);
        match (self, best) {
            (Kern::Avx512, _) => best,
            (Kern::Avx2, Kern::Avx512) if d.is_multiple_of(8) && d <= 256 => Kern::Avx2,
            (Kern::Avx2, _) => best,
            (Kern::Scalar, _) => Kern::Scalar,
        }
    }
}

/// Largest value (`-inf` for an empty or all-`-inf` slice).
fn max_of(kern: Kern, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if kern == Kern::Avx512 {
        // SAFETY: the kernel was chosen where the CPU has AVX-512F
        return unsafe { avx512::max_of(x) };
    }
    let _ = kern;
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            if c[i] > m[i] {
                m[i] = c[i];
            }
        }
    }
    let mut best = f32::NEG_INFINITY;
    for &v in m.iter().chain(rest) {
        if v > best {
            best = v;
        }
    }
    best
}

/// `x[i] = exp(x[i] - shift)`; returns the sum.
fn exp_shift_sum(kern: Kern, x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match kern {
        // SAFETY: the kernels were chosen where the CPU has them
        Kern::Avx512 => return unsafe { avx512::exp_shift_sum(x, shift) },
        Kern::Avx2 => return unsafe { avx2::exp_shift_sum(x, shift) },
        Kern::Scalar => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kern;
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        s += *v;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // lane / tile indices read clearer than zipped iterators
mod avx512 {
    use std::arch::x86_64::*;

    /// 16 K/V elements from `p + i` (f32 or bf16 bits) as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<const BF16: bool>(p: *const u8, i: usize) -> __m512 {
        if BF16 {
            let h = _mm256_loadu_si256((p as *const u16).add(i) as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_loadu_ps((p as *const f32).add(i))
        }
    }

    /// The lane sums of 16 vectors as one vector `[Σv0, …, Σv15]` (a transposing add tree:
    /// 45 shuffles and adds, no horizontal instructions).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
        // pairs: per 128-bit lane [a0+a2, b0+b2, a1+a3, b1+b3]
        let s: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        // quads: per 128-bit lane the partial sums of 4 vectors, in order
        let u: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (_mm512_castps_pd(s[2 * i]), _mm512_castps_pd(s[2 * i + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            )
        });
        // across the 128-bit lanes
        let lanes = |a: __m512, b: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        };
        lanes(lanes(u[0], u[1]), lanes(u[2], u[3]))
    }

    /// Lanes below `n` (of 16).
    #[inline]
    fn first(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Scaled dot products of the `g` queries with `len` keys (see `super::attend_one`): two
    /// heads × 8 keys at a time (each key load serves both heads; the 16 sums come out of one
    /// add tree), a last odd head by the AVX2 kernel. A short last block repeats its last key
    /// and is stored masked. `d` ∈ {16, 32, 64, 128}; `slot` in bytes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores<const BF16: bool>(
        q: &[f32],
        g: usize,
        d: usize,
        k: *const u8,
        slot: isize,
        len: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let dv = d / 16;
        let out = scores.as_mut_ptr();
        let mut gi = 0;
        if BF16 && d.is_multiple_of(32) && crate::gemm::bf16_dot() {
            gi = pairs_bf16_dot(q, g, d, k, slot, len, scale, out);
        }
        while gi + 2 <= g {
            let (q0, q1) = (q.as_ptr().add(gi * d), q.as_ptr().add((gi + 1) * d));
            let mut j = 0;
            while j < len {
                let (n, kr) = key_rows(k, j, len, slot);
                let mut a = [_mm512_setzero_ps(); 16];
                for c in 0..dv {
                    let (qa, qb) = (
                        _mm512_loadu_ps(q0.add(c * 16)),
                        _mm512_loadu_ps(q1.add(c * 16)),
                    );
                    for t in 0..8 {
                        let kv = load16::<BF16>(kr[t], c * 16);
                        a[t] = _mm512_fmadd_ps(qa, kv, a[t]);
                        a[8 + t] = _mm512_fmadd_ps(qb, kv, a[8 + t]);
                    }
                }
                store_pair(&a, scale, out.add(gi * len + j), len, n);
                j += 8;
            }
            gi += 2;
        }
        if gi < g {
            // a lone head: the AVX2 kernel is faster (no second head to share the key loads
            // with, and 8 lanes to reduce per key instead of 16); SAFETY: AVX-512 kernels are
            // chosen only where AVX2 + FMA are present too
            super::avx2::scores::<BF16>(
                &q[gi * d..],
                1,
                d,
                k,
                slot,
                len,
                scale,
                &mut scores[gi * len..],
            );
        }
    }

    /// Keys `j..j+8` of `len` (`slot` bytes apart): how many exist (≤ 8) and their rows, a short
    /// last block repeating its last key (its scores are stored masked).
    #[inline]
    unsafe fn key_rows(k: *const u8, j: usize, len: usize, slot: isize) -> (usize, [*const u8; 8]) {
        let n = (len - j).min(8);
        (
            n,
            std::array::from_fn(|t| k.offset((j + t.min(n - 1)) as isize * slot)),
        )
    }

    /// The 8 keys' scores of two heads from their accumulators (`a[t]`, `a[8 + t]`): lane sums
    /// times `scale`, the first `n` stored at `out` (head 0) and `out + len` (head 1).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_pair(a: &[__m512; 16], scale: f32, out: *mut f32, len: usize, n: usize) {
        let s = _mm512_mul_ps(hsum16(a), _mm512_set1_ps(scale));
        _mm512_mask_storeu_ps(out, first(n), s);
        let hi = _mm512_shuffle_f32x4::<0b01_00_11_10>(s, s);
        _mm512_mask_storeu_ps(out.add(len), first(n), hi);
    }

    /// [`scores`]' head pairs for bf16 keys and bf16-valued queries (a bf16 model's, rounded where
    /// HF rounds) with `vdpbf16ps`: one 64-byte load is 32 dims of a key, and each instruction
    /// adds 32 exact products into 16 f32 lanes — the f32 kernel's sums of the same products, in
    /// another order, from half the instructions. `d` a multiple of 32, at most 128. Returns the
    /// heads done (a lone last one is left to the caller).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pairs_bf16_dot(
        q: &[f32],
        g: usize,
        d: usize,
        k: *const u8,
        slot: isize,
        len: usize,
        scale: f32,
        out: *mut f32,
    ) -> usize {
        // the queries as bf16 (32 per 64-byte vector)
        let mut qb = [_mm512_setzero_si512(); 2 * 128 / 32];
        let dv = d / 32;
        let mut gi = 0;
        while gi + 2 <= g {
            for h in 0..2 {
                for c in 0..dv {
                    let at = q.as_ptr().add((gi + h) * d + c * 32);
                    let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(at));
                    let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(at.add(16)));
                    qb[h * dv + c] = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(std::mem::transmute::<__m256bh, __m256i>(lo)),
                        std::mem::transmute::<__m256bh, __m256i>(hi),
                    );
                }
            }
            let mut j = 0;
            while j < len {
                let (n, kr) = key_rows(k, j, len, slot);
                let mut a = [_mm512_setzero_ps(); 16];
                for c in 0..dv {
                    let (qa, qc) = (
                        std::mem::transmute::<__m512i, __m512bh>(qb[c]),
                        std::mem::transmute::<__m512i, __m512bh>(qb[dv + c]),
                    );
                    for t in 0..8 {
                        let kv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                            (kr[t] as *const u16).add(c * 32) as *const _,
                        ));
                        a[t] = _mm512_dpbf16_ps(a[t], qa, kv);
                        a[8 + t] = _mm512_dpbf16_ps(a[8 + t], qc, kv);
                    }
                }
                store_pair(&a, scale, out.add(gi * len + j), len, n);
                j += 8;
            }
            gi += 2;
        }
        gi
    }

    /// `out[gi] = Σ_j p[gi, j] · v_j` for probabilities `p` (`g × len`); `d` ∈ {16, 32, 64,
    /// 128}; `slot` in bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_values<const BF16: bool>(
        p: &[f32],
        g: usize,
        d: usize,
        v: *const u8,
        slot: isize,
        len: usize,
        out: &mut [f32],
    ) {
        let (p, o) = (p.as_ptr(), out.as_mut_ptr());
        let mut gi = 0;
        // two heads at a time share each V load (four accumulator sets ≤ 16 registers)
        if d <= 64 {
            while gi + 2 <= g {
                let (pp, op) = (p.add(gi * len), o.add(gi * d));
                match d {
                    16 => heads::<1, 2, BF16>(pp, len, v, slot, op, d),
                    32 => heads::<2, 2, BF16>(pp, len, v, slot, op, d),
                    _ => heads::<4, 2, BF16>(pp, len, v, slot, op, d),
                }
                gi += 2;
            }
        }
        while gi < g {
            let (pp, op) = (p.add(gi * len), o.add(gi * d));
            match d {
                16 => heads::<1, 1, BF16>(pp, len, v, slot, op, d),
                32 => heads::<2, 1, BF16>(pp, len, v, slot, op, d),
                64 => heads::<4, 1, BF16>(pp, len, v, slot, op, d),
                _ => heads::<8, 1, BF16>(pp, len, v, slot, op, d),
            }
            gi += 1;
        }
    }

    /// `H` heads (probability rows `p + h·len`, outputs `out + h·d`) of `d = 16 N`: the output
    /// rows in registers, even and odd slots in separate accumulators (FMA latency).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn heads<const N: usize, const H: usize, const BF16: bool>(
        p: *const f32,
        len: usize,
        v: *const u8,
        slot: isize,
        out: *mut f32,
        d: usize,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); N]; H]; 2];
        let mut j = 0;
        while j < len {
            let pairs = if j + 2 <= len { 2 } else { 1 };
            for par in 0..pairs {
                let vp = v.offset((j + par) as isize * slot);
                let vv: [__m512; N] = std::array::from_fn(|c| load16::<BF16>(vp, c * 16));
                for h in 0..H {
                    let pb = _mm512_set1_ps(*p.add(h * len + j + par));
                    for c in 0..N {
                        acc[par][h][c] = _mm512_fmadd_ps(pb, vv[c], acc[par][h][c]);
                    }
                }
            }
            j += 2;
        }
        for h in 0..H {
            for c in 0..N {
                _mm512_storeu_ps(
                    out.add(h * d + c * 16),
                    _mm512_add_ps(acc[0][h][c], acc[1][h][c]),
                );
            }
        }
    }

    /// `exp(x)` for 16 lanes (the same Cephes polynomial as the AVX2 one).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.376_26));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-88.376_26));
        let fx = _mm512_fmadd_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
            _mm512_set1_ps(0.5),
        );
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(fx);
        let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693_359_4), x);
        let x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.398_199_9e-3));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.333_452e-3));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.166_579_6e-2));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.666_666_5e-1));
        y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(0.5));
        let x2 = _mm512_mul_ps(x, x);
        y = _mm512_fmadd_ps(y, x2, x);
        y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127));
        _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
    }

    /// `x[i] = exp(x[i] - shift)`, returning the sum.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
        let (n, xp) = (x.len(), x.as_mut_ptr());
        let (sh, ninf) = (_mm512_set1_ps(shift), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = first(n - i);
            // lanes past the end read as -inf: exp = 0
            let e = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, m, xp.add(i)), sh));
            _mm512_mask_storeu_ps(xp.add(i), m, e);
            acc = _mm512_add_ps(acc, e);
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Largest value (`-inf` for an empty or all-`-inf` slice).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_of(x: &[f32]) -> f32 {
        let (n, xp) = (x.len(), x.as_ptr());
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = ninf;
        let mut i = 0;
        while i < n {
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, first(n - i), xp.add(i)));
            i += 16;
        }
        _mm512_reduce_max_ps(m)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // lane / tile indices read clearer than zipped iterators
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(a: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` for 8 lanes (Cephes' single-precision polynomial, ~1 ulp on [-87, 88]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-88.376_26));
        let fx = _mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        );
        let fx = _mm256_floor_ps(fx);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.398_199_9e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.333_452e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.166_579_6e-2));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.666_666_5e-1));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.5));
        let x2 = _mm256_mul_ps(x, x);
        y = _mm256_fmadd_ps(y, x2, x);
        y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
        // 2^fx: fx + 127 into the exponent field (fx ∈ [-127, 128] after the clamp)
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
        _mm256_mul_ps(y, pow2)
    }

    /// Sum of each of 8 vectors, as one vector `[Σa0, …, Σa7]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum8(a: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1); // [s0 s1 s2 s3 | s0' s1' s2' s3']
        let u1 = _mm256_hadd_ps(t2, t3); // [s4 s5 s6 s7 | s4' ...]
        _mm256_add_ps(
            _mm256_permute2f128_ps(u0, u1, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31),
        )
    }

    /// 8 K/V elements from `p + i` (f32 or bf16 bits) as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8<const BF16: bool>(p: *const u8, i: usize) -> __m256 {
        if BF16 {
            let h = _mm_loadu_si128((p as *const u16).add(i) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        } else {
            _mm256_loadu_ps((p as *const f32).add(i))
        }
    }

    /// Scaled dot products of the `g` queries with `len` keys (see `super::attend_one`),
    /// 8 keys at a time; `d % 8 == 0`, `d <= 256`; `slot` in bytes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores<const BF16: bool>(
        q: &[f32],
        g: usize,
        d: usize,
        k: *const u8,
        slot: isize,

        len: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let dv = d / 8;
        let sc = _mm256_set1_ps(scale);
        let full = len & !7;
        let mut j = 0;
        while j < full {
            let kr: [*const u8; 8] = std::array::from_fn(|t| k.offset((j + t) as isize * slot));
            for gi in 0..g {
                let qp = q.as_ptr().add(gi * d);
                let mut a = [_mm256_setzero_ps(); 8];
                for c in 0..dv {
                    let qv = _mm256_loadu_ps(qp.add(c * 8));
                    for t in 0..8 {
                        a[t] = _mm256_fmadd_ps(qv, load8::<BF16>(kr[t], c * 8), a[t]);
                    }
                }
                let s = _mm256_mul_ps(hsum8(&a), sc);
                _mm256_storeu_ps(scores.as_mut_ptr().add(gi * len + j), s);
            }
            j += 8;
        }
        while j < len {
            let kp = k.offset(j as isize * slot);
            for gi in 0..g {
                let qp = q.as_ptr().add(gi * d);
                let mut a = _mm256_setzero_ps();
                for c in 0..dv {
                    a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(c * 8)),
                        load8::<BF16>(kp, c * 8),
                        a,
                    );
                }
                scores[gi * len + j] = hsum(a) * scale;
            }
            j += 1;
        }
    }

    /// `out[gi] = Σ_j p[gi, j] · v_j` for probabilities `p` (`g × len`); `d % 8 == 0`,
    /// `d <= 256`; `slot` in bytes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_values<const BF16: bool>(
        p: &[f32],
        g: usize,
        d: usize,
        v: *const u8,
        slot: isize,
        len: usize,
        out: &mut [f32],
    ) {
        match d / 8 {
            2 => weighted_values_n::<2, BF16>(p, g, v, slot, len, out),
            4 => weighted_values_n::<4, BF16>(p, g, v, slot, len, out),
            8 => weighted_values_n::<8, BF16>(p, g, v, slot, len, out),
            12 => weighted_values_n::<12, BF16>(p, g, v, slot, len, out),
            16 => weighted_values_n::<16, BF16>(p, g, v, slot, len, out),
            _ => {
                for gi in 0..g {
                    let o = &mut out[gi * d..(gi + 1) * d];
                    for j in 0..len {
                        let pj = _mm256_set1_ps(p[gi * len + j]);
                        let vp = v.offset(j as isize * slot);
                        for c in 0..d / 8 {
                            let op = o.as_mut_ptr().add(c * 8);
                            let r =
                                _mm256_fmadd_ps(pj, load8::<BF16>(vp, c * 8), _mm256_loadu_ps(op));
                            _mm256_storeu_ps(op, r);
                        }
                    }
                }
            }
        }
    }

    /// [`weighted_values`] for `d = 8 N`: the output row in registers, two accumulator sets
    /// (even and odd slots) to hide the FMA latency.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_values_n<const N: usize, const BF16: bool>(
        p: &[f32],
        g: usize,
        v: *const u8,
        slot: isize,
        len: usize,
        out: &mut [f32],
    ) {
        for gi in 0..g {
            let pr = p.as_ptr().add(gi * len);
            let mut a0 = [_mm256_setzero_ps(); N];
            let mut a1 = [_mm256_setzero_ps(); N];
            let mut j = 0;
            while j + 2 <= len {
                let p0 = _mm256_set1_ps(*pr.add(j));
                let p1 = _mm256_set1_ps(*pr.add(j + 1));
                let v0 = v.offset(j as isize * slot);
                let v1 = v.offset((j + 1) as isize * slot);
                for c in 0..N {
                    a0[c] = _mm256_fmadd_ps(p0, load8::<BF16>(v0, c * 8), a0[c]);
                    a1[c] = _mm256_fmadd_ps(p1, load8::<BF16>(v1, c * 8), a1[c]);
                }
                j += 2;
            }
            if j < len {
                let p0 = _mm256_set1_ps(*pr.add(j));
                let v0 = v.offset(j as isize * slot);
                for c in 0..N {
                    a0[c] = _mm256_fmadd_ps(p0, load8::<BF16>(v0, c * 8), a0[c]);
                }
            }
            let op = out.as_mut_ptr().add(gi * N * 8);
            for c in 0..N {
                _mm256_storeu_ps(op.add(c * 8), _mm256_add_ps(a0[c], a1[c]));
            }
        }
    }

    /// `x[i] = exp(x[i] - shift)`, returning the sum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
        let n = x.len();
        let nv = n & !7;
        let sh = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < nv {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), sh));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        if nv < n {
            // the tail through the same vector exp: padded with -inf (exp = 0)
            let mut t = [f32::NEG_INFINITY; 8];
            t[..n - nv].copy_from_slice(&x[nv..]);
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(t.as_ptr()), sh));
            _mm256_storeu_ps(t.as_mut_ptr(), e);
            x[nv..].copy_from_slice(&t[..n - nv]);
            acc = _mm256_add_ps(acc, e);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: Option<&[f32]>, out: &mut [f32]) {
        let n = out
            .len()
            .min(gate.len())
            .min(up.map_or(usize::MAX, |u| u.len()));
        let nv = n & !7;
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let mut i = 0;
        while i < nv {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = match up {
                Some(u) => _mm256_loadu_ps(u.as_ptr().add(i)),
                None => one,
            };
            let e = exp256(_mm256_sub_ps(zero, g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            i += 8;
        }
        for j in nv..n {
            let g = gate[j];
            out[j] = g / (1.0 + (-g).exp()) * up.map_or(1.0, |u| u[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-query attention against an f64 softmax reference: f32 and bf16 caches, head dims on
    /// and off the vector width, GQA groups, a slot stride wider than the head, a mask with
    /// hidden slots, and a query that sees nothing (zeros).
    #[test]
    fn attend_one_matches_softmax() {
        let mut seed = 11u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(g, d, len, bf16) in &[
            (1, 8, 1, false),
            (2, 16, 37, false),
            (3, 12, 20, false),
            (7, 64, 130, false),
            (2, 32, 19, true),
            (1, 12, 9, true),
            (2, 32, 1, false),
            (3, 32, 16, false),
            (2, 32, 33, false),
            (1, 128, 17, false),
            (3, 128, 40, true),
            (5, 64, 15, true),
            (4, 16, 50, true),
            (2, 48, 21, false),
        ] {
            for kern in [Kern::Avx512, Kern::Avx2, Kern::Scalar].map(|k| k.or_best(d)) {
                let slot = d + 4; // padding between slots
                                  // a bf16 model's queries are bf16 values (the bf16 dot kernel relies on it)
                let q: Vec<f32> = (0..g * d)
                    .map(|_| rnd() * 3.0)
                    .map(|x| if bf16 { to_bf16(x) } else { x })
                    .collect();
                let k: Vec<f32> = (0..len * slot).map(|_| rnd()).collect();
                let v: Vec<f32> = (0..len * slot).map(|_| rnd()).collect();
                let (kb, vb): (Vec<u16>, Vec<u16>) = (
                    k.iter().map(|&x| bf16_bits(x)).collect(),
                    v.iter().map(|&x| bf16_bits(x)).collect(),
                );
                let val = |buf: &[f32], bits: &[u16], i: usize| -> f64 {
                    if bf16 {
                        f32::from_bits((bits[i] as u32) << 16) as f64
                    } else {
                        buf[i] as f64
                    }
                };
                let mask: Vec<f32> = (0..len)
                    .map(|j| if j % 3 == 1 { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                for masked in [false, true] {
                    let mut out = vec![0f32; g * d];
                    let (kp, vp, elem) = if bf16 {
                        (
                            kb.as_ptr() as *const u8,
                            vb.as_ptr() as *const u8,
                            KvElem::Bf16,
                        )
                    } else {
                        (
                            k.as_ptr() as *const u8,
                            v.as_ptr() as *const u8,
                            KvElem::F32,
                        )
                    };
                    let scale = 0.3;
                    let m = masked.then_some(&mask[..]);
                    unsafe {
                        attend_one(
                            kern,
                            &q,
                            g,
                            d,
                            kp,
                            vp,
                            elem,
                            slot as isize,
                            len,
                            m,
                            scale,
                            &mut Vec::new(),
                            &mut out,
                        )
                    };
                    for gi in 0..g {
                        let s: Vec<f64> = (0..len)
                            .map(|j| {
                                let dot: f64 = (0..d)
                                    .map(|c| q[gi * d + c] as f64 * val(&k, &kb, j * slot + c))
                                    .sum();
                                dot * scale as f64 + m.map_or(0.0, |m| m[j] as f64)
                            })
                            .collect();
                        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for c in 0..d {
                            let want: f64 = (0..len)
                                .map(|j| e[j] * val(&v, &vb, j * slot + c))
                                .sum::<f64>()
                                / z;
                            let got = out[gi * d + c] as f64;
                            assert!(
                                (got - want).abs() < 1e-5,
                                "{kern:?} g{g} d{d} len{len} bf16 {bf16}: {got} vs {want}"
                            );
                        }
                    }
                }
                // a query that sees nothing
                let hidden = vec![f32::NEG_INFINITY; len];
                let mut out = vec![1f32; g * d];
                unsafe {
                    attend_one(
                        kern,
                        &q,
                        g,
                        d,
                        k.as_ptr() as *const u8,
                        v.as_ptr() as *const u8,
                        KvElem::F32,
                        slot as isize,
                        len,
                        Some(&hidden),
                        0.3,
                        &mut Vec::new(),
                        &mut out,
                    )
                };
                assert!(out.iter().all(|&x| x == 0.0));
            }
        }
    }

    /// Vectorised silu agrees with the scalar formula over a wide range (incl. saturation).
    #[test]
    fn silu_matches_scalar() {
        let g: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.9).collect();
        let u: Vec<f32> = (0..203).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut o = vec![0f32; g.len()];
        silu_mul(&g, Some(&u), &mut o);
        for i in 0..g.len() {
            let want = (g[i] as f64 / (1.0 + (-g[i] as f64).exp())) * u[i] as f64;
            let d = (o[i] as f64 - want).abs();
            assert!(
                d <= 2e-6 * want.abs().max(1.0),
                "{}: {} vs {want}",
                g[i],
                o[i]
            );
        }
    }

    #[test]
    fn rms_norm_and_rope_match_formulas() {
        let x: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let w: Vec<f32> = (0..6).map(|i| 0.5 + i as f32).collect();
        let mut o = vec![0f32; 12];
        rms_norm(&x, 6, &w, 1e-6, &mut o);
        for r in 0..2 {
            let row = &x[r * 6..(r + 1) * 6];
            let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 6.0;
            for i in 0..6 {
                let want = row[i] as f64 / (ms + 1e-6).sqrt() * w[i] as f64;
                assert!((o[r * 6 + i] as f64 - want).abs() < 1e-5);
            }
        }
        let mut h = vec![1.0f32, 2.0, 3.0, 4.0];
        let (c, s) = ([0.5f32, 0.25, 0.5, 0.25], [-0.1f32, -0.2, 0.1, 0.2]);
        rope(&mut h, &c, &s);
        assert_eq!(
            h,
            [
                1.0 * 0.5 - 3.0 * 0.1,
                2.0 * 0.25 - 4.0 * 0.2,
                3.0 * 0.5 + 0.1,
                4.0 * 0.25 + 2.0 * 0.2
            ]
        );
    }
}
