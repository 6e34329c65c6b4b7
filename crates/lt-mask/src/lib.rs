//! `lt-mask`: LightThinker compression attention masks.
//!
//! LightThinker teaches a model to end each thought with `<|splitter|>`, squeeze it into `C`
//! cache ("gist") tokens and continue from those alone. Which token may attend to which is all
//! in the attention mask; this crate builds those masks exactly as the Python reference does:
//!
//! * [`global_mask`]: training mask of an aug / aug-wo-pc sample (`create_attention_for_aug_data`);
//! * [`recover_mask`]: training mask of a recover sample (`create_attention_for_recover_data`);
//! * [`local_mask`]: one inference step over the live KV cache (`update_attention_local`),
//!   LightThinker ([`LocalIndicator::lightthinker`]) and AnLLM ([`LocalIndicator::anllm`]).
//!
//! Masks are [`IntervalMask`]s (per-row visible intervals, no `P²` memory) with exports to dense
//! bool, bit-packed, additive float and, with the `tch` feature, `tch::Tensor`s.
//!
//! ```
//! use lt_mask::{global_mask, BlockKind, Layout, MaskFlags, ThoughtBlock};
//! let layout = Layout {
//!     len: 10,
//!     blocks: vec![ThoughtBlock { start: 2, end: 5, l_inst: 0, n_comp: 2, n_continue: 1, kind: BlockKind::Output }],
//! };
//! let m = global_mask(&layout, &MaskFlags::default(), None).unwrap();
//! assert_eq!((m.rows(), m.cols()), (10, 10));
//! assert!(m.is_visible(6, 3));   // a cache token sees the thought
//! assert!(!m.is_visible(7, 3));  // <|continue|> does not
//! ```
use serde::{Deserialize, Serialize};

mod error;
mod global;
mod interval;
mod local;
pub mod render;

pub use error::MaskError;
pub use global::{global_mask, global_masks, recover_mask, validate, RecoverKey, RecoverSpec};
pub use interval::{GoldenIntervals, IntervalMask};
pub use local::{local_mask, LocalIndicator};

/// Whether a compressed segment belongs to the prompt or to the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    /// The reference's `compressed-prompt`.
    #[serde(rename = "compressed-prompt")]
    Prompt,
    /// The reference's `compressed-output`.
    #[serde(rename = "compressed-output")]
    Output,
}

/// One compressed segment: the reference's locate tuple `(start, end, l_inst, n_comp, n_continue)`.
///
/// Columns `[start, end)` are the thought, `[end, end+l_inst)` the compress instruction,
/// `[end+l_inst, end+l_inst+n_comp)` the cache (gist) tokens and then `n_continue` `<|continue|>` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThoughtBlock {
    /// First token of the compressed segment (S).
    pub start: usize,
    /// One past its last token (E); may exceed the sequence length after truncation.
    pub end: usize,
    /// Length of the compress instruction between the segment and the cache tokens (L).
    pub l_inst: usize,
    /// Number of cache tokens (C).
    pub n_comp: usize,
    /// Number of `<|continue|>` tokens after the cache tokens (N).
    pub n_continue: usize,
    /// Prompt or output segment.
    pub kind: BlockKind,
}

impl ThoughtBlock {
    /// I = end + l_inst: first cache token.
    pub fn cache_start(&self) -> usize {
        self.end + self.l_inst
    }
    /// Z = I + n_comp: one past the last cache token.
    pub fn cache_end(&self) -> usize {
        self.cache_start() + self.n_comp
    }
    /// U = Z + n_continue: one past the block.
    pub fn block_end(&self) -> usize {
        self.cache_end() + self.n_continue
    }
}

/// The five mask flags of the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskFlags {
    /// Cache rows see only the current thought (and their own block).
    pub see_current: bool,
    /// Cache tokens of one block see each other fully.
    pub bi_directional: bool,
    /// Inside a block each cache token sees only itself.
    pub diagonal: bool,
    /// Hide the previous block's `<|continue|>` from later tokens.
    pub exclude_continue: bool,
    /// Compress the prompt during prefill (false = plain causal prefill).
    pub prefill_compress: bool,
}

/// A sequence of `len` tokens with its compressed blocks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Number of real (unpadded) tokens T.
    pub len: usize,
    /// Blocks in sequence order.
    pub blocks: Vec<ThoughtBlock>,
}

