//! One decoder for Qwen2 and Llama (in the style of candle-transformers' `qwen2.rs`).
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::fused::{KvElem, KvLayout};
use crate::rope::{apply_rope, Rope};
use crate::{ModelConfig, ModelError};

/// Attention mask for [`Model::forward`].
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Plain causal attention over `[cache ++ new tokens]` (SDPA's fused `is_causal` path when
    /// there is no cache / an empty one).
    Causal,
    /// `[B or 1, 1, T, K]` or `[B or 1, T, K]` Bool, `true` = may attend; `K` = keys after the
    /// append (`cache.max_len()` after append, or `T` without a cache).
    Bool(&'a Tensor),
    /// Same shape, float: `0` visible, `-inf` / dtype-min hidden.
    Additive(&'a Tensor),
}

/// Which logits [`Model::forward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[B, T, vocab]`.
    All,
    /// The last position only: `[B, vocab]`.
    Last,
    /// No lm_head: the final (normed) hidden states `[B, T, hidden]`.
    None,
}

/// Weights with at least this many elements take the oneDNN path for f32 on CPU (below it the
/// per-call oneDNN set-up costs more than it saves; measured crossover ~512×512).
const ONEDNN_MIN_ELEMENTS: i64 = 512 * 512;

/// [`Model::prepack`] oneDNN-packs f32 weights only from this many elements on (`LT_PACK_MIN`
/// overrides): for smaller, cache-resident ones MKL's small GEMM plus no ~15 µs boxed-call
/// overhead is faster (a 4-layer width-128 model decoded 3.9k tok/s unpacked vs 3.1k with its
/// 88k-element gate|up packed), while every matrix of a 0.5B model (≥ 0.8M elements) gains.
/// bf16 packs everything: libtorch's bf16 matmul is oneDNN anyway, re-packing the weight on every
/// call, so even a 64-wide model gains 10–20 %.
const PACK_MIN_ELEMENTS_F32: usize = 1 << 18;

fn pack_min_elements(kind: Kind) -> usize {
    static N: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let env = *N.get_or_init(|| {
        std::env::var("LT_PACK_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    env.unwrap_or(match kind {
        Kind::Float => PACK_MIN_ELEMENTS_F32,
        _ => 0,
    })
}

/// Whether the f32 CPU inference matmuls go through oneDNN (`LT_ONEDNN=0` turns it off).
fn onednn_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LT_ONEDNN").map_or(true, |v| v != "0"))
}

/// `t` as Int64 on `dev`, without a libtorch call when it already is.
fn to_dev_i64(t: &Tensor, dev: Device) -> Tensor {
    match (t.device() == dev, t.kind() == Kind::Int64) {
        (true, true) => t.shallow_clone(),
        (true, false) => t.to_kind(Kind::Int64),
        _ => t.to_device(dev).to_kind(Kind::Int64),
    }
}

/// Serialises this crate's draws from libtorch's global random generator.
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether autograd is recording (libtorch's thread-local grad mode).
pub(crate) fn grad_enabled() -> bool {
    // at_grad_set_enabled returns the previous mode; set it back at once.
    unsafe {
        let prev = torch_sys::at_grad_set_enabled(1);
        torch_sys::at_grad_set_enabled(prev);
        prev != 0
    }
}

/// `y = x Wᵀ + b`. With `fast` (inference, f32, CPU, large `W`) the product runs through
/// oneDNN (`mkldnn_linear`) instead of the default BLAS: same f32 arithmetic up to summation
/// order, ~2× faster on CPUs where the bundled MKL takes its AVX2 path (e.g. AMD Zen).
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, fast: bool) -> Tensor {
    if fast {
        if let Ok(y) = x
            .f_to_mkldnn(None::<Kind>)
            .and_then(|xm| xm.f_mkldnn_linear(w, b))
            .and_then(|ym| ym.f_to_dense(None::<Kind>, false))
        {
            return y;
        }
    }
    x.linear(w, b)
}

/// Whether `w` qualifies for the oneDNN path (see [`linear`]).
fn onednn_eligible(w: &Tensor) -> bool {
    onednn_enabled()
        && w.kind() == Kind::Float
        && w.device() == Device::Cpu
        && w.numel() as i64 >= ONEDNN_MIN_ELEMENTS
}

/// `x Pᵀ + b` for a oneDNN-prepacked `P`; `None` (warned once per process) if oneDNN fails, so
/// the caller can take its dense path.
fn onednn_linear(x: &Tensor, packed: &Tensor, b: Option<&Tensor>) -> Option<Tensor> {
    match crate::onednn::linear(x, packed, b) {
        Ok(y) => Some(y),
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(error = %e, "oneDNN prepacked linear failed; using the dense path")
            });
            None
        }
    }
}

/// `x Wᵀ + b` through a prepacked weight when there is one (inference only), else [`linear`].
fn linear_packed(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    packed: Option<&Tensor>,
    infer: bool,
) -> Tensor {
    packed
        .filter(|_| infer)
        .and_then(|p| onednn_linear(x, p, b))
        .unwrap_or_else(|| linear(x, w, b, infer && onednn_eligible(w)))
}

/// What [`Model::prepack`] made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrepackStats {
    /// Bytes of the extra (fused / packed) weight copies.
    pub bytes: usize,
    /// Fused projections (q|k|v and gate|up per layer).
    pub fused: usize,
    /// Matrices in oneDNN's packed layout.
    pub onednn: usize,
    /// Whether the fused CPU step's weights were made (small f32 / bf16 models on x86-64).
    pub fused_step: bool,
}

/// A linear layer `y = x Wᵀ + b` with HF weight layout `[out, in]`.
#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
    /// oneDNN-prepacked copy of `w` ([`Model::prepack`]); inference only.
    packed: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor, infer: bool) -> Tensor {
        linear_packed(x, &self.w, self.b.as_ref(), self.packed.as_ref(), infer)
    }
}

/// Projections of the same input stacked along `out` (detached copies): the weights, and a bias
/// if any part has one (a missing one is zeros).
fn stack_linears(parts: &[&Linear]) -> (Tensor, Option<Tensor>) {
    let ws: Vec<Tensor> = parts.iter().map(|l| l.w.detach()).collect();
    let b = parts.iter().any(|l| l.b.is_some()).then(|| {
        let bs: Vec<Tensor> = parts
            .iter()
            .map(|l| match &l.b {
                Some(b) => b.detach(),
                None => Tensor::zeros([l.w.size()[0]], (l.w.kind(), l.w.device())),
            })
            .collect();
        Tensor::cat(&bs, 0)
    });
    (Tensor::cat(&ws, 0), b)
}

/// An inference-only copy of several projections stacked along `out` (q|k|v or gate|up), made
/// by [`Model::prepack`]: one matmul instead of three / two. oneDNN-packed when large, else
/// dense.
#[derive(Debug)]
struct FusedLinear {
    w: Tensor,
    b: Option<Tensor>,
    packed: bool,
}

impl FusedLinear {
    fn new(parts: &[&Linear], onednn: bool) -> Result<Self, ModelError> {
        let (w, b) = stack_linears(parts);
        if onednn && w.numel() >= pack_min_elements(w.kind()) {
            let p = crate::onednn::pack(&w)
                .map_err(|e| ModelError::Input(format!("oneDNN prepack: {e}")))?;
            return Ok(FusedLinear {
                w: p,
                b,
                packed: true,
            });
        }
        Ok(FusedLinear {
            w,
            b,
            packed: false,
        })
    }

    /// `None` when the oneDNN call fails (the caller then uses the separate projections).
    fn forward(&self, x: &Tensor) -> Option<Tensor> {
        if self.packed {
            return onednn_linear(x, &self.w, self.b.as_ref());
        }
        Some(linear(
            x,
            &self.w,
            self.b.as_ref(),
            onednn_eligible(&self.w),
        ))
    }

    fn bytes(&self) -> usize {
        self.w.numel() * self.w.kind().elt_size_in_bytes()
    }
}

#[derive(Debug)]
struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Inference: libtorch's fused `rms_norm` — same arithmetic as [`RmsNorm::forward`] (f32:
    /// one kernel; bf16/f16: normalise in f32, round, then `weight *` in the dtype, as HF).
    fn forward_infer(&self, x: &Tensor) -> Tensor {
        let h = [*x.size().last().unwrap_or(&0)];
        if x.kind() == Kind::Float && self.w.kind() == Kind::Float {
            x.rms_norm(h, Some(&self.w), self.eps)
        } else {
            &self.w * x.rms_norm(h, None::<&Tensor>, self.eps)
        }
    }

    /// HF: variance in f32, normalise in f32, cast back, times weight.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.eps).rsqrt();
        &self.w * y.to_kind(kind)
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// q|k|v stacked ([`Model::prepack`]).
    qkv: Option<FusedLinear>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

