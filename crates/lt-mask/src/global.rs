//! Training masks: the reference's `create_attention_for_aug_data` ([`global_mask`]) and
//! `create_attention_for_recover_data` ([`recover_mask`]).
//!
//! The builders do not materialise the `T x T` matrix. They exploit the structure of a valid
//! layout (blocks sorted and non-overlapping) and emit every row's visible intervals directly, in
//! time proportional to the output size. See `docs/masks.md` for the derivation; a literal dense
//! port of the reference lives in the test suite and is compared against these on random layouts.
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::interval::Builder;
use crate::{BlockKind, IntervalMask, Layout, MaskError, MaskFlags};

/// The key of one recovered thought: the reference's `(end, l_inst, n_comp, n_continue)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecoverKey {
    /// `end` of the recovered block.
    pub end: usize,
    /// Its instruction length.
    pub l_inst: usize,
    /// Its number of cache tokens.
    pub n_comp: usize,
    /// Its number of `<|continue|>` tokens.
    pub n_continue: usize,
}

impl RecoverKey {
    /// The key of a block.
    pub fn of(block: &crate::ThoughtBlock) -> Self {
        RecoverKey {
            end: block.end,
            l_inst: block.l_inst,
            n_comp: block.n_comp,
            n_continue: block.n_continue,
        }
    }
}

/// What a recover sample appends after the aug sequence: `added_len` tokens
/// (`<|recover|>`, the recovered thoughts, EOS) reconstructing the blocks whose keys are listed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecoverSpec {
    /// Number of appended tokens.
    pub added_len: usize,
    /// Keys of the recovered blocks (keys matching no block are ignored, as in the reference).
    pub keys: Vec<RecoverKey>,
}

/// Check that a layout is one the reference could have produced: non-empty, blocks in order,
/// non-overlapping (`start >= previous block_end()`), `start <= end`, every block starting inside
/// the sequence. Ends (and so cache blocks) may lie past `len` (truncation).
pub fn validate(layout: &Layout) -> Result<(), MaskError> {
    const MAX: usize = (u32::MAX / 4) as usize;
    if layout.len == 0 {
        return Err(MaskError::EmptySequence);
    }
    if layout.len > MAX {
        return Err(MaskError::TooLong {
            field: "layout.len",
            value: layout.len,
            max: MAX,
        });
    }
    let mut prev_end: Option<usize> = None;
    for (index, b) in layout.blocks.iter().enumerate() {
        if b.end < b.start {
            return Err(MaskError::BlockInverted {
                index,
                start: b.start,
                end: b.end,
            });
        }
        if b.start >= layout.len {
            return Err(MaskError::BlockOutside {
                index,
                start: b.start,
                len: layout.len,
            });
        }
        for (field, v) in [
            ("end", b.end),
            ("l_inst", b.l_inst),
            ("n_comp", b.n_comp),
            ("n_continue", b.n_continue),
        ] {
            if v > MAX {
                return Err(MaskError::TooLong {
                    field,
                    value: v,
                    max: MAX,
                });
            }
        }
        if let Some(p) = prev_end {
            if b.start < p {
                return Err(MaskError::BlockOverlap {
                    index,
                    start: b.start,
                    prev_end: p,
                });
            }
        }
        prev_end = Some(b.block_end());
    }
    Ok(())
}

/// Block boundaries clamped to the matrix size `n`, as `u32`.
#[derive(Debug, Clone, Copy)]
struct B {
    s: u32,
    i: u32,
    /// unclamped Z (for the `Z < T` test of `diagonal`)
    z_raw: usize,
    z: u32,
    u: u32,
    n_continue: usize,
    kind: BlockKind,
}

fn clamp_blocks(layout: &Layout, n: usize) -> Vec<B> {
    let c = |v: usize| v.min(n) as u32;
    layout
        .blocks
        .iter()
        .map(|b| B {
            s: c(b.start),
            i: c(b.cache_start()),
            z_raw: b.cache_end(),
            z: c(b.cache_end()),
            u: c(b.block_end()),
            n_continue: b.n_continue,
            kind: b.kind,
        })
        .collect()
}