/// The most negative finite value of a float dtype, used for hidden cells of additive masks
/// (bf16: `-3.3895313892515355e38`, exactly `torch.finfo(torch.bfloat16).min`).
#[cfg(feature = "tch")]
pub fn dtype_min(kind: tch::Kind) -> f64 {
    match kind {
        tch::Kind::BFloat16 => -3.3895313892515355e38,
        tch::Kind::Half => -65504.0,
        tch::Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Stack equally shaped masks into a `[B, 1, P, P']` additive tensor of `kind` on `device`
/// (0 visible, [`dtype_min`] hidden), the layout the model's attention expects. The buffer is
/// filled row-wise in parallel (rayon) directly in the target dtype (bf16/f16 as bit patterns).
#[cfg(feature = "tch")]
pub fn stack_additive(
    masks: &[IntervalMask],
    kind: tch::Kind,
    device: tch::Device,
) -> Result<tch::Tensor, MaskError> {
    let (rows, cols) = same_shape(masks)?;
    Ok(additive_tensor(
        masks,
        &[masks.len() as i64, 1, rows as i64, cols as i64],
        kind,
    )
    .to_device(device))
}

/// Stack equally shaped masks into a `[B, 1, P, P']` `Bool` tensor (true = visible).
#[cfg(feature = "tch")]
pub fn stack_bool(masks: &[IntervalMask], device: tch::Device) -> Result<tch::Tensor, MaskError> {
    let (rows, cols) = same_shape(masks)?;
    let bytes = fill_parallel(masks, 1u8, 0u8);
    Ok(bytes_to_bool(&bytes, &[masks.len() as i64, 1, rows as i64, cols as i64]).to_device(device))
}

#[cfg(feature = "tch")]
fn same_shape(masks: &[IntervalMask]) -> Result<(usize, usize), MaskError> {
    let (rows, cols) = masks
        .first()
        .map(|m| (m.rows(), m.cols()))
        .unwrap_or((0, 0));
    if let Some((i, m)) = masks
        .iter()
        .enumerate()
        .find(|(_, m)| (m.rows(), m.cols()) != (rows, cols))
    {
        return Err(MaskError::Shape(format!(
            "mask {i} is {}x{}, mask 0 is {rows}x{cols}",
            m.rows(),
            m.cols()
        )));
    }
    Ok((rows, cols))
}

/// Dense fill of all masks (equal shapes) into one buffer, one rayon task per mask.
#[cfg(feature = "tch")]
fn fill_parallel<T: Copy + Send + Sync>(masks: &[IntervalMask], visible: T, hidden: T) -> Vec<T> {
    use rayon::prelude::*;
    let per = masks.first().map(|m| m.rows() * m.cols()).unwrap_or(0);
    let mut buf = vec![hidden; masks.len() * per];
    if per > 0 {
        buf.par_chunks_mut(per)
            .zip(masks.par_iter())
            .for_each(|(dst, m)| m.write_dense(visible, hidden, dst));
    }
    buf
}

#[cfg(feature = "tch")]
pub(crate) fn bytes_to_bool(bytes: &[u8], shape: &[i64]) -> tch::Tensor {
    tch::Tensor::from_slice(bytes)
        .view_dtype(tch::Kind::Bool)
        .view(shape)
}

/// Additive tensor of `kind` (CPU) for equally shaped masks, shaped `shape`.
#[cfg(feature = "tch")]
pub(crate) fn additive_tensor(
    masks: &[IntervalMask],
    shape: &[i64],
    kind: tch::Kind,
) -> tch::Tensor {
    let mut t = tch::Tensor::empty(shape, (kind, tch::Device::Cpu));
    advise_huge_pages(&t);
    if fill_additive(masks, &mut t).is_err() {
        // dtypes without a native fill path: build in f32 and convert
        let buf = fill_parallel(masks, 0f32, f32::MIN);
        return tch::Tensor::from_slice(&buf).view(shape).to_kind(kind);
    }
    t
}

/// A fresh `B*P*P` buffer is written once, right after allocation: on Linux its first touch costs one
/// page fault per 4 KiB (about 20 ms for 32 MiB on a VM), which dominates building the mask. Asking for
/// transparent huge pages on the 2 MiB-aligned part of the buffer cuts the faults ~500-fold where THP is
/// in `madvise` mode; elsewhere the advice is a no-op.
#[cfg(feature = "tch")]
fn advise_huge_pages(t: &tch::Tensor) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let len = t.numel() * t.kind().elt_size_in_bytes();
        let ptr = t.data_ptr() as usize;
        let start = (ptr + HUGE - 1) & !(HUGE - 1);
        let end = (ptr + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside the tensor's own allocation; MADV_HUGEPAGE only
            // changes how the kernel backs it, never its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = t;
}

/// Write equally shaped masks into a preallocated, contiguous CPU tensor of `B * rows * cols`
/// elements (any shape, e.g. `[B, 1, P, P]`) of kind bf16, f16, f32 or f64: `0` where visible,
/// [`dtype_min`] where hidden. Reusing one tensor across batches avoids allocating (and page
/// faulting) a fresh `B * P * P` buffer per step.
#[cfg(feature = "tch")]
pub fn fill_additive(masks: &[IntervalMask], out: &mut tch::Tensor) -> Result<(), MaskError> {
    use rayon::prelude::*;
    use tch::Kind;
    let (rows, cols) = same_shape(masks)?;
    let per = rows * cols;
    let numel = out.numel();
    if numel != masks.len() * per || out.device() != tch::Device::Cpu || !out.is_contiguous() {
        return Err(MaskError::Shape(format!(
            "fill_additive: need a contiguous CPU tensor of {} elements, got {:?} on {:?}",
            masks.len() * per,
            out.size(),
            out.device()
        )));
    }
    if per == 0 {
        return Ok(());
    }
    fn go<T: Copy + Send + Sync>(
        masks: &[IntervalMask],
        ptr: *mut T,
        n: usize,
        per: usize,
        vis: T,
        hid: T,
    ) {
        // SAFETY: `ptr` is the data pointer of a contiguous CPU tensor holding exactly `n`
        // elements of `T` (checked by the caller: numel and kind), and nothing else accesses the
        // tensor while this exclusive borrow is alive.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
        buf.par_chunks_mut(per)
            .zip(masks.par_iter())
            .for_each(|(dst, m)| m.write_dense(vis, hid, dst));
    }
    let n = masks.len() * per;
    match out.kind() {
        Kind::BFloat16 => go(masks, out.data_ptr() as *mut u16, n, per, 0u16, 0xff7fu16),
        Kind::Half => go(masks, out.data_ptr() as *mut u16, n, per, 0u16, 0xfbffu16),
        Kind::Float => go(masks, out.data_ptr() as *mut f32, n, per, 0f32, f32::MIN),
        Kind::Double => go(masks, out.data_ptr() as *mut f64, n, per, 0f64, f64::MIN),
        k => {
            return Err(MaskError::Shape(format!(
                "fill_additive: unsupported dtype {k:?} (bf16, f16, f32, f64)"
            )))
        }
    }
    Ok(())
}