struct AttnInputs<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
    is_causal: bool,
    /// No autograd: inference-only kernels allowed.
    infer: bool,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        inp: &AttnInputs<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = x.size3()?;
        let fused = match (&self.qkv, inp.infer) {
            (Some(qkv), true) => qkv.forward(x),
            _ => None,
        };
        let (q, k, v) = match fused {
            Some(y) => {
                // one matmul; RoPE once over the q and k heads together
                let (h, kvh) = (self.heads, self.kv_heads);
                let y = y.view([b, t, h + 2 * kvh, self.head_dim]).transpose(1, 2);
                let qk = apply_rope(&y.narrow(1, 0, h + kvh), inp.cos, inp.sin);
                (
                    qk.narrow(1, 0, h),
                    qk.narrow(1, h, kvh),
                    y.narrow(1, h + kvh, kvh),
                )
            }
            _ => self.project(x, inp, b, t),
        };
        let (k, v) = match cache {
            Some((c, layer)) => c.append_layer(layer, &k, &v)?,
            None => (k, v),
        };
        let y = attend(
            &q,
            &k,
            &v,
            inp.mask,
            inp.is_causal,
            self.kv_heads,
            inp.infer,
        )?;
        let y = y
            .transpose(1, 2)
            .reshape([b, t, self.heads * self.head_dim]);
        Ok(self.o.forward(&y, inp.infer))
    }

    /// Separate q, k, v projections with RoPE on q and k: `[B, heads, T, D]` each.
    fn project(
        &self,
        x: &Tensor,
        inp: &AttnInputs<'_>,
        b: i64,
        t: i64,
    ) -> (Tensor, Tensor, Tensor) {
        let q = self
            .q
            .forward(x, inp.infer)
            .view([b, t, self.heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k
            .forward(x, inp.infer)
            .view([b, t, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v
            .forward(x, inp.infer)
            .view([b, t, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        (
            apply_rope(&q, inp.cos, inp.sin),
            apply_rope(&k, inp.cos, inp.sin),
            v,
        )
    }
}

/// Whether a step of `tokens` new tokens (all rows) is faster through the fused kernels than
/// through libtorch, for a model of `params` weights per token: while the step's dense
/// multiply-adds stay below [`FUSED_MAX_DENSE_MACS`] — small models, where libtorch's
/// per-operator cost dominates, up to their whole prompts. Larger steps are libtorch's: a 0.5B
/// model's one-token step is memory-bound and oneDNN's packed matrix-vector product streams the
/// weights ~10 % faster than ours; its batched steps are compute-bound and oneDNN's packed GEMM
/// is 2× faster (measured, docs/model.md). Models whose every weight matrix fits
/// [`FUSED_L2_MATRIX_BYTES`] take it for steps of any size (a width-128 4-layer model: 8 × 128
/// prompt tokens at 163k tokens/s fused vs 84k through libtorch; 2048 tokens 56k vs 30k).
fn fused_pays(tokens: usize, cfg: &ModelConfig) -> bool {
    let params = cfg.dense_params();
    let (h, d) = (cfg.hidden_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * d, cfg.kv_heads() * d);
    let inter = cfg.intermediate_size;
    let largest = [h * (q + 2 * kv), q * h, 2 * h * inter, cfg.vocab_size * h]
        .into_iter()
        .max()
        .unwrap_or(0);
    params <= FUSED_MAX_PARAMS
        && (tokens.saturating_mul(params) <= FUSED_MAX_DENSE_MACS
            || largest * 4 <= FUSED_L2_MATRIX_BYTES)
}

/// The fused step keeps transposed f32 copies of the weights ([`Model::prepack`]): models up to
/// this size only (at most 128 MB of copies).
const FUSED_MAX_PARAMS: usize = 32 << 20;

/// See [`fused_pays`]: a width-128 4-layer model (0.85M weights) takes the fused path for up to
/// ~150 tokens per step (8 rows × a 10-token compression block, or a 128-token prompt).
const FUSED_MAX_DENSE_MACS: usize = 128 << 20;

/// See [`fused_pays`]: steps of any size take the fused path when every weight matrix's f32
/// copy (the LM head included) is at most this big, so that it stays in a core's L2 cache while
/// all the step's tokens stream past it (our products do not block for caches beyond that).
const FUSED_L2_MATRIX_BYTES: usize = 512 << 10;

/// Largest explicit mask (query tokens × keys) a fused step takes: 64 MB of f32 rows.
const FUSED_MAX_MASK_ELEMS: usize = 16 << 20;

/// Multiply-adds of a fused step from which it runs on two threads when its attention splits
/// by kv heads ([`TeamStep`]): every product by columns (each thread streams half of the
/// weights), the attention by heads. Measured for one-token steps over ~380 cached tokens: a
/// width-128 4-layer model 57 → 35 µs per token, width 64 with 2 layers (~250k multiply-adds)
/// 14.8 → 11.4 µs.
const FUSED_SPLIT_HEADS_MIN_MACS: usize = 1 << 17;

/// Multiply-adds of a fused step with several rows from which it runs on two threads when the
/// attention cannot split by heads (rows split between the threads instead).
const FUSED_SPLIT_MIN_MACS: usize = 1 << 21;

/// Multiply-adds and tokens of a one-row step from which its tokens are split over two threads
/// (one synchronisation per layer instead of one per step: it takes more work to pay). Measured
/// on a 2-layer width-64 model: 128-token prompts 1.0–1.3× faster split, 256 tokens 1.2–1.4×,
/// 512 tokens 1.6×; a 10-token compression block of a 4-layer width-128 model over ~700 cached
/// tokens 270 → 213 µs split (on libtorch's OpenMP worker; with a thread of our own it was
/// slower split).
const FUSED_SPLIT_TOKENS_MIN_MACS: usize = 12 << 20;
const FUSED_SPLIT_MIN_TOKENS: usize = 8;

/// The shared inputs of one fused decode step ([`Model::forward_fused`]).
struct FusedStep<'a> {
    /// New tokens per row.
    t: usize,
    /// RoPE tables, `head_dim` values per row.
    cos: &'a [f32],
    sin: &'a [f32],
    /// Each row's cache length before the step (= the slot its new K/V go to).
    lens: &'a [usize],
    kv: &'a [(KvLayout, KvLayout)],
    /// Additive mask, `keys` values per query token.
    mask: Option<&'a [f32]>,
    keys: usize,
    logits: Logits,
    /// Round like HF's bf16 forward.
    bf16: bool,
}

/// A weight as a raw f32 slice (pointer + length) into a tensor the [`Model`] owns.
#[derive(Clone, Copy, Debug)]
struct RawSlice {
    ptr: *const f32,
    len: usize,
}

// SAFETY: points into tensors owned by the model, which outlives every use (`FusedWeights` is
// stored in the model and dropped/reset with it); the fused step only reads through it
unsafe impl Send for RawSlice {}
unsafe impl Sync for RawSlice {}

/// A packed projection weight ([`crate::gemm::Packed`]) as a raw pointer into a copy the
/// [`FusedWeights`] own: f32 panels, or bf16 pair panels (bf16 models where
/// [`crate::gemm::bf16_dot`]).
#[derive(Clone, Copy, Debug)]
struct RawPacked {
    ptr: *const u8,
    /// Elements (f32 or u32 words).
    len: usize,
    bf16: bool,
}

// SAFETY: as `RawSlice`
unsafe impl Send for RawPacked {}
unsafe impl Sync for RawPacked {}

impl RawPacked {
    fn get(&self) -> crate::gemm::Packed<'_> {
        // SAFETY: made from a live owned buffer of `len` elements of the recorded type
        unsafe {
            if self.bf16 {
                crate::gemm::Packed::Bf16(std::slice::from_raw_parts(
                    self.ptr as *const u32,
                    self.len,
                ))
            } else {
                crate::gemm::Packed::F32(std::slice::from_raw_parts(
                    self.ptr as *const f32,
                    self.len,
                ))
            }
        }
    }
}

/// The bias slice of a (weight, bias) pair.
fn bias(l: &(RawPacked, Option<RawSlice>)) -> Option<&[f32]> {
    l.1.as_ref().map(RawSlice::get)
}

impl RawSlice {
    /// `t` must be a dense f32 CPU tensor.
    fn of(t: &Tensor) -> Self {
        RawSlice {
            ptr: t.data_ptr() as *const f32,
            len: t.numel(),
        }
    }
    fn get(&self) -> &[f32] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: see the type's Send/Sync note; made from a live dense tensor of `len` floats
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// One layer's weights for the fused step: (weight, bias) per projection.
#[derive(Debug)]
struct FusedLayer {
    ln1: RawSlice,
    eps1: f32,
    ln2: RawSlice,
    eps2: f32,
    /// q | k | v stacked: one product per token, `heads·d + 2·kv_heads·d` outputs.
    qkv: (RawPacked, Option<RawSlice>),
    o: (RawPacked, Option<RawSlice>),
    gate: (RawPacked, Option<RawSlice>),
    up: (RawPacked, Option<RawSlice>),
    down: (RawPacked, Option<RawSlice>),
}

/// The model's weights as raw slices for the fused step ([`Model::forward_fused`]): the
/// projections and the lm_head as packed copies held here (f32 panels, or bf16 pair panels for a
/// bf16 model where [`crate::gemm::bf16_dot`]), norms and the embedding in place (f32) or
/// widened once (bf16).
#[derive(Debug)]
struct FusedWeights {
    embed: RawSlice,
    norm: RawSlice,
    norm_eps: f32,
    head: RawPacked,
    layers: Vec<FusedLayer>,
    /// The copies the slices point into.
    owned: Vec<Vec<f32>>,
    /// The bf16 pair panels the packed weights point into.
    owned16: Vec<Vec<u32>>,
}

/// Makes [`RawSlice`]s of dense CPU weights (bf16 ones widened) and [`RawPacked`] projections
/// (owned packed copies).
#[derive(Default)]
struct Widen {
    owned: Vec<Vec<f32>>,
    owned16: Vec<Vec<u32>>,
}

impl Widen {
    fn slice(&mut self, t: &Tensor) -> Option<RawSlice> {
        if t.device() != Device::Cpu {
            return None;
        }
        match t.kind() {
            Kind::Float if t.is_contiguous() => Some(RawSlice::of(t)),
            Kind::BFloat16 => {
                let v = Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).ok()?;
                Some(self.keep(v))
            }
            _ => None,
        }
    }

    /// A projection: its weight packed ([`Widen::packed`], an owned copy) and its
    /// bias.
    fn linear(&mut self, l: &Linear) -> Option<(RawPacked, Option<RawSlice>)> {
        let b = match &l.b {
            Some(b) => Some(self.slice(b)?),
            None => None,
        };
        Some((self.packed(&l.w)?, b))
    }

    /// Several projections of the same input stacked along their outputs
    /// ([`stack_linears`]): the transposed weight and an owned copy of the bias.
    fn stacked(&mut self, parts: &[&Linear]) -> Option<(RawPacked, Option<RawSlice>)> {
        let (w, b) = stack_linears(parts);
        let b = match b {
            Some(b) => Some(self.keep(Vec::<f32>::try_from(b.to_kind(Kind::Float)).ok()?)),
            None => None,
        };
        Some((self.packed(&w)?, b))
    }

    /// Hold `v` for the life of the weights and point at it (moving the Vec does not move its
    /// heap buffer).
    fn keep(&mut self, v: Vec<f32>) -> RawSlice {
        let r = RawSlice {
            ptr: v.as_ptr(),
            len: v.len(),
        };
        self.owned.push(v);
        r
    }

    /// A weight packed for [`crate::gemm::linear_t_cols`]: paired bf16 panels for a bf16 weight
    /// where [`crate::gemm::bf16_dot`] (half the bytes streamed per step), else f32 panels.
    fn packed(&mut self, w: &Tensor) -> Option<RawPacked> {
        let (n, k) = w.size2().ok()?;
        if w.device() != Device::Cpu || !matches!(w.kind(), Kind::Float | Kind::BFloat16) {
            return None;
        }
        let dense = Vec::<f32>::try_from(w.to_kind(Kind::Float).contiguous().reshape([-1])).ok()?;
        let (n, k) = (n as usize, k as usize);
        if w.kind() == Kind::BFloat16 && crate::gemm::bf16_dot() {
            let (buf, off) = on_cache_line(&crate::gemm::pack_bf16(&dense, n, k));
            let r = RawPacked {
                ptr: buf[off..].as_ptr() as *const u8,
                len: buf.len() - 16,
                bf16: true,
            };
            self.owned16.push(buf);
            return Some(r);
        }
        let (buf, off) = on_cache_line(&crate::gemm::pack(&dense, n, k));
        let r = RawPacked {
            ptr: buf[off..].as_ptr() as *const u8,
            len: buf.len() - 16,
            bf16: false,
        };
        self.owned.push(buf);
        Some(r)
    }
}

/// A copy of `v` (4-byte elements) starting on a cache line at the returned offset, so that each
/// 16-element panel row of a packed weight is one line, never split over two; 16 elements longer.
fn on_cache_line<T: Copy + Default>(v: &[T]) -> (Vec<T>, usize) {
    let mut buf = vec![T::default(); v.len() + 16];
    let off = buf.as_ptr().align_offset(64).min(16);
    buf[off..off + v.len()].copy_from_slice(v);
    (buf, off)
}

/// An activation buffer of a [`TeamStep`] shared by its members: between two barriers each
/// member writes only its own part (columns of rows, or rows) and reads only what no one writes.
#[derive(Clone, Copy)]
struct Shared {
    ptr: *mut f32,
    len: usize,
    /// Floats from one row to the next.
    ld: usize,
}

// SAFETY: members access disjoint parts between barriers (see `TeamStep`)
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Rows of `v`, `ld` floats apart.
    fn of(v: &mut [f32], ld: usize) -> Self {
        Shared {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            ld,
        }
    }

    /// All of it, to read.
    ///
    /// # Safety
    /// No member writes any of it until the reference is dropped.
    unsafe fn all<'b>(&self) -> &'b [f32] {
        std::slice::from_raw_parts(self.ptr, self.len)
    }

    /// Columns `cols` of row `r`, to write.
    ///
    /// # Safety
    /// In bounds, and no one else accesses them until the reference is dropped.
    #[allow(clippy::mut_from_ref)]
    unsafe fn cols<'b>(&self, r: usize, cols: std::ops::Range<usize>) -> &'b mut [f32] {
        debug_assert!(cols.start <= cols.end && r * self.ld + cols.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld + cols.start), cols.len())
    }
}

/// An f32 buffer starting on a cache line (two members' parts of a row split on a 16-float
/// boundary then never share a line), reused from step to step: [`LineBuf::take`] grows it when
/// needed and leaves old contents otherwise (every step writes what it reads).
#[derive(Default)]
struct LineBuf {
    v: Vec<f32>,
    off: usize,
}

impl LineBuf {
    /// The first `len` floats.
    fn take(&mut self, len: usize) -> &mut [f32] {
        if self.v.len() < self.off + len {
            self.v = vec![0f32; len + 16];
            self.off = self.v.as_ptr().align_offset(64).min(16);
        }
        &mut self.v[self.off..self.off + len]
    }

    fn shared(&mut self, len: usize, ld: usize) -> Shared {
        Shared::of(self.take(len), ld)
    }
}

/// A fused step's buffers ([`Model::forward_fused`]): the shared activations and each team
/// member's own (normalised rows, attention scores).
#[derive(Default)]
struct StepScratch {
    x: LineBuf,
    qkv: LineBuf,
    y: LineBuf,
    gate: LineBuf,
    up: LineBuf,
    act: LineBuf,
    tmp: LineBuf,
    /// Both halves of the o- and down-projections' partial sums ([`TeamStep::run_heads`]).
    part_o: LineBuf,
    part_d: LineBuf,
    members: [MemberScratch; 2],
}

impl std::fmt::Debug for StepScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepScratch")
    }
}