/// Core row generator shared by the aug and recover builders: rows `0..n` over `n` columns.
/// `extra_hide` (sorted, disjoint) is removed from rows `>= extra_from`.
fn build_rows(
    blocks: &[B],
    flags: &MaskFlags,
    n: usize,
    extra_from: usize,
    extra_hide: &[(u32, u32)],
    padded: usize,
) -> Builder {
    // The last reset op ((b) for a prompt block, (c) for the first output block after a prompt
    // block) and its row threshold: rows below it are plain causal apart from that block's own
    // (d)/(e)/(f). Thresholds are monotone in the block index for valid layouts, so the last one
    // decides.
    let mut reset: Option<(usize, u32)> = None;
    if !flags.prefill_compress {
        for (k, b) in blocks.iter().enumerate() {
            match b.kind {
                BlockKind::Prompt => reset = Some((k, b.z)),
                BlockKind::Output if k >= 1 && blocks[k - 1].kind == BlockKind::Prompt => {
                    reset = Some((k, b.s))
                }
                BlockKind::Output => {}
            }
        }
    }
    let est = n * (blocks.len() / 2 + 2);
    let mut out = Builder::with_capacity(padded, padded, est);
    // complement of the hidden columns of passed blocks: finite visible intervals + open tail
    let mut vis: Vec<(u32, u32)> = Vec::with_capacity(2 * blocks.len() + 1);
    let mut tail: u32 = 0;
    let mut m = 0usize; // first block with Z > r
    let mut scratch: Vec<(u32, u32)> = Vec::new();

    let own = |out: &mut Builder, b: &B, r: u32| {
        out.push(b.s, b.i);
        if flags.diagonal && b.z_raw < n {
            out.push(r, r + 1);
        } else if flags.bi_directional {
            out.push(b.i, b.z);
        } else {
            out.push(b.i, r + 1);
        }
    };

    for r in 0..n as u32 {
        while m < blocks.len() && blocks[m].z <= r {
            let b = &blocks[m];
            let mut hide = |a: u32, e: u32| {
                if a < e {
                    if a > tail {
                        vis.push((tail, a));
                    }
                    tail = tail.max(e);
                }
            };
            if flags.exclude_continue && m >= 1 && blocks[m - 1].n_continue != 0 {
                let p = &blocks[m - 1];
                hide(p.z, p.u);
            }
            hide(b.s, b.i);
            m += 1;
        }
        match reset {
            Some((kr, xr)) if r < xr => {
                let b = &blocks[kr];
                if b.kind == BlockKind::Prompt && b.i <= r && r < b.z {
                    if !flags.see_current {
                        out.push(0, b.s);
                    }
                    own(&mut out, b, r);
                } else {
                    out.push(0, r + 1);
                }
            }
            _ => {
                let cur = blocks.get(m).filter(|b| b.i <= r);
                match cur {
                    Some(b) => {
                        if !flags.see_current {
                            // `vis` is sorted, disjoint, non-adjacent and ends before `tail`
                            out.spans.extend_from_slice(&vis);
                            out.push(tail, b.s);
                        }
                        own(&mut out, b, r);
                    }
                    None => {
                        // every hidden range ends at or before `r` here, so no clipping needed
                        out.spans.extend_from_slice(&vis);
                        out.push(tail, r + 1);
                    }
                }
            }
        }
        if r as usize >= extra_from && !extra_hide.is_empty() {
            out.take_current(&mut scratch);
            subtract_into(&scratch, extra_hide, &mut out);
        }
        out.end_row();
    }
    out
}

/// Push `row \ hide` (both sorted, disjoint) into the builder's current row.
fn subtract_into(row: &[(u32, u32)], hide: &[(u32, u32)], out: &mut Builder) {
    let mut h = 0usize;
    for &(a, b) in row {
        let mut start = a;
        while h < hide.len() && hide[h].1 <= start {
            h += 1;
        }
        let mut j = h;
        while start < b {
            match hide.get(j) {
                Some(&(ha, he)) if ha < b => {
                    if ha > start {
                        out.push(start, ha);
                    }
                    start = start.max(he);
                    if he <= b {
                        j += 1;
                    } else {
                        break;
                    }
                }
                _ => {
                    out.push(start, b);
                    break;
                }
            }
        }
    }
}

fn finish(mut out: Builder, n: usize, pad_to: Option<usize>) -> IntervalMask {
    if let Some(p) = pad_to {
        for _ in n..p {
            out.copy_row(n - 1);
        }
    }
    debug_assert_eq!(out.rows(), pad_to.unwrap_or(0).max(n));
    out.finish()
}

fn check_pad(pad_to: Option<usize>) -> Result<(), MaskError> {
    match pad_to {
        Some(p) if p > (u32::MAX / 4) as usize => Err(MaskError::TooLong {
            field: "pad_to",
            value: p,
            max: (u32::MAX / 4) as usize,
        }),
        _ => Ok(()),
    }
}

