//! Inference masks: one decode / compression step over the live KV cache (the reference's
//! `update_attention_local`, LightThinker and AnLLM).
use serde::{Deserialize, Serialize};

use crate::interval::Builder;
use crate::{IntervalMask, MaskError, MaskFlags};

/// The compression indicator of one step, in **cache-slot** coordinates:
/// the reference's `(text_start, text_end, n_inst, comp_start, comp_end, n_continue)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalIndicator {
    /// First slot of the thought being compressed.
    pub text_start: usize,
    /// One past its last slot (LightThinker: includes the splitter fed in this step).
    pub text_end: usize,
    /// Instruction length (always 0 at inference; kept for completeness).
    pub n_inst: usize,
    /// First cache-token slot.
    pub comp_start: usize,
    /// One past the last cache-token slot.
    pub comp_end: usize,
    /// Number of `<|continue|>` tokens fed after the cache tokens.
    pub n_continue: usize,
}

impl LocalIndicator {
    /// LightThinker compression step: the step feeds `[S, O_0..O_{C-1}, K]` after `cache_len`
    /// cached slots, the current thought starts at slot `local_start`.
    /// Gives `(local_start, L+1, 0, L+1, L+1+C, 1)`; use with `new_len = C + 2`.
    pub fn lightthinker(local_start: usize, cache_len: usize, n_comp: usize) -> Self {
        LocalIndicator {
            text_start: local_start,
            text_end: cache_len + 1,
            n_inst: 0,
            comp_start: cache_len + 1,
            comp_end: cache_len + 1 + n_comp,
            n_continue: 1,
        }
    }

    /// AnLLM step: the model generated the anchor, which is fed alone (`new_len = 1`).
    /// Gives `(local_start, L, 0, L, L+1, 0)`.
    pub fn anllm(local_start: usize, cache_len: usize) -> Self {
        LocalIndicator {
            text_start: local_start,
            text_end: cache_len,
            n_inst: 0,
            comp_start: cache_len,
            comp_end: cache_len + 1,
            n_continue: 0,
        }
    }
}

/// Set columns `[a, b)` of a sorted interval row to `visible`.
fn assign(row: &mut Vec<(u32, u32)>, a: u32, b: u32, visible: bool, tmp: &mut Vec<(u32, u32)>) {
    if a >= b {
        return;
    }
    tmp.clear();
    let mut placed = false;
    for &(x, y) in row.iter() {
        if y <= a || x >= b {
            if x >= b && !placed && visible {
                tmp.push((a, b));
                placed = true;
            }
            tmp.push((x, y));
        } else {
            if x < a {
                tmp.push((x, a));
            }
            if visible && !placed {
                tmp.push((a, b));
                placed = true;
            }
            if y > b {
                tmp.push((b, y));
            }
        }
    }
    if visible && !placed {
        tmp.push((a, b));
    }
    // merge adjacent
    row.clear();
    for &(x, y) in tmp.iter() {
        match row.last_mut() {
            Some(last) if x <= last.1 => last.1 = last.1.max(y),
            _ => row.push((x, y)),
        }
    }
}

/// The mask of one inference step: `new_len` query rows (the tokens fed now) over
/// `cache_len + new_len` key columns (the cache after appending them).
///
/// Without an indicator every row sees all cached slots and the new tokens causally. With one,
/// the rows are split as `[prefix | C cache rows | n_continue continue rows]` and:
/// continue rows lose `[text_start, text_end)`; with `see_current` cache rows lose
/// `[0, text_start)`; `bi_directional` makes cache rows see all of `[comp_start, comp_end)`;
/// `diagonal` (applied after, so it wins) makes cache row `j` see only `comp_start + j` there.
/// `exclude_continue` and `prefill_compress` do not apply at inference.
///
/// ```
/// use lt_mask::{local_mask, LocalIndicator, MaskFlags};
/// // cache: 6 prompt slots + a 3-token thought; feed [S, o0, o1, K]
/// let ind = LocalIndicator::lightthinker(6, 9, 2);
/// let m = local_mask(9, 4, Some(&ind), &MaskFlags::default()).unwrap();
/// assert_eq!(m.row(3), &[(0, 6), (10, 13)]);     // K sees the prompt, o0 o1 and itself
/// ```
pub fn local_mask(
    cache_len: usize,
    new_len: usize,
    indicator: Option<&LocalIndicator>,
    flags: &MaskFlags,
) -> Result<IntervalMask, MaskError> {
    let cols = cache_len
        .checked_add(new_len)
        .filter(|&c| c <= (u32::MAX / 4) as usize)
        .ok_or(MaskError::TooLong {
            field: "cache_len + new_len",
            value: cache_len.saturating_add(new_len),
            max: (u32::MAX / 4) as usize,
        })?;
    let mut out = Builder::with_capacity(cols, new_len, new_len * 3);
    let Some(ind) = indicator else {
        for i in 0..new_len {
            out.push(0, (cache_len + i + 1) as u32);
            out.end_row();
        }
        return Ok(out.finish());
    };
    let n_cache = ind.comp_end.checked_sub(ind.comp_start).ok_or_else(|| {
        MaskError::Shape(format!(
            "indicator comp_end {} < comp_start {}",
            ind.comp_end, ind.comp_start
        ))
    })?;
    let n_prefix = new_len
        .checked_sub(n_cache + ind.n_continue)
        .ok_or_else(|| {
            MaskError::Shape(format!(
                "new_len {new_len} < n_comp {n_cache} + n_continue {}",
                ind.n_continue
            ))
        })?;
    if ind.comp_end > cols || ind.text_end > cols || ind.text_start > ind.text_end {
        return Err(MaskError::Shape(format!(
            "indicator {ind:?} does not fit {cols} columns"
        )));
    }
    let (ts, te, cs, ce) = (
        ind.text_start as u32,
        ind.text_end as u32,
        ind.comp_start as u32,
        ind.comp_end as u32,
    );
    let mut row = Vec::with_capacity(4);
    let mut tmp = Vec::with_capacity(4);
    for i in 0..new_len {
        row.clear();
        row.push((0u32, (cache_len + i + 1) as u32));
        if i >= n_prefix + n_cache {
            assign(&mut row, ts, te, false, &mut tmp);
        } else if i >= n_prefix {
            if flags.see_current {
                assign(&mut row, 0, ts, false, &mut tmp);
            }
            if flags.bi_directional {
                assign(&mut row, cs, ce, true, &mut tmp);
            }
            if flags.diagonal {
                assign(&mut row, cs, ce, false, &mut tmp);
                let c = cs + (i - n_prefix) as u32;
                assign(&mut row, c, c + 1, true, &mut tmp);
            }
        }
        for &(a, b) in &row {
            out.push(a, b);
        }
        out.end_row();
    }
    Ok(out.finish())
}