#[derive(Default)]
struct MemberScratch {
    xn: Vec<f32>,
    scores: Vec<f32>,
    /// Private activations of a [`TeamStep::run_heads`] member (only its own columns written).
    x: Vec<f32>,
    qkv: Vec<f32>,
    y: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// The members' own buffers as seen by a [`TeamStep`]: member `i` touches only `[i]`.
#[derive(Clone, Copy)]
struct MemberBufs(*mut MemberScratch);

// SAFETY: each member dereferences only its own element (see `TeamStep::run`)
unsafe impl Send for MemberBufs {}
unsafe impl Sync for MemberBufs {}

/// One fused step (every token `f` of the step: token `f % t` of row `f / t`) run by a team of
/// one or two ([`crate::pair::team`]); each member streams half of each weight matrix, for all
/// rows at once. When the kv heads halve ([`TeamStep::run_heads`]), member `i` owns kv-head half
/// `i` (q / k / v, cache entries, attention) and MLP-column half `i`, and the o- and
/// down-projections are split by their inputs into two partial sums that both members add to
/// their own copies of the residual stream: 2 barriers per layer. Otherwise
/// ([`TeamStep::run_tokens`]) the products are split by output columns and the attention by
/// tokens (whole rows where possible): 4 barriers per layer (5 or 6 with a row split). The
/// RMSNorms are computed by both members for all rows (cheaper than a barrier). Every value is
/// computed the same way whatever the team size, so the result does not depend on it (and a
/// row of a batch gets the bits it gets alone).
///
/// bf16 models round to bf16 wherever HF's bf16 forward produces a bf16 tensor (after every
/// projection, norm, RoPE product, activation and residual add; K/V stored as bf16); attention
/// itself runs in f32 like libtorch's CPU SDPA.
struct TeamStep<'a> {
    cfg: &'a ModelConfig,
    w: &'a FusedWeights,
    st: &'a FusedStep<'a>,
    /// Tokens of the step (`rows × t`).
    n: usize,
    /// Residual stream `[n, hidden]`.
    x: Shared,
    /// q | k | v per token (`heads·d + 2·kv_heads·d`).
    qkv: Shared,
    /// Attention output `[n, heads·d]`.
    y: Shared,
    /// MLP gate and up projections `[n, intermediate]`.
    gate: Shared,
    up: Shared,
    act: Shared,
    /// bf16 residuals: the rounded projection before the add.
    tmp: Shared,
    /// The step's output (logits or hidden states).
    out: Shared,
    /// `[n, 2 · hp]`: the two halves' partial o- / down-projections (`hp`: hidden size
    /// padded to 16), [`TeamStep::run_heads`].
    part_o: Shared,
    part_d: Shared,
    /// The attention is split by kv heads; else by tokens, member 0 taking `..cut`.
    by_heads: bool,
    cut: usize,
    /// Each member's own buffers (two).
    members: MemberBufs,
}

impl TeamStep<'_> {
    fn norm(&self, x: &[f32], wt: &[f32], eps: f32, out: &mut [f32]) {
        let h = self.cfg.hidden_size;
        if self.st.bf16 {
            crate::fused::rms_norm_bf16(x, h, wt, eps, out)
        } else {
            crate::fused::rms_norm(x, h, wt, eps, out)
        }
    }

    /// Columns `cols` of `out = x Wᵀ + b` (`m` rows of `k`, `ldx` apart; `out` `width` wide),
    /// rounded for bf16 models.
    ///
    /// # Safety
    /// No one else accesses columns `cols` of `out` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        x: &[f32],
        ldx: usize,
        m: usize,
        k: usize,
        l: &(RawPacked, Option<RawSlice>),
        out: Shared,
        width: usize,
        cols: std::ops::Range<usize>,
    ) {
        let (w, b) = (l.0.get(), bias(l));
        crate::gemm::linear_t_cols(
            x,
            ldx,
            m,
            k,
            w,
            width,
            b,
            out.ptr,
            out.ld,
            false,
            cols.clone(),
        );
        if self.st.bf16 {
            for r in 0..m {
                crate::fused::round_bf16(out.cols(r, cols.clone()));
            }
        }
    }

    /// Columns `cols` of the residual stream: `x += input Wᵀ + b` (`input`: `n` rows of `k`);
    /// bf16 like HF: the projection rounded, then the sum rounded.
    ///
    /// # Safety
    /// No one else accesses columns `cols` of `x` (and `tmp`) meanwhile.
    unsafe fn residual(
        &self,
        input: Shared,
        k: usize,
        l: &(RawPacked, Option<RawSlice>),
        cols: std::ops::Range<usize>,
    ) {
        let (n, h) = (self.n, self.cfg.hidden_size);
        let (x_in, ld) = (input.all(), input.ld);
        if self.st.bf16 {
            self.product(x_in, ld, n, k, l, self.tmp, h, cols.clone());
            for r in 0..n {
                let x = self.x.cols(r, cols.clone());
                for (a, b) in x.iter_mut().zip(self.tmp.cols(r, cols.clone()).iter()) {
                    *a += b;
                }
                crate::fused::round_bf16(x);
            }
        } else {
            let (w, b) = (l.0.get(), bias(l));
            crate::gemm::linear_t_cols(x_in, ld, n, k, w, h, b, self.x.ptr, self.x.ld, true, cols);
        }
    }

    /// Member `m`'s share of the whole step (a team of one: all of it).
    fn run(&self, m: &crate::pair::Member<'_>) {
        if self.by_heads {
            self.run_heads(m)
        } else {
            self.run_tokens(m)
        }
    }

    /// RoPE on the q and k heads of kv heads `heads` for the step's tokens `toks` (rows of
    /// `qkv`), and their K/V into layer `li`'s cache at each row's next slots.
    ///
    /// # Safety
    /// No one else accesses those columns of `qkv` or those cache slots meanwhile.
    unsafe fn rope_and_store(
        &self,
        li: usize,
        qkv: Shared,
        toks: std::ops::Range<usize>,
        heads: std::ops::Range<usize>,
    ) {
        use crate::fused::{rope, rope_bf16};
        let (st, t, d) = (self.st, self.st.t, self.cfg.head_dim());
        let (kvh, g) = (
            self.cfg.kv_heads(),
            self.cfg.num_attention_heads / self.cfg.kv_heads(),
        );
        let (qd, kvd) = (kvh * g * d, kvh * d);
        let (hq, hk) = (
            heads.start * g * d..heads.end * g * d,
            heads.start * d..heads.end * d,
        );
        let (kl, vl) = st.kv[li];
        for f in toks {
            let (row, i) = (f / t, f % t);
            let (c, s) = (&st.cos[f * d..(f + 1) * d], &st.sin[f * d..(f + 1) * d]);
            let rot = |x: &mut [f32]| {
                if st.bf16 {
                    rope_bf16(x, c, s)
                } else {
                    rope(x, c, s)
                }
            };
            qkv.cols(f, hq.clone()).chunks_exact_mut(d).for_each(rot);
            let k = qkv.cols(f, qd + hk.start..qd + hk.end);
            let v = qkv.cols(f, qd + kvd + hk.start..qd + kvd + hk.end);
            for (gk, (kh, vh)) in heads
                .clone()
                .zip(k.chunks_exact_mut(d).zip(v.chunks_exact(d)))
            {
                rot(kh);
                // in bounds: row < batch, gk < kv_heads, slot < lens + t <= capacity
                // (checked when the layouts were taken)
                let slot = st.lens[row] + i;
                kl.write(row, gk, slot, kh);
                vl.write(row, gk, slot, vh);
            }
        }
    }

    /// Attention of the step's tokens `toks` for kv heads `heads` over layer `li`'s cache:
    /// their queries in `qkv`, their outputs into the same columns of `y` (bf16 models: rounded).
    ///
    /// # Safety
    /// The K/V these tokens see are written; no one else accesses those columns of `qkv` / `y`.
    unsafe fn attend_heads(
        &self,
        li: usize,
        qkv: Shared,
        y: Shared,
        toks: std::ops::Range<usize>,
        heads: std::ops::Range<usize>,
        scores: &mut Vec<f32>,
    ) {
        let (st, t, d) = (self.st, self.st.t, self.cfg.head_dim());
        let g = self.cfg.num_attention_heads / self.cfg.kv_heads();
        let kern = crate::fused::Kern::best(d);
        let scale = 1.0 / (d as f32).sqrt();
        let (kl, vl) = st.kv[li];
        for f in toks {
            let (row, i) = (f / t, f % t);
            let (len, mask) = match st.mask {
                Some(mk) => {
                    let len = st.lens[row] + t;
                    let at = f * st.keys;
                    (len, Some(&mk[at..at + len]))
                }
                None => (st.lens[row] + i + 1, None),
            };
            for gk in heads.clone() {
                let yh = y.cols(f, gk * g * d..(gk + 1) * g * d);
                crate::fused::attend_one(
                    kern,
                    qkv.cols(f, gk * g * d..(gk + 1) * g * d),
                    g,
                    d,
                    kl.at(row, gk, 0),
                    vl.at(row, gk, 0),
                    kl.elem,
                    kl.slot,
                    len,
                    mask,
                    scale,
                    scores,
                    yh,
                );
                if st.bf16 {
                    crate::fused::round_bf16(yh);
                }
            }
        }
    }

    /// `x += inp · Wᵀ (+ b)` for the layer's projection `l`, its inputs split between the halves:
    /// this member computes, for each of its halves `p` (`mine`), the partial product over the
    /// input columns `inputs(p)` of `inp` (`n` rows `ldx` apart, `k` inputs; the bias with half 0)
    /// into half `p` of `part`, waits for the other member, and adds both halves
    /// ([`TeamStep::add_halves`]).
    ///
    /// # Safety
    /// Every member calls it at the same point; the halves `mine` of `part` are this member's
    /// alone until the barrier, and no one writes `part` again before the next one.
    #[allow(clippy::too_many_arguments)]
    unsafe fn add_split_product(
        &self,
        m: &crate::pair::Member<'_>,
        x: &mut [f32],
        inp: &[f32],
        ldx: usize,
        k: usize,
        l: &(RawPacked, Option<RawSlice>),
        part: Shared,
        mine: &[usize],
        inputs: impl Fn(usize) -> std::ops::Range<usize>,
    ) {
        let (w, b, h) = (l.0.get(), bias(l), self.cfg.hidden_size);
        for &p in mine {
            crate::gemm::linear_t_part(
                inp,
                ldx,
                self.n,
                inputs(p),
                k,
                w,
                h,
                b.filter(|_| p == 0),
                part.ptr.add(p * part.ld / 2),
                part.ld,
                false,
                0..h,
            );
        }
        m.sync();
        self.add_halves(x, part.all());
    }

    /// `x += round(half 0 + half 1)` of a partial product `p` (`n` rows of two halves `hp`
    /// apart), in the same order on both members (their copies of `x` stay identical).
    fn add_halves(&self, x: &mut [f32], p: &[f32]) {
        let (h, ld) = (self.cfg.hidden_size, self.part_o.ld);
        let hp = ld / 2;
        for (xr, pr) in x.chunks_exact_mut(h).zip(p.chunks(ld)) {
            let (p0, p1) = (&pr[..h], &pr[hp..hp + h]);
            if self.st.bf16 {
                for ((v, a), b) in xr.iter_mut().zip(p0).zip(p1) {
                    *v = crate::fused::to_bf16(*v + crate::fused::to_bf16(a + b));
                }
            } else {
                for ((v, a), b) in xr.iter_mut().zip(p0).zip(p1) {
                    *v += a + b;
                }
            }
        }
    }

    /// [`TeamStep::run`] for a model whose kv heads split evenly in two (`by_heads`). Each member
    /// keeps its own copy of the residual stream and its own activations; member `i` computes
    /// the q / k / v, RoPE, cache entries and attention of kv-head half `i`, the o-projection
    /// over those heads' outputs only (a partial sum over half of its inputs, for every output
    /// column), then the MLP columns of half `i` and the down-projection over them (again a
    /// partial sum). Both members add the two partial sums into their residual streams in the
    /// same order: **two barriers per layer** (after each partial product) instead of four, none
    /// before the logits. A team of one computes both halves the same way, so the result does
    /// not depend on the team.
    fn run_heads(&self, m: &crate::pair::Member<'_>) {
        use crate::fused::silu_mul_rounded;
        use crate::pair::half;
        let (cfg, st, n) = (self.cfg, self.st, self.n);
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (heads, kvh, d) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let g = heads / kvh;
        let (qd, kvd) = (heads * d, kvh * d);
        let qkv_w = qd + 2 * kvd;
        let ild = self.act.ld;
        // this member's halves: its own one, or both for a team of one
        let mine: &[usize] = match (m.count > 1, m.index) {
            (false, _) => &[0, 1],
            (true, 0) => &[0],
            (true, _) => &[1],
        };
        let span = |len: usize, align: usize| {
            half(len, align, mine[0]).start..half(len, align, mine[mine.len() - 1]).end
        };
        let (my_heads, my_cols) = (span(kvh, 1), span(inter, 16));
        let (hq, hk) = (
            my_heads.start * g * d..my_heads.end * g * d,
            my_heads.start * d..my_heads.end * d,
        );
        // SAFETY: member `m.index` (0 or 1) is the only one touching its element
        let own = unsafe { &mut *self.members.0.add(m.index) };
        for (v, len) in [
            (&mut own.xn, n * h),
            (&mut own.x, n * h),
            (&mut own.qkv, n * qkv_w),
            (&mut own.y, n * qd),
            (&mut own.gate, n * ild),
            (&mut own.up, n * ild),
            (&mut own.act, n * ild),
        ] {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        }
        // the embedded tokens (read-only during the step)
        // SAFETY: filled before the team started, written by no one meanwhile
        own.x[..n * h].copy_from_slice(unsafe { &self.x.all()[..n * h] });
        let x = &mut own.x[..n * h];
        let xn = &mut own.xn[..n * h];
        let scores = &mut own.scores;
        let qkv = Shared::of(&mut own.qkv[..n * qkv_w], qkv_w);
        let y = Shared::of(&mut own.y[..n * qd], qd);
        let (gate, up, act) = (
            Shared::of(&mut own.gate[..n * ild], ild),
            Shared::of(&mut own.up[..n * ild], ild),
            Shared::of(&mut own.act[..n * ild], ild),
        );
        // SAFETY: the private buffers are this member's alone; of `part_o` / `part_d` each
        // member writes its halves' columns before a barrier and both read all of them after it
        // (the next write to a half comes after the following barrier)
        unsafe {
            for (li, lw) in self.w.layers.iter().enumerate() {
                self.norm(x, lw.ln1.get(), lw.eps1, xn);
                for c in [
                    hq.clone(),
                    qd + hk.start..qd + hk.end,
                    qd + kvd + hk.start..qd + kvd + hk.end,
                ] {
                    self.product(xn, h, n, h, &lw.qkv, qkv, qkv_w, c);
                }
                // RoPE and the new K/V into the cache: own heads of every token
                self.rope_and_store(li, qkv, 0..n, my_heads.clone());
                // attention: own heads of every token
                self.attend_heads(li, qkv, y, 0..n, my_heads.clone(), scores);
                // o-projection over each own half's heads, for every output column
                self.add_split_product(m, x, y.all(), qd, qd, &lw.o, self.part_o, mine, |p| {
                    let hs = half(kvh, 1, p);
                    hs.start * g * d..hs.end * g * d
                });
                // MLP: own columns of gate / up / SiLU(gate)·up, the down-projection over them
                self.norm(x, lw.ln2.get(), lw.eps2, xn);
                self.product(xn, h, n, h, &lw.gate, gate, inter, my_cols.clone());
                self.product(xn, h, n, h, &lw.up, up, inter, my_cols.clone());
                for r in 0..n {
                    silu_mul_rounded(
                        gate.cols(r, my_cols.clone()),
                        up.cols(r, my_cols.clone()),
                        act.cols(r, my_cols.clone()),
                        st.bf16,
                    );
                }
                self.add_split_product(
                    m,
                    x,
                    act.all(),
                    ild,
                    inter,
                    &lw.down,
                    self.part_d,
                    mine,
                    |p| half(inter, 16, p),
                );
            }
            self.finish(m, x, xn);
        }
    }

    /// [`TeamStep::run`] split by tokens (kv heads that do not halve): shared activations, the
    /// products split by output columns, four or more barriers per layer.
    fn run_tokens(&self, m: &crate::pair::Member<'_>) {
        use crate::fused::silu_mul_rounded;
        let (cfg, st, n) = (self.cfg, self.st, self.n);
        let (h, t, inter) = (cfg.hidden_size, st.t, cfg.intermediate_size);
        let (qd, kvd) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.kv_heads() * cfg.head_dim(),
        );
        let (qkv_w, all_heads) = (qd + 2 * kvd, 0..cfg.kv_heads());
        let two = m.count > 1;
        let my_toks = match (two, m.index) {
            (false, _) => 0..n,
            (true, 0) => 0..self.cut,
            (true, _) => self.cut..n,
        };
        // a row whose tokens both members attend for: its K/V must be complete first
        let split_row = two && !self.cut.is_multiple_of(t);
        // SAFETY: member `m.index` (0 or 1) is the only one touching its element
        let own = unsafe { &mut *self.members.0.add(m.index) };
        own.xn.resize(n * h, 0.0);
        let (xn, scores) = (&mut own.xn[..n * h], &mut own.scores);
        // SAFETY (every `Shared` access below): the parts named in each comment are this
        // member's alone between the barriers around them; reads of a whole buffer come after
        // the barrier that completes it and before anyone writes it again
        unsafe {
            for (li, lw) in self.w.layers.iter().enumerate() {
                // q / k / v: this member's half of the columns
                self.norm(self.x.all(), lw.ln1.get(), lw.eps1, xn);
                let c = if two { m.part(qkv_w, 16) } else { 0..qkv_w };
                self.product(xn, h, n, h, &lw.qkv, self.qkv, qkv_w, c);
                if two {
                    m.sync();
                }
                // RoPE and the new K/V into the cache: own tokens
                self.rope_and_store(li, self.qkv, my_toks.clone(), all_heads.clone());
                if split_row {
                    m.sync();
                }
                // attention: own tokens, into their columns of y
                self.attend_heads(
                    li,
                    self.qkv,
                    self.y,
                    my_toks.clone(),
                    all_heads.clone(),
                    scores,
                );
                m.sync();
                // o-projection + residual: own columns of x
                self.residual(self.y, qd, &lw.o, m.part(h, 16));
                m.sync();
                // MLP first half: own columns of gate and of up, SiLU(gate)·up
                self.norm(self.x.all(), lw.ln2.get(), lw.eps2, xn);
                let gc = m.part(inter, 16);
                self.product(xn, h, n, h, &lw.gate, self.gate, inter, gc.clone());
                self.product(xn, h, n, h, &lw.up, self.up, inter, gc.clone());
                for r in 0..n {
                    let gate = self.gate.cols(r, gc.clone());
                    let up = self.up.cols(r, gc.clone());
                    silu_mul_rounded(gate, up, self.act.cols(r, gc.clone()), st.bf16);
                }
                m.sync();
                // down-projection + residual: own columns of x
                self.residual(self.act, inter, &lw.down, m.part(h, 16));
                m.sync();
            }
            self.finish(m, self.x.all(), xn);
        }
    }

    /// The final norm and the asked output: hidden states (own rows), or logits (own columns
    /// of the vocabulary) of every token or of each row's last one.
    ///
    /// # Safety
    /// After the last layer (and its barrier when `x` is shared).
    unsafe fn finish(&self, m: &crate::pair::Member<'_>, x: &[f32], xn: &mut [f32]) {
        let (h, t, vocab, n) = (self.cfg.hidden_size, self.st.t, self.cfg.vocab_size, self.n);
        let (norm, eps) = (self.w.norm.get(), self.w.norm_eps);
        let cols = m.part(vocab, 16);
        match self.st.logits {
            Logits::None => {
                let rows = m.part(n, 1);
                // rows `rows` (each `h` wide) as one run of floats
                let out = self.out.cols(rows.start, 0..rows.len() * h);
                self.norm(&x[rows.start * h..rows.end * h], norm, eps, out);
            }
            Logits::All => {
                self.norm(x, norm, eps, xn);
                let head = self.w.head.get();
                crate::gemm::linear_t_cols(
                    xn,
                    h,
                    n,
                    h,
                    head,
                    vocab,
                    None,
                    self.out.ptr,
                    vocab,
                    false,
                    cols,
                );
            }
            Logits::Last => {
                let b = n / t;
                let last: Vec<f32> = (0..b)
                    .flat_map(|r| x[(r * t + t - 1) * h..(r * t + t) * h].iter().copied())
                    .collect();
                self.norm(&last, norm, eps, &mut xn[..b * h]);
                let head = self.w.head.get();
                crate::gemm::linear_t_cols(
                    &xn[..b * h],
                    h,
                    b,
                    h,
                    head,
                    vocab,
                    None,
                    self.out.ptr,
                    vocab,
                    false,
                    cols,
                );
            }
        }
    }
}