/// The training mask of an aug / aug-wo-pc / prompt-recover sample: the reference's
/// `create_attention_for_aug_data`, bit for bit.
///
/// The result is `P x P` with `P = max(pad_to, layout.len)`; padded rows copy the last real row
/// and see no column `>= layout.len` (not even themselves).
///
/// ```
/// use lt_mask::{global_mask, BlockKind, Layout, MaskFlags, ThoughtBlock};
/// // BOS Q : | a b \n SPL | o0 o1 | CON | c \n SPL | o0 o1 | CON | EOS   (spec §6)
/// let blk = |start, end| ThoughtBlock { start, end, l_inst: 0, n_comp: 2, n_continue: 1, kind: BlockKind::Output };
/// let layout = Layout { len: 17, blocks: vec![blk(3, 7), blk(10, 13)] };
/// let m = global_mask(&layout, &MaskFlags::default(), Some(18)).unwrap();
/// assert_eq!(m.row(9), &[(0, 3), (7, 10)]);         // CON no longer sees thought 1
/// assert_eq!(m.row(17), m.row(16));                 // padded row copies the last real row
/// ```
pub fn global_mask(
    layout: &Layout,
    flags: &MaskFlags,
    pad_to: Option<usize>,
) -> Result<IntervalMask, MaskError> {
    validate(layout)?;
    check_pad(pad_to)?;
    let n = layout.len;
    let blocks = clamp_blocks(layout, n);
    let p = pad_to.unwrap_or(0).max(n);
    let out = build_rows(&blocks, flags, n, n, &[], p);
    Ok(finish(out, n, pad_to))
}

/// The training mask of a recover sample with at least one recovered thought: the reference's
/// `create_attention_for_recover_data`. `layout.len` is the aug length `T_a`; the matrix covers
/// `T' = T_a + recover.added_len` tokens (padded to `pad_to`). Returns the mask and the position
/// offset of the appended block (`1 +` the largest column `< T_a` visible from row `T' - 1`;
/// `0` if there is none).
///
/// `flags.diagonal = true` with any block is refused with [`MaskError::DiagonalInRecover`]
/// (the reference asserts).
pub fn recover_mask(
    layout: &Layout,
    recover: &RecoverSpec,
    flags: &MaskFlags,
    pad_to: Option<usize>,
) -> Result<(IntervalMask, usize), MaskError> {
    validate(layout)?;
    check_pad(pad_to)?;
    if flags.diagonal && !layout.blocks.is_empty() {
        return Err(MaskError::DiagonalInRecover);
    }
    let t_a = layout.len;
    let n = t_a.saturating_add(recover.added_len);
    if n > (u32::MAX / 4) as usize {
        return Err(MaskError::TooLong {
            field: "layout.len + recover.added_len",
            value: n,
            max: (u32::MAX / 4) as usize,
        });
    }
    let blocks = clamp_blocks(layout, n);
    // columns hidden from the appended rows: non-recovered output blocks, then the aug tail
    let mut hide: Vec<(u32, u32)> = Vec::new();
    for (b, raw) in blocks.iter().zip(&layout.blocks) {
        if raw.kind == BlockKind::Output && !recover.keys.contains(&RecoverKey::of(raw)) {
            hide.push((b.s, b.u));
        }
    }
    if let Some(last) = layout.blocks.last() {
        let u = last.block_end();
        if t_a > u {
            hide.push((u as u32, t_a as u32));
        }
    }
    hide.retain(|&(a, b)| a < b);
    let p = pad_to.unwrap_or(0).max(n);
    let out = build_rows(&blocks, flags, n, t_a, &hide, p);
    let offset = out_last_row_offset(&out, t_a as u32);
    Ok((finish(out, n, pad_to), offset))
}

fn out_last_row_offset(out: &Builder, t_a: u32) -> usize {
    let m = out.last_row();
    m.iter()
        .filter(|&&(a, _)| a < t_a)
        .map(|&(_, b)| b.min(t_a) as usize)
        .max()
        .unwrap_or(0)
}

/// Build many aug masks in parallel (rayon), one result per item, in order.
pub fn global_masks(
    items: &[(Layout, MaskFlags)],
    pad_to: Option<usize>,
) -> Vec<Result<IntervalMask, MaskError>> {
    items
        .par_iter()
        .map(|(l, f)| global_mask(l, f, pad_to))
        .collect()
}