/// Attention of `q` `[B, H, T, D]` over `k`, `v` `[B, KV, L, D]` (RoPE applied, cache included):
/// SDPA (fused `is_causal` when asked, the mask otherwise), or the explicit eager form for
/// one-query CPU steps where that is faster ([`eager_is_faster`]). Returns `[B, H, T, D]`.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    is_causal: bool,
    kv_heads: i64,
    infer: bool,
) -> Result<Tensor, ModelError> {
    let (b, h, t, d) = q.size4()?;
    let keys = k.size().get(2).copied().unwrap_or(0);
    if t > 1 && infer && mask.is_none() {
        if let Some(y) = attend_cpu(q, k, v, is_causal, kv_heads) {
            return Ok(y);
        }
    }
    if t == 1 && infer && q.device() == Device::Cpu && eager_is_faster(q.kind(), b * h, keys, d) {
        return eager_attention(q, k, v, mask, kv_heads);
    }
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        mask,
        0.0,
        is_causal,
        None::<f64>,
        h != kv_heads,
    )?)
}

/// Unmasked multi-token attention (a prefill) on the CPU through the fused step's kernels
/// ([`crate::fused::attend_one`], f32 arithmetic, K/V read in place from the cache), split over
/// two threads by (row, kv head) pairs, else by tokens: at a 128-token prompt of the
/// Qwen2.5-0.5B shape in bf16, libtorch's flash SDPA (bf16 → f32 conversions around MKL's sgemm)
/// took ~8 % of the prefill. `None` where the kernels do not apply (not a CPU f32 / bf16
/// tensor, no vector kernel for the head dim, a K/V row not dense, K and V slots apart
/// differently as without a cache). Returns `[B, H, T, D]`.
fn attend_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    is_causal: bool,
    kv_heads: i64,
) -> Option<Tensor> {
    use crate::fused::{attend_one, Kern, KvElem, KvLayout};
    let (b, h, t, d) = q.size4().ok()?;
    let (kind, keys) = (q.kind(), k.size()[2]);
    let kern = Kern::best(d as usize);
    let dense = |x: &Tensor| x.kind() == kind && x.dim() == 4 && x.stride()[3] == 1;
    if q.device() != Device::Cpu
        || !matches!(kind, Kind::Float | Kind::BFloat16)
        || kern == Kern::Scalar
        || !dense(k)
        || !dense(v)
        || k.stride()[2] != v.stride()[2] // the kernels step K and V by one slot stride
        || kv_heads <= 0
        || h % kv_heads != 0
        || (is_causal && keys < t)
    {
        return None;
    }
    let layout = |x: &Tensor| {
        let st = x.stride();
        KvLayout {
            base: x.data_ptr() as *mut u8,
            elem: if kind == Kind::BFloat16 {
                KvElem::Bf16
            } else {
                KvElem::F32
            },
            row: st[0] as isize,
            head: st[1] as isize,
            slot: st[2] as isize,
        }
    };
    let (kl, vl) = (layout(k), layout(v));
    // queries as f32 `[B, T, H, D]`: a token's query heads of one kv head are contiguous
    let qf = q.transpose(1, 2).to_kind(Kind::Float).contiguous();
    let y = Tensor::empty([b, t, h, d], (Kind::Float, Device::Cpu));
    let (b, h, t, d, kvh) = (
        b as usize,
        h as usize,
        t as usize,
        d as usize,
        kv_heads as usize,
    );
    let g = h / kvh;
    let scale = 1.0 / (d as f32).sqrt();
    // SAFETY: contiguous f32 tensors of these sizes, alive until the end of this function
    let qs = unsafe { std::slice::from_raw_parts(qf.data_ptr() as *const f32, b * t * h * d) };
    let ys = Shared::of(
        unsafe { std::slice::from_raw_parts_mut(y.data_ptr() as *mut f32, b * t * h * d) },
        h * d,
    );
    // query i sees the keys up to its own (causal: the T new ones are the last T) or all
    let len = |i: usize| {
        if is_causal {
            keys as usize - t + i + 1
        } else {
            keys as usize
        }
    };
    let pairs = b * kvh;
    let work = |m: &crate::pair::Member<'_>| {
        let mut scores = Vec::new();
        let (mine, toks) = if pairs >= 2 {
            (m.part(pairs, 1), 0..t)
        } else {
            // one (row, kv head): tokens cut where the causal work halves
            let total: usize = (0..t).map(len).sum();
            let (mut acc, mut cut) = (0, 0);
            while cut < t && 2 * (acc + len(cut)) <= total {
                acc += len(cut);
                cut += 1;
            }
            let toks = if m.count < 2 {
                0..t
            } else if m.index == 0 {
                0..cut
            } else {
                cut..t
            };
            (0..pairs, toks)
        };
        for p in mine {
            let (row, gk) = (p / kvh, p % kvh);
            for i in toks.clone() {
                let f = row * t + i;
                let at = (f * h + gk * g) * d;
                // SAFETY: row < B, gk < KV, slots < keys (the tensors' sizes); each (token,
                // head group) of `y` is written by one member only
                unsafe {
                    attend_one(
                        kern,
                        &qs[at..at + g * d],
                        g,
                        d,
                        kl.at(row, gk, 0),
                        vl.at(row, gk, 0),
                        kl.elem,
                        kl.slot,
                        len(i),
                        None,
                        scale,
                        &mut scores,
                        ys.cols(f, gk * g * d..(gk + 1) * g * d),
                    );
                }
            }
        }
    };
    crate::pair::team(work);
    // bf16: rounded to nearest like SDPA's bf16 output
    let y = if kind == Kind::BFloat16 {
        y.to_kind(kind)
    } else {
        y
    };
    Some(y.transpose(1, 2))
}

/// Whether a one-query attention step is faster as explicit matmul + softmax + matmul than
/// through libtorch's CPU SDPA (whose one-query kernel is slow for long caches, ~8× in bf16 at
/// 4k keys). Thresholds on `batch × heads × keys × head_dim` from a sweep on a 2-core AMD EPYC
/// (docs/model.md). CPU only: CUDA keeps SDPA's kernels.
fn eager_is_faster(kind: Kind, batch_heads: i64, keys: i64, head_dim: i64) -> bool {
    let work = batch_heads * keys * head_dim;
    match kind {
        Kind::BFloat16 | Kind::Half => work >= 128 * 1024,
        _ => work >= 800 * 1024,
    }
}

/// HF "eager" attention for `q` `[B, H, T, D]` against `k`, `v` `[B, KV, L, D]`: scores in the
/// dtype, mask (`[B|1, 1, T, L]`, bool or additive), softmax in f32 cast back, times V. GQA by
/// grouping the query heads of one KV head (no repeated K/V).
fn eager_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    kv_heads: i64,
) -> Result<Tensor, ModelError> {
    let (b, h, t, d) = q.size4()?;
    let l = k.size()[2];
    let g = h / kv_heads;
    let qg = q.reshape([b, kv_heads, g * t, d]);
    let s = qg.matmul(&k.transpose(-1, -2)) * (1.0 / (d as f64).sqrt());
    let s = match mask {
        None => s,
        Some(m) => {
            let mb = m.size()[0];
            let s5 = s.view([b, kv_heads, g, t, l]);
            let m5 = m.view([mb, 1, 1, t, l]);
            let s5 = if m.kind() == Kind::Bool {
                s5.masked_fill(&m5.logical_not(), crate::dtype_min(s.kind()))
            } else {
                s5 + m5
            };
            s5.view([b, kv_heads, g * t, l])
        }
    };
    let p = s.softmax(-1, Kind::Float).to_kind(q.kind());
    Ok(p.matmul(v).view([b, h, t, d]))
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    /// gate|up stacked ([`Model::prepack`]).
    gate_up: Option<FusedLinear>,
}

impl Mlp {
    fn forward(&self, x: &Tensor, infer: bool) -> Tensor {
        if let Some(y) = self
            .gate_up
            .as_ref()
            .filter(|_| infer)
            .and_then(|gu| gu.forward(x))
        {
            let i = y.size().last().copied().unwrap_or(0) / 2;
            return self
                .down
                .forward(&(y.narrow(-1, 0, i).silu() * y.narrow(-1, i, i)), infer);
        }
        self.down.forward(
            &(self.gate.forward(x, infer).silu() * self.up.forward(x, infer)),
            infer,
        )
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    ln1: RmsNorm,
    ln2: RmsNorm,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        inp: &AttnInputs<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        let norm = |n: &RmsNorm, x: &Tensor| {
            if inp.infer {
                n.forward_infer(x)
            } else {
                n.forward(x)
            }
        };
        if inp.infer {
            // residual adds in place into the fresh outputs (no autograd to care about)
            let mut h = self.attn.forward(&norm(&self.ln1, x), inp, cache)?;
            let _ = h.g_add_(x);
            let mut y = self.mlp.forward(&norm(&self.ln2, &h), true);
            let _ = y.g_add_(&h);
            return Ok(y);
        }
        let h = x + self.attn.forward(&norm(&self.ln1, x), inp, cache)?;
        Ok(&h + self.mlp.forward(&norm(&self.ln2, &h), inp.infer))
    }
}

/// A Qwen2 / Llama causal LM on libtorch. Owns its [`nn::VarStore`]; parameter names are the HF
/// names (`model.layers.0.self_attn.q_proj.weight`, ...).
#[derive(Debug)]
pub struct Model {
    pub(crate) vs: nn::VarStore,
    pub(crate) cfg: ModelConfig,
    pub(crate) embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied to `embed`.
    pub(crate) lm_head: Option<Tensor>,
    rope: Rope,
    kind: Kind,
    pub(crate) params: Vec<(String, Tensor)>,
    /// oneDNN-prepacked lm_head ([`Model::prepack`]).
    head_packed: Option<Tensor>,
    prepacked: bool,
    /// The fused step's weights, made by [`Model::prepack`] (`None` inside when the model cannot
    /// take that step); dropped by [`Model::unpack`] and when weights may be replaced.
    fused: std::sync::OnceLock<Option<FusedWeights>>,
    /// [`Model::set_fused_decode`].
    fused_decode: bool,
    /// The fused step's activation buffers, kept from one step to the next (a step that finds
    /// them taken makes its own; with libtorch's tensors not `Sync`, a model is used by one
    /// thread at a time, so that does not happen today).
    scratch: std::sync::Mutex<StepScratch>,
}

struct Builder<'a> {
    root: nn::Path<'a>,
    kind: Kind,
    device: Device,
    params: Vec<(String, Tensor)>,
}

impl Builder<'_> {
    fn var(&mut self, name: &str, dims: &[i64]) -> Tensor {
        // tch paths use '.' as separator: walk the HF name's components
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let path = prefix
            .split('.')
            .filter(|c| !c.is_empty())
            .fold(self.root.clone(), |p, c| p.sub(c));
        let t = path.add(leaf, Tensor::zeros(dims, (self.kind, self.device)), true);
        self.params.push((name.to_string(), t.shallow_clone()));
        t
    }
    fn linear(&mut self, name: &str, inp: i64, out: i64, bias: bool) -> Linear {
        let w = self.var(&format!("{name}.weight"), &[out, inp]);
        let b = bias.then(|| self.var(&format!("{name}.bias"), &[out]));
        Linear { w, b, packed: None }
    }
    fn norm(&mut self, name: &str, dim: i64, eps: f64) -> RmsNorm {
        RmsNorm {
            w: self.var(&format!("{name}.weight"), &[dim]),
            eps,
        }
    }
}

impl Model {
    /// Build the module tree with zero weights (callers fill them).
    pub(crate) fn new_zeroed(
        cfg: &ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let h = cfg.hidden_size as i64;
        let heads = cfg.num_attention_heads as i64;
        let kvh = cfg.kv_heads() as i64;
        let hd = cfg.head_dim() as i64;
        let inter = cfg.intermediate_size as i64;
        let (qkv_b, o_b, mlp_b) = (cfg.qkv_bias(), cfg.o_bias(), cfg.mlp_bias());
        let mut bld = Builder {
            root: vs.root(),
            kind,
            device,
            params: Vec::new(),
        };
        let embed = bld.var("model.embed_tokens.weight", &[cfg.vocab_size as i64, h]);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn = Attention {
                q: bld.linear(&format!("{p}.self_attn.q_proj"), h, heads * hd, qkv_b),
                k: bld.linear(&format!("{p}.self_attn.k_proj"), h, kvh * hd, qkv_b),
                v: bld.linear(&format!("{p}.self_attn.v_proj"), h, kvh * hd, qkv_b),
                o: bld.linear(&format!("{p}.self_attn.o_proj"), heads * hd, h, o_b),
                heads,
                kv_heads: kvh,
                head_dim: hd,
                qkv: None,
            };
            let mlp = Mlp {
                gate: bld.linear(&format!("{p}.mlp.gate_proj"), h, inter, mlp_b),
                up: bld.linear(&format!("{p}.mlp.up_proj"), h, inter, mlp_b),
                down: bld.linear(&format!("{p}.mlp.down_proj"), inter, h, mlp_b),
                gate_up: None,
            };
            let ln1 = bld.norm(&format!("{p}.input_layernorm"), h, cfg.rms_norm_eps);
            let ln2 = bld.norm(
                &format!("{p}.post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            );
            layers.push(DecoderLayer {
                attn,
                mlp,
                ln1,
                ln2,
            });
        }
        let norm = bld.norm("model.norm", h, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| bld.var("lm_head.weight", &[cfg.vocab_size as i64, h]));
        let params = bld.params;
        Ok(Model {
            rope: Rope::new(cfg, device),
            vs,
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            kind,
            params,
            head_packed: None,
            prepacked: false,
            fused: std::sync::OnceLock::new(),
            fused_decode: true,
            scratch: Default::default(),
        })
    }

    /// Load an HF checkpoint directory (`config.json` + `model.safetensors` or a sharded
    /// `model.safetensors.index.json`) into `kind` on `device`.
    ///
    /// Extra tensors in the checkpoint (e.g. the reference's unused `_q_proj` / `special_embed`)
    /// are ignored, as transformers does; a missing or mis-shaped tensor is an error naming it.
    pub fn load(dir: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let model = Self::new_zeroed(&cfg, device, kind)?;
        crate::io::load_weights(&model, dir)?;
        tracing::info!(
            dir = %dir.display(),
            arch = ?cfg.family(),
            params = model.num_parameters(),
            ?kind,
            ?device,
            "loaded model"
        );
        Ok(model)
    }

    /// [`Model::load`] followed by [`Model::prepack`]: what an inference-only user wants (fused
    /// q|k|v and gate|up projections, oneDNN-prepacked weights on CPU).
    pub fn load_for_inference(
        dir: impl AsRef<Path>,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        let mut model = Self::load(dir, device, kind)?;
        model.prepack()?;
        Ok(model)
    }

    /// A seeded random model: weights ~ N(0, initializer_range), biases 0, norms 1 (HF init).
    ///
    /// Draws from libtorch's global generator under a process-wide lock (shared with
    /// [`Model::resize_vocab`]), so concurrent calls in other threads cannot interleave their
    /// draws: one seed gives one model.
    pub fn random(
        cfg: &ModelConfig,
        device: Device,
        kind: Kind,
        seed: i64,
    ) -> Result<Self, ModelError> {
        let model = Self::new_zeroed(cfg, device, kind)?;
        let _rng = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let std = cfg.initializer_range;
        let _g = tch::no_grad_guard();
        for (name, t) in &model.params {
            let mut t = t.shallow_clone();
            if name.ends_with("norm.weight") {
                let _ = t.fill_(1.0);
            } else if name.ends_with(".bias") {
                let _ = t.zero_();
            } else {
                // sample in f32 on CPU for device/dtype-independent weights
                let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * std;
                t.copy_(&r);
            }
        }
        Ok(model)
    }

    /// The configuration (its `vocab_size` follows [`Model::resize_vocab`]).
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    /// Element kind of the weights.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The variable store (e.g. for an optimizer).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    /// Mutable variable store.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        self.fused = std::sync::OnceLock::new();
        &mut self.vs
    }
    /// Trainable tensors with HF names in a deterministic (HF module) order. Tied models have
    /// no `lm_head.weight` entry. The tensors share storage with the model.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }
    /// Total number of parameters (tied weights counted once).
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, t)| t.numel()).sum()
    }
    /// Bytes of the parameters.
    pub fn parameter_bytes(&self) -> usize {
        self.num_parameters() * self.kind.elt_size_in_bytes()
    }
    /// The input embedding matrix `[vocab, hidden]`.
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed
    }
    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Prepare for fast CPU inference: stack q|k|v and gate|up into one projection each and
    /// prepack the matrices (incl. the lm_head; f32 only those ≥ 2¹⁸ elements) into oneDNN's
    /// blocked layout (f32 and bf16, when the loaded libtorch has oneDNN); for small models
    /// (≤ 32M weights) also make the fused CPU step's transposed f32 weights
    /// ([`Model::set_fused_decode`], docs/model.md). A no-op on CUDA. The dense weights are kept
    /// for training and saving, so CPU inference holds the linear weights twice
    /// ([`PrepackStats::bytes`] says how much extra).
    ///
    /// The packed copies are used only while autograd is off (`tch::no_grad`) and are a
    /// snapshot: weights changed afterwards (an optimizer step, [`Model::resize_vocab`], loading
    /// into the var store) are not seen until [`Model::prepack`] runs again ([`Model::resize_vocab`]
    /// drops them itself). `LT_PREPACK=0` makes this a no-op.
    ///
    /// ```no_run
    /// # use lt_model::{Model, ModelConfig, Device, Kind};
    /// let mut model = Model::random(&ModelConfig::tiny_llama(64, 32, 2, 4, 2, 64), Device::Cpu, Kind::Float, 0)?;
    /// let stats = model.prepack()?;
    /// assert_eq!(stats.fused, 4); // q|k|v and gate|up of 2 layers
    /// assert!(model.is_prepacked());
    /// # Ok::<(), lt_model::ModelError>(())
    /// ```
    pub fn prepack(&mut self) -> Result<PrepackStats, ModelError> {
        self.unpack();
        let off = std::env::var("LT_PREPACK").is_ok_and(|v| v == "0");
        if off || self.device() != Device::Cpu {
            return Ok(PrepackStats::default());
        }
        let onednn =
            matches!(self.kind, Kind::Float | Kind::BFloat16) && crate::onednn::available();
        let _g = tch::no_grad_guard();
        let pack = |w: &Tensor| -> Result<Tensor, ModelError> {
            crate::onednn::pack(&w.detach())
                .map_err(|e| ModelError::Input(format!("oneDNN prepack: {e}")))
        };
        let elt = self.kind.elt_size_in_bytes();
        let mut stats = PrepackStats::default();
        for l in &mut self.layers {
            let qkv = FusedLinear::new(&[&l.attn.q, &l.attn.k, &l.attn.v], onednn)?;
            let gate_up = FusedLinear::new(&[&l.mlp.gate, &l.mlp.up], onednn)?;
            for f in [&qkv, &gate_up] {
                stats.bytes += f.bytes();
                stats.fused += 1;
                stats.onednn += usize::from(f.packed);
            }
            l.attn.qkv = Some(qkv);
            l.mlp.gate_up = Some(gate_up);
            for lin in [&mut l.attn.o, &mut l.mlp.down] {
                if onednn && lin.w.numel() >= pack_min_elements(self.kind) {
                    lin.packed = Some(pack(&lin.w)?);
                    stats.bytes += lin.w.numel() * elt;
                    stats.onednn += 1;
                }
            }
        }
        let head = self.lm_head().shallow_clone();
        if onednn && head.numel() >= pack_min_elements(self.kind) {
            self.head_packed = Some(pack(&head)?);
            stats.bytes += head.numel() * elt;
            stats.onednn += 1;
        }
        // the fused step's weights: a snapshot like the packed copies
        let fused = self.build_fused();
        if let Some(f) = &fused {
            stats.fused_step = true;
            stats.bytes += f.owned.iter().map(|v| v.len() * 4).sum::<usize>()
                + f.owned16.iter().map(|v| v.len() * 4).sum::<usize>();
        }
        self.fused = std::sync::OnceLock::from(fused);
        self.prepacked = true;
        tracing::debug!(?stats, "prepacked weights for CPU inference");
        Ok(stats)
    }

    /// Whether cached inference steps of a prepacked small model may take the fused CPU step
    /// (default `true`; it needs [`Model::prepack`], an f32 or bf16 model of at most 32M
    /// weights on x86-64 with AVX2 + FMA, and not `LT_FUSED_DECODE=0`). The fused step computes
    /// the same function in a few Rust kernels instead of libtorch operators: results agree
    /// with the libtorch path to float rounding, not bit for bit.
    ///
    /// ```no_run
    /// # use lt_model::{Model, ModelConfig, Device, Kind};
    /// let mut model = Model::random(&ModelConfig::tiny_llama(64, 32, 2, 4, 2, 64), Device::Cpu, Kind::Float, 0)?;
    /// model.set_fused_decode(false); // libtorch operators only
    /// # Ok::<(), lt_model::ModelError>(())
    /// ```
    pub fn set_fused_decode(&mut self, on: bool) {
        self.fused_decode = on;
    }

    /// Drop the prepacked copies made by [`Model::prepack`].
    pub fn unpack(&mut self) {
        for l in &mut self.layers {
            // q, k, v, gate, up are never packed on their own: they live in the fused copies
            l.attn.o.packed = None;
            l.mlp.down.packed = None;
            l.attn.qkv = None;
            l.mlp.gate_up = None;
        }
        self.head_packed = None;
        self.prepacked = false;
        self.fused = std::sync::OnceLock::new();
    }

    /// Whether [`Model::prepack`] ran (weights below the size threshold stay dense).
    pub fn is_prepacked(&self) -> bool {
        self.prepacked
    }

    /// An empty cache for `batch` rows with `capacity` preallocated slots (grows when needed).
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache {
        KvCache::new(
            self.cfg.num_hidden_layers,
            batch,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
            capacity,
            self.kind,
            self.device(),
        )
    }

    /// Run the decoder.
    ///
    /// `input_ids`, `position_ids`: `[B, T]` Int64 (positions are arbitrary: holes, repeats,
    /// beyond `max_position_embeddings`). With `cache`, the step's K/V are appended to the cache
    /// first (each row at its own length) and the queries attend to all cached keys: mask columns
    /// = `cache.max_len()` after the append; slots beyond a row's own length are hidden by the
    /// model. Without a cache: self-attention over the `T` tokens. Returns per [`Logits`]:
    /// `[B, T, V]`, `[B, V]` or hidden states `[B, T, H]`, in the model's kind.
    ///
    /// Works under autograd (training) and under `tch::no_grad` (inference).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: AttnMask<'_>,
        mut cache: Option<&mut KvCache>,
        logits: Logits,
    ) -> Result<Tensor, ModelError> {
        let dev = self.device();
        let ids_size = input_ids.size();
        if ids_size.len() != 2 || ids_size[1] == 0 {
            return Err(ModelError::Input(format!(
                "input_ids must be [B, T] with T > 0, got {ids_size:?}"
            )));
        }
        let (b, t) = (ids_size[0], ids_size[1]);
        if position_ids.size() != ids_size {
            return Err(ModelError::Input(format!(
                "position_ids shape {:?} != input_ids shape {ids_size:?}",
                position_ids.size()
            )));
        }
        let ids = to_dev_i64(input_ids, dev);
        let pos = to_dev_i64(position_ids, dev);
        let mut ids_host = Vec::new();
        if ids.numel() > 0 {
            let (lo, hi) = if dev == Device::Cpu {
                // one host copy instead of two reductions and two reads
                ids_host = Vec::<i64>::try_from(ids.reshape([-1]))?;
                let lo = ids_host.iter().copied().min().unwrap_or(0);
                (lo, ids_host.iter().copied().max().unwrap_or(0))
            } else {
                (ids.min().int64_value(&[]), ids.max().int64_value(&[]))
            };
            self.check_id_range(lo, hi)?;
        }

        // Cache bookkeeping: lengths before the append, positions to record.
        let (lens_before, uniform) = match cache.as_deref_mut() {
            Some(c) => {
                self.check_cache(c, b)?;
                c.reserve(t as usize);
                (c.lens().to_vec(), c.is_uniform())
            }
            None => (vec![0; b as usize], true),
        };
        let max_before = lens_before.iter().copied().max().unwrap_or(0) as i64;
        let keys = max_before + t;

        let infer = !grad_enabled();
        // host positions: for the CPU RoPE table and the cache's bookkeeping (no device sync
        // on CUDA without a cache)
        let pos_rows: Vec<i64> = if dev == Device::Cpu || cache.is_some() {
            Vec::<i64>::try_from(pos.to_device(Device::Cpu).reshape([-1]))?
        } else {
            Vec::new()
        };
        if infer {
            if let Some(c) = cache.as_deref_mut() {
                // (ids and cache checked above)
                if let Some(y) = self.step_fused(&ids_host, &pos_rows, b, t, mask, c, logits)? {
                    return Ok(y);
                }
            }
        }
        // Build the SDPA mask.
        let (attn_mask, is_causal) = self.build_mask(mask, b, t, keys, &lens_before, uniform)?;
        let (cos, sin) = if dev == Device::Cpu {
            self.rope.cos_sin_host(&pos_rows, b, t, self.kind)
        } else {
            self.rope.cos_sin(&pos, self.kind)
        };
        let inp = AttnInputs {
            cos: &cos,
            sin: &sin,
            mask: attn_mask.as_ref(),
            is_causal,
            infer,
        };
        let mut x = Tensor::f_embedding(&self.embed, &ids, -1, false, false)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &inp, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(c) = cache {
            let rows: Vec<Vec<i64>> = pos_rows.chunks(t as usize).map(|r| r.to_vec()).collect();
            c.commit(&rows);
        }
        let x = match logits {
            Logits::Last => x.narrow(1, t - 1, 1),
            _ => x,
        };
        let x = self.norm.forward(&x);
        let head =
            |x: &Tensor| linear_packed(x, self.lm_head(), None, self.head_packed.as_ref(), infer);
        Ok(match logits {
            Logits::None => x,
            Logits::All => head(&x),
            Logits::Last => head(&x).squeeze_dim(1),
        })
    }

    /// [`Model::forward`] with the token ids and positions as host slices (`batch` rows of
    /// `ids.len() / batch` tokens each, row-major): what a decode loop holds anyway. A step that
    /// takes the fused CPU path reads them in place (no tensors made, none read back); any other
    /// goes through [`Model::forward`].
    ///
    /// ```no_run
    /// # use lt_model::{AttnMask, Logits, Model, ModelConfig, Device, Kind};
    /// # let model = Model::random(&ModelConfig::tiny_llama(16, 16, 1, 2, 1, 16), Device::Cpu, Kind::Float, 0).unwrap();
    /// let mut cache = model.new_cache(2, 16);
    /// let _g = tch::no_grad_guard();
    /// // two rows, one new token each, at positions 0
    /// let logits = model
    ///     .forward_slices(&[3, 5], &[0, 0], 2, AttnMask::Causal, Some(&mut cache), Logits::Last)
    ///     .unwrap();
    /// assert_eq!(logits.size(), vec![2, 16]);
    /// ```
    pub fn forward_slices(
        &self,
        ids: &[i64],
        positions: &[i64],
        batch: usize,
        mask: AttnMask<'_>,
        mut cache: Option<&mut KvCache>,
        logits: Logits,
    ) -> Result<Tensor, ModelError> {
        let n = ids.len();
        if batch == 0 || n == 0 || !n.is_multiple_of(batch) || positions.len() != n {
            return Err(ModelError::Input(format!(
                "ids ({n}) and positions ({}) must be {batch} rows of T > 0 tokens",
                positions.len()
            )));
        }
        let (b, t) = (batch as i64, (n / batch) as i64);
        if self.device() == Device::Cpu && !grad_enabled() {
            if let Some(c) = cache.as_deref_mut() {
                let lo = ids.iter().copied().min().unwrap_or(0);
                self.check_id_range(lo, ids.iter().copied().max().unwrap_or(0))?;
                self.check_cache(c, b)?;
                if let Some(y) = self.step_fused(ids, positions, b, t, mask, c, logits)? {
                    return Ok(y);
                }
            }
        }
        let ids_t = Tensor::from_slice(ids).view([b, t]);
        let pos_t = Tensor::from_slice(positions).view([b, t]);
        self.forward(&ids_t, &pos_t, mask, cache, logits)
    }

    /// Token ids `lo..=hi` (the smallest and largest of a step) are in the vocabulary.
    fn check_id_range(&self, lo: i64, hi: i64) -> Result<(), ModelError> {
        if lo < 0 || hi >= self.cfg.vocab_size as i64 {
            return Err(ModelError::Input(format!(
                "token id out of range [0, {}): min {lo}, max {hi}",
                self.cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// `cache` fits a step of `b` rows of this model.
    fn check_cache(&self, c: &KvCache, b: i64) -> Result<(), ModelError> {
        if c.batch() as i64 != b {
            return Err(ModelError::Input(format!(
                "cache batch {} != input batch {b}",
                c.batch()
            )));
        }
        if c.layers() != self.cfg.num_hidden_layers {
            return Err(ModelError::Input(format!(
                "cache has {} layers, model has {}",
                c.layers(),
                self.cfg.num_hidden_layers
            )));
        }
        Ok(())
    }

    /// The fused CPU step for host ids / positions (`b × t`), when it applies to this step
    /// (`None`: take libtorch's path). The caller has checked the ids ([`Model::check_id_range`])
    /// and the cache ([`Model::check_cache`]).
    #[allow(clippy::too_many_arguments)]
    fn step_fused(
        &self,
        ids: &[i64],
        positions: &[i64],
        b: i64,
        t: i64,
        mask: AttnMask<'_>,
        c: &mut KvCache,
        logits: Logits,
    ) -> Result<Option<Tensor>, ModelError> {
        // an explicit mask becomes one f32 row of `keys` per query token there: keep that
        // bounded (a long masked prompt goes through libtorch's SDPA instead)
        let keys = c.max_len() as i64 + t;
        let mask_fits =
            matches!(mask, AttnMask::Causal) || (b * t * keys) as usize <= FUSED_MAX_MASK_ELEMS;
        let Some(w) = self
            .fused_weights(c, (b * t) as usize)
            .filter(|_| mask_fits)
        else {
            return Ok(None);
        };
        c.reserve(t as usize);
        let (lens_before, uniform) = (c.lens().to_vec(), c.is_uniform());
        // causal steps need no mask tensor: each query sees its row's slots
        let attn_mask = match mask {
            AttnMask::Causal => None,
            _ => self.build_mask(mask, b, t, keys, &lens_before, uniform)?.0,
        };
        self.forward_fused(
            w,
            ids,
            positions,
            &lens_before,
            c,
            t as usize,
            mask,
            attn_mask.as_ref(),
            logits,
        )
        .map(Some)
    }

    fn fused_weights(&self, cache: &KvCache, tokens: usize) -> Option<&FusedWeights> {
        if !self.fused_decode
            || cache.kind() != self.kind
            || cache.device() != Device::Cpu
            || !fused_pays(tokens, &self.cfg)
        {
            return None;
        }
        self.fused.get().and_then(|f| f.as_ref())
    }

    /// The fused step's weights ([`Model::prepack`]): transposed / widened f32 copies, or `None`
    /// where the fused step cannot run (not an f32 / bf16 CPU model, no AVX2 + FMA, larger than
    /// [`FUSED_MAX_PARAMS`], `LT_FUSED_DECODE=0`, a weight not dense).
    fn build_fused(&self) -> Option<FusedWeights> {
        if !matches!(self.kind, Kind::Float | Kind::BFloat16)
            || self.device() != Device::Cpu
            || !crate::fused::available()
            || self.cfg.dense_params() > FUSED_MAX_PARAMS
        {
            return None;
        }
        let _g = tch::no_grad_guard();
        let mut wd = Widen::default();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(FusedLayer {
                ln1: wd.slice(&l.ln1.w)?,
                eps1: l.ln1.eps as f32,
                ln2: wd.slice(&l.ln2.w)?,
                eps2: l.ln2.eps as f32,
                qkv: wd.stacked(&[&l.attn.q, &l.attn.k, &l.attn.v])?,
                o: wd.linear(&l.attn.o)?,
                gate: wd.linear(&l.mlp.gate)?,
                up: wd.linear(&l.mlp.up)?,
                down: wd.linear(&l.mlp.down)?,
            });
        }
        Some(FusedWeights {
            embed: wd.slice(&self.embed)?,
            norm: wd.slice(&self.norm.w)?,
            norm_eps: self.norm.eps as f32,
            head: wd.packed(self.lm_head())?,
            layers,
            owned: wd.owned,
            owned16: wd.owned16,
        })
    }

    /// A small step ([`fused_pays`]: a decode step, a forced compression block, a small model's
    /// prompt) through the fused f32 kernels; same contract and results (to float
    /// rounding) as the libtorch path of [`Model::forward`]. With enough work the step runs on
    /// two threads ([`TeamStep`]: products split by columns, attention by kv heads), with the
    /// same results as on one.
    #[allow(clippy::too_many_arguments)]
    fn forward_fused(
        &self,
        w: &FusedWeights,
        ids: &[i64],
        pos_rows: &[i64],
        lens_before: &[usize],
        cache: &mut KvCache,
        t: usize,
        mask: AttnMask<'_>,
        attn_mask: Option<&Tensor>,
        logits: Logits,
    ) -> Result<Tensor, ModelError> {
        let b = lens_before.len();
        let keys = lens_before.iter().copied().max().unwrap_or(0) + t;
        let layout = |x: &Tensor| -> Result<KvLayout, ModelError> {
            let (st, size) = (x.stride(), x.size());
            let ok = st.len() == 4
                && st[3] == 1
                && size[0] as usize == b
                && size[1] as usize == self.cfg.kv_heads()
                && size[2] as usize >= keys
                && size[3] as usize == self.cfg.head_dim();
            if !ok {
                return Err(ModelError::Input(format!(
                    "fused decode: unexpected cache layout {size:?} / {st:?}"
                )));
            }
            Ok(KvLayout {
                base: x.data_ptr() as *mut u8,
                elem: if x.kind() == Kind::BFloat16 {
                    KvElem::Bf16
                } else {
                    KvElem::F32
                },
                row: st[0] as isize,
                head: st[1] as isize,
                slot: st[2] as isize,
            })
        };
        // the cache's raw views, taken once per storage (the tensors are reallocated only when
        // the cache grows, which drops them); put back after the step
        let taken = cache.fused_layouts.take();
        let cache_ref = &*cache;
        let still = |kv: &[(KvLayout, KvLayout)]| {
            let cache = cache_ref;
            kv.len() == self.layers.len()
                && cache.capacity() >= keys
                && kv.iter().enumerate().all(|(li, (kl, vl))| {
                    // the storage is still where it was (cheap next to re-reading the strides)
                    cache.keys(li).map(|k| k.data_ptr() as *mut u8) == Some(kl.base)
                        && cache.values(li).map(|v| v.data_ptr() as *mut u8) == Some(vl.base)
                })
        };
        let kv = match taken {
            Some(kv) if still(&kv) => kv,
            _ => {
                let mut kv = Vec::with_capacity(self.layers.len());
                for li in 0..self.layers.len() {
                    // the full-capacity tensors (reserved above): no views made
                    match (cache.keys(li), cache.values(li)) {
                        (Some(k), Some(v)) => kv.push((layout(k)?, layout(v)?)),
                        _ => return Err(ModelError::Input(format!("cache has no layer {li}"))),
                    }
                }
                kv
            }
        };
        // an explicit mask as additive f32 rows, `keys` per query token (Causal needs none:
        // query i of a row sees that row's slots up to its own)
        let (bt, tk) = (b * t * keys, t * keys);
        let mask_rows: Option<Vec<f32>> = match (mask, attn_mask) {
            (AttnMask::Causal, _) | (_, None) => None,
            // a host Bool mask (what lt-infer passes) read in place: the libtorch route below
            // is ~7 operator calls, ~10 µs per compression step of a small model
            (_, Some(m))
                if m.kind() == Kind::Bool
                    && m.device() == Device::Cpu
                    && m.is_contiguous()
                    && (m.numel() == bt || m.numel() == tk) =>
            {
                // SAFETY: a contiguous CPU Bool tensor of numel bytes, each 0 or 1
                let v = unsafe { std::slice::from_raw_parts(m.data_ptr() as *const u8, m.numel()) };
                let rows: Vec<f32> = v
                    .iter()
                    .map(|&s| if s != 0 { 0.0 } else { f32::NEG_INFINITY })
                    .collect();
                // one [T, K] mask for every row: repeated
                Some(if rows.len() == bt {
                    rows
                } else {
                    rows.repeat(b)
                })
            }
            (_, Some(m)) => {
                let m = if m.kind() == Kind::Bool {
                    Tensor::zeros([1], (Kind::Float, Device::Cpu))
                        .masked_fill(&m.logical_not(), f64::NEG_INFINITY)
                } else {
                    m.to_kind(Kind::Float)
                };
                let m = m
                    .expand([b as i64, 1, t as i64, keys as i64], false)
                    .contiguous();
                Some(Vec::<f32>::try_from(m.reshape([-1]))?)
            }
        };
        let bf16 = self.kind == Kind::BFloat16;
        let (mut cos, mut sin) = self.rope.cos_sin_host_vecs(pos_rows);
        if bf16 {
            // HF casts the f32 cos / sin to the activation dtype
            crate::fused::round_bf16(&mut cos);
            crate::fused::round_bf16(&mut sin);
        }
        let (width, per_row) = match logits {
            Logits::None => (self.cfg.hidden_size, t),
            Logits::All => (self.cfg.vocab_size, t),
            Logits::Last => (self.cfg.vocab_size, 1),
        };
        let out = Tensor::empty(
            [b as i64, (per_row * width) as i64],
            (Kind::Float, Device::Cpu),
        );
        // SAFETY: a fresh contiguous f32 tensor, written only here
        let os = unsafe {
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, b * per_row * width)
        };
        let step = FusedStep {
            t,
            cos: &cos,
            sin: &sin,
            lens: lens_before,
            kv: &kv,
            mask: mask_rows.as_deref(),
            keys,
            logits,
            bf16,
        };
        // multiply-adds of the step: weights once per token, attention per key of each context
        let dense = self.cfg.dense_params();
        let attn =
            self.cfg.num_hidden_layers * 2 * self.cfg.num_attention_heads * self.cfg.head_dim();
        let per_token = dense + attn * keys;
        let n = b * t;
        let cfg = &self.cfg;
        // the attention by kv heads when they split evenly; else by tokens: whole rows when
        // there are several, else the tokens of the one row cut where the (causal) work halves
        // (each member's q / k / v columns must start on a weight panel: head_dim a multiple of 16)
        let by_heads =
            cfg.kv_heads().is_multiple_of(2) && cfg.head_dim().is_multiple_of(crate::gemm::PANEL);
        let split = if by_heads {
            n * per_token >= FUSED_SPLIT_HEADS_MIN_MACS
        } else if b >= 2 {
            n * per_token >= FUSED_SPLIT_MIN_MACS
        } else {
            t >= FUSED_SPLIT_MIN_TOKENS && n * per_token >= FUSED_SPLIT_TOKENS_MIN_MACS
        };
        let cut = if by_heads {
            0
        } else if b >= 2 {
            (b / 2) * t
        } else {
            let cost = |i: usize| {
                dense
                    + attn
                        * if mask_rows.is_some() {
                            keys
                        } else {
                            lens_before[0] + i + 1
                        }
            };
            let total: usize = (0..t).map(cost).sum();
            let mut acc = 0;
            let mut s = 0;
            while s < t - 1 && 2 * (acc + cost(s)) <= total {
                acc += cost(s);
                s += 1;
            }
            s.max(1)
        };
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.kv_heads() * cfg.head_dim(),
        );
        // MLP activations in rows padded to whole cache lines (the members split them by columns)
        let ild = inter.div_ceil(16) * 16;
        // the two halves of a partial sum a cache line apart at least
        let hp = h.div_ceil(16) * 16;
        let sh = usize::from(!by_heads);
        // this model's buffers from the last step, unless another thread is stepping with it
        let mut held = self.scratch.try_lock().ok();
        let mut own = None;
        let sc: &mut StepScratch = match held.as_deref_mut() {
            Some(sc) => sc,
            None => own.insert(StepScratch::default()),
        };
        let x = sc.x.take(n * h);
        for (xr, &id) in x.chunks_exact_mut(h).zip(ids) {
            let id = id as usize;
            xr.copy_from_slice(&w.embed.get()[id * h..(id + 1) * h]);
        }
        let run = TeamStep {
            cfg,
            w,
            st: &step,
            n,
            x: sc.x.shared(n * h, h),
            // shared activations for a split by tokens (`run_heads` keeps its own per member;
            // it reads only the widths)
            qkv: sc.qkv.shared(sh * n * (qd + 2 * kvd), qd + 2 * kvd),
            y: sc.y.shared(sh * n * qd, qd),
            gate: sc.gate.shared(sh * n * ild, ild),
            up: sc.up.shared(sh * n * ild, ild),
            act: sc.act.shared(sh * n * ild, ild),
            tmp: sc.tmp.shared(if bf16 { n * h } else { 0 }, h),
            out: Shared::of(os, width),
            part_o: sc
                .part_o
                .shared(if by_heads { n * 2 * hp } else { 0 }, 2 * hp),
            part_d: sc
                .part_d
                .shared(if by_heads { n * 2 * hp } else { 0 }, 2 * hp),
            by_heads,
            cut,
            members: MemberBufs(sc.members.as_mut_ptr()),
        };
        if split {
            crate::pair::team(|m| run.run(m));
        } else {
            run.run(&crate::pair::Member::solo());
        }
        cache.fused_layouts = Some(kv);
        let rows: Vec<Vec<i64>> = pos_rows.chunks(t).map(|r| r.to_vec()).collect();
        cache.commit(&rows);
        let (b, t) = (b as i64, t as i64);
        // bf16: every value is already a bf16 number, the cast is exact
        let out = if bf16 {
            out.to_kind(Kind::BFloat16)
        } else {
            out
        };
        Ok(match logits {
            Logits::Last => out,
            _ => out.view([b, t, width as i64]),
        })
    }

    fn build_mask(
        &self,
        mask: AttnMask<'_>,
        b: i64,
        t: i64,
        keys: i64,
        lens_before: &[usize],
        uniform: bool,
    ) -> Result<(Option<Tensor>, bool), ModelError> {
        let dev = self.device();
        let l0 = lens_before.first().copied().unwrap_or(0) as i64;
        // validity of key columns per row: col < len_before[b] + t
        let valid = || -> Option<Tensor> {
            if uniform {
                return None;
            }
            let lens: Vec<i64> = lens_before.iter().map(|&l| l as i64 + t).collect();
            let lens = Tensor::from_slice(&lens).to_device(dev).view([b, 1, 1, 1]);
            let cols = Tensor::arange(keys, (Kind::Int64, dev)).view([1, 1, 1, keys]);
            Some(cols.lt_tensor(&lens))
        };
        let norm4 = |m: &Tensor| -> Result<Tensor, ModelError> {
            let s = m.size();
            let m = match s.len() {
                3 => m.unsqueeze(1),
                4 => m.shallow_clone(),
                2 => m.view([1, 1, s[0], s[1]]),
                _ => {
                    return Err(ModelError::Input(format!(
                        "mask must be 2-D, 3-D or 4-D, got {s:?}"
                    )))
                }
            };
            let s = m.size();
            if (s[0] != 1 && s[0] != b) || s[1] != 1 || s[2] != t || s[3] != keys {
                return Err(ModelError::Input(format!(
                    "mask shape {s:?} does not fit [{b} or 1, 1, {t}, {keys}] (T={t}, keys after append={keys})"
                )));
            }
            Ok(m.to_device(dev))
        };
        Ok(match mask {
            AttnMask::Causal => {
                if uniform && l0 == 0 {
                    (None, t > 1)
                } else if uniform && t == 1 {
                    (None, false)
                } else {
                    // row r of sequence b sees cols <= len_before[b] + r
                    let base: Vec<i64> = lens_before.iter().map(|&l| l as i64).collect();
                    let base = Tensor::from_slice(&base).to_device(dev).view([b, 1, 1, 1]);
                    let rows = Tensor::arange(t, (Kind::Int64, dev)).view([1, 1, t, 1]);
                    let cols = Tensor::arange(keys, (Kind::Int64, dev)).view([1, 1, 1, keys]);
                    (Some(cols.le_tensor(&(rows + base))), false)
                }
            }
            AttnMask::Bool(m) => {
                let m = norm4(m)?;
                if m.kind() != Kind::Bool {
                    return Err(ModelError::Input(format!(
                        "AttnMask::Bool needs a Bool tensor, got {:?}",
                        m.kind()
                    )));
                }
                let m = match valid() {
                    Some(v) => m.logical_and(&v),
                    None => m,
                };
                (Some(m), false)
            }
            AttnMask::Additive(m) => {
                let m = norm4(m)?.to_kind(self.kind);
                let m = match valid() {
                    Some(v) => m.masked_fill(&v.logical_not(), crate::dtype_min(self.kind)),
                    None => m,
                };
                (Some(m), false)
            }
        })
    }
}

impl Model {
    /// Grow or shrink the vocabulary to `new_vocab` rows (input embedding and untied lm_head).
    ///
    /// Kept rows are copied, grown rows are drawn from `N(0, initializer_range)` (transformers'
    /// `resize_token_embeddings(mean_resizing=False)`), then for every `(id, description_ids)` of
    /// `init`, **in the given order**, row `id` becomes the mean of the rows `description_ids` of
    /// the *current* (partially updated) matrix — in both matrices. The reference iterates its
    /// added tokens in reverse order; pass `init` in that order to reproduce it (e.g. the splitter
    /// then copies the `"\n\n"` row). Entries with empty descriptions are skipped.
    /// `config().vocab_size` is updated.
    pub fn resize_vocab(
        &mut self,
        new_vocab: usize,
        init: &[(usize, Vec<i64>)],
    ) -> Result<(), ModelError> {
        if new_vocab == 0 {
            return Err(ModelError::Input("new vocabulary size must be > 0".into()));
        }
        for (id, desc) in init {
            if *id >= new_vocab {
                return Err(ModelError::Input(format!(
                    "init id {id} >= new vocab {new_vocab}"
                )));
            }
            if let Some(bad) = desc.iter().find(|&&d| d < 0 || d as usize >= new_vocab) {
                return Err(ModelError::Input(format!(
                    "description id {bad} of token {id} out of range"
                )));
            }
        }
        self.unpack();
        let _rng = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _g = tch::no_grad_guard();
        let std = self.cfg.initializer_range;
        let resize = |t: &Tensor| -> Tensor {
            let (old, h) = (t.size()[0], t.size()[1]);
            let keep = old.min(new_vocab as i64);
            let n = (Tensor::randn([new_vocab as i64, h], (Kind::Float, Device::Cpu)) * std)
                .to_kind(t.kind())
                .to_device(t.device());
            n.narrow(0, 0, keep).copy_(&t.narrow(0, 0, keep));
            for (id, desc) in init {
                if desc.is_empty() {
                    continue;
                }
                let idx = Tensor::from_slice(desc).to_device(t.device());
                let mean = n.index_select(0, &idx).mean_dim(0, false, t.kind());
                n.narrow(0, *id as i64, 1).copy_(&mean.unsqueeze(0));
            }
            n
        };
        let new_e = resize(&self.embed);
        self.embed.set_data(&new_e);
        if let Some(lm) = self.lm_head.as_mut() {
            let new_l = resize(lm);
            lm.set_data(&new_l);
        }
        self.cfg.vocab_size = new_vocab;
        Ok(())
    }

    /// Save in HF format: `config.json` (current `vocab_size`, `torch_dtype` = `dtype`) and
    /// `model.safetensors`, or shards + `model.safetensors.index.json` above 5 GB; every file is
    /// written to a temporary name and renamed.
    pub fn save_hf(&self, dir: impl AsRef<Path>, dtype: Kind) -> Result<(), ModelError> {
        self.save_hf_sharded(dir, dtype, 5_000_000_000)
    }

    /// [`Model::save_hf`] with an explicit maximum shard size in bytes.
    pub fn save_hf_sharded(
        &self,
        dir: impl AsRef<Path>,
        dtype: Kind,
        max_shard_bytes: usize,
    ) -> Result<(), ModelError> {
        crate::io::save_hf(self, dir.as_ref(), dtype, max_shard_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    /// A bf16 model's fused weights stay bf16 (paired panels, half the f32 copies' bytes) exactly
    /// where the CPU has AVX512-BF16, and an f32 model's never do.
    #[test]
    fn bf16_models_keep_bf16_panels_where_the_cpu_can() {
        let cfg = ModelConfig::tiny_qwen2(256, 64, 2, 4, 2, 96);
        let packed = |kind| {
            let mut m = Model::random(&cfg, Device::Cpu, kind, 1).unwrap();
            m.prepack().unwrap();
            let w = m.fused.get().and_then(|f| f.as_ref()).map(|f| {
                let l = &f.layers[0];
                let kinds: Vec<bool> = [&l.qkv, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|p| p.0.bf16)
                    .chain([f.head.bf16])
                    .collect();
                let words = |o: &Vec<Vec<u32>>| o.iter().map(Vec::len).sum::<usize>();
                (kinds, words(&f.owned16))
            });
            w
        };
        let Some((kinds32, words32)) = packed(Kind::Float) else {
            return; // no fused step on this CPU
        };
        assert!(kinds32.iter().all(|&b| !b) && words32 == 0);
        let (kinds16, words16) = packed(Kind::BFloat16).expect("bf16 fused weights");
        let want = crate::gemm::bf16_dot();
        assert!(
            kinds16.iter().all(|&b| b == want),
            "{kinds16:?} vs bf16_dot {want}"
        );
        // one u32 per two weights: half of the f32 panels (+ padding)
        let weights = 2 * (64 * 128 + 64 * 64 + 2 * 64 * 96 + 96 * 64) + 256 * 64;
        if want {
            assert!(
                words16 >= weights / 2 && words16 < weights * 6 / 10,
                "{words16} vs {weights}"
            );
        }
    }

    /// The eager one-query attention equals SDPA: GQA, a batch of 2, no mask / bool / additive.
    #[test]
    fn attend_cpu_equals_sdpa() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(1);
        for kind in [Kind::Float, Kind::BFloat16] {
            for (b, h, kvh, t, extra, d) in [
                (1i64, 14i64, 2i64, 9i64, 0i64, 64i64),
                (2, 6, 2, 5, 3, 32),
                (1, 4, 1, 7, 0, 16),
                (3, 6, 3, 4, 2, 24),
                (1, 4, 1, 80, 0, 16), // one (row, kv head): the threads split tokens
                (1, 4, 2, 80, 0, 16),
                (1, 4, 1, 24, 0, 8),
                (1, 4, 2, 6, 1, 16),
            ] {
                let l = t + extra;
                // q / k / v as the fused projection leaves them: heads of one token adjacent
                let y = Tensor::randn([b, t, h + 2 * kvh, d], (kind, Device::Cpu)).transpose(1, 2);
                let q = y.narrow(1, 0, h);
                let kc = Tensor::randn([b, kvh, l + 5, d], (kind, Device::Cpu));
                let vc = Tensor::randn([b, kvh, l + 5, d], (kind, Device::Cpu));
                let (k, v) = if extra == 0 {
                    (y.narrow(1, h, kvh), y.narrow(1, h + kvh, kvh))
                } else if extra == 1 {
                    // K and V from buffers of different widths (no cache, fused q/k/v + RoPE)
                    let w = Tensor::randn([b, l, kvh + 1, d], (kind, Device::Cpu)).transpose(1, 2);
                    (kc.narrow(2, 0, l), w.narrow(1, 1, kvh))
                } else {
                    (kc.narrow(2, 0, l), vc.narrow(2, 0, l))
                };
                for causal in [true, false] {
                    let got = match attend_cpu(&q, &k, &v, causal, kvh) {
                        Some(y) => y,
                        None if extra == 1 => continue, // K / V strides differ: SDPA's
                        None => {
                            assert!(!crate::fused::available());
                            return;
                        }
                    };
                    // causal with a cache: the T new queries are the last T keys
                    let mask =
                        causal.then(|| Tensor::ones([t, l], (Kind::Bool, Device::Cpu)).tril(l - t));
                    let want = Tensor::scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        mask.as_ref(),
                        0.0,
                        false,
                        None::<f64>,
                        h != kvh,
                    );
                    let tol = if kind == Kind::Float { 1e-5 } else { 3e-2 };
                    let diff = max_diff(&got, &want);
                    assert!(
                        diff <= tol,
                        "{kind:?} b{b} h{h} kv{kvh} t{t} l{l} d{d} causal {causal}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn eager_attention_equals_sdpa() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(0);
        for kind in [Kind::Float, Kind::BFloat16] {
            for t in [1i64, 3] {
                let (b, h, kvh, l, d) = (2i64, 6i64, 2i64, 37i64, 16i64);
                let q = Tensor::randn([b, h, t, d], (kind, Device::Cpu));
                // keys as a narrowed cache view, like the real path
                let kc = Tensor::randn([b, kvh, l + 5, d], (kind, Device::Cpu));
                let vc = Tensor::randn([b, kvh, l + 5, d], (kind, Device::Cpu));
                let (k, v) = (kc.narrow(2, 0, l), vc.narrow(2, 0, l));
                let bool_m = Tensor::rand([b, 1, t, l], (Kind::Float, Device::Cpu)).gt(0.4);
                let _ = bool_m.narrow(3, l - 1, 1).fill_(1);
                let add_m = Tensor::zeros([1, 1, t, l], (kind, Device::Cpu)).masked_fill(
                    &bool_m.narrow(0, 0, 1).logical_not(),
                    crate::dtype_min(kind),
                );
                for m in [None, Some(&bool_m), Some(&add_m)] {
                    let want = Tensor::scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        m,
                        0.0,
                        false,
                        None::<f64>,
                        true,
                    );
                    let got = eager_attention(&q, &k, &v, m, kvh).unwrap();
                    let tol = if kind == Kind::Float { 1e-5 } else { 3e-2 };
                    let diff = max_diff(&got, &want);
                    assert!(diff <= tol, "{kind:?} t={t} mask={}: {diff}", m.is_some());
                }
                // and the mask matters: no mask differs from the bool mask
                let unmasked = eager_attention(&q, &k, &v, None, kvh).unwrap();
                let masked = eager_attention(&q, &k, &v, Some(&bool_m), kvh).unwrap();
                assert!(max_diff(&unmasked, &masked) > 0.1);
            }
        }
    }

    #[test]
    fn eager_threshold_is_dtype_aware() {
        assert!(eager_is_faster(Kind::BFloat16, 14, 256, 64));
        assert!(!eager_is_faster(Kind::BFloat16, 4, 64, 16));
        assert!(eager_is_faster(Kind::Float, 14, 1024, 64));
        assert!(!eager_is_faster(Kind::Float, 4, 4096, 32));
    }
}
