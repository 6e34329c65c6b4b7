//! The per-step ("local") attention mask of the reference driver (`update_attention_local`).
//!
//! A step feeds `q` new tokens on top of a cache of `L` slots; the mask has `q` rows and `L + q`
//! columns (physical cache slots after the append). Rows are returned as sorted, disjoint, maximal
//! half-open intervals of visible columns — the format of the goldens' `mask` field and of
//! [`lt_mask::IntervalMask`].
use lt_mask::MaskFlags;

/// Visible column intervals of one mask row.
pub type Row = Vec<(u32, u32)>;

/// The reference's compression indicator `(ts, te, n_inst = 0, cs, ce, nc)` in slot coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indicator {
    /// First slot of the compressed text (the current thought).
    pub text_start: usize,
    /// One past its last slot.
    pub text_end: usize,
    /// First cache-token slot.
    pub comp_start: usize,
    /// One past the last cache-token slot.
    pub comp_end: usize,
    /// Number of `<|continue|>` rows after the cache rows.
    pub n_continue: usize,
}

/// Build the local mask of one step: `q` rows over `cache_len + q` columns.
///
/// Ordinary causality among the new tokens, every cached slot visible, then (with an indicator)
/// continue rows lose `[ts, te)`, `see_current` hides `[0, ts)` from cache rows, `bi_directional`
/// opens `[cs, ce)` to cache rows and `diagonal` (applied last, so it wins) leaves each cache row
/// only its own cache column.
///
/// ```
/// use lt_infer::local::{local_mask, Indicator};
/// let ind = Indicator { text_start: 2, text_end: 5, comp_start: 5, comp_end: 7, n_continue: 1 };
/// // cache of 4 slots (2 prompt + 2 thought), feeding [S, O0, O1, K]
/// let rows = local_mask(4, 4, Some(&ind), &Default::default());
/// assert_eq!(rows[3], vec![(0, 2), (5, 8)]); // K sees the prompt and O, K; not the thought or S
/// ```
pub fn local_mask(
    cache_len: usize,
    q: usize,
    ind: Option<&Indicator>,
    flags: &MaskFlags,
) -> Vec<Row> {
    let cols = cache_len + q;
    let mut dense = vec![false; cols];
    let mut out = Vec::with_capacity(q);
    let (n_prefix, n_cache) = match ind {
        Some(i) => {
            let cn = i.comp_end - i.comp_start;
            (q.saturating_sub(cn + i.n_continue), cn)
        }
        None => (q, 0),
    };
    for r in 0..q {
        // Fast path: rows without an indicator rule are a single prefix interval.
        let is_cache = ind.is_some() && r >= n_prefix && r < n_prefix + n_cache;
        let is_cont = ind.is_some() && r >= n_prefix + n_cache;
        if !is_cache && !is_cont {
            out.push(vec![(0, (cache_len + r + 1) as u32)]);
            continue;
        }
        let i = ind.expect("indicator present for cache/continue rows");
        dense.iter_mut().for_each(|v| *v = false);
        dense[..cache_len + r + 1]
            .iter_mut()
            .for_each(|v| *v = true);
        if is_cont {
            clear(&mut dense, i.text_start, i.text_end);
        } else {
            if flags.see_current {
                clear(&mut dense, 0, i.text_start);
            }
            if flags.bi_directional {
                set(&mut dense, i.comp_start, i.comp_end, true);
            }
            if flags.diagonal {
                clear(&mut dense, i.comp_start, i.comp_end);
                let own = i.comp_start + (r - n_prefix);
                if own < cols {
                    dense[own] = true;
                }
            }
        }
        out.push(intervals(&dense));
    }
    out
}

fn clear(d: &mut [bool], a: usize, b: usize) {
    set(d, a, b, false)
}

fn set(d: &mut [bool], a: usize, b: usize, v: bool) {
    let b = b.min(d.len());
    if a < b {
        d[a..b].iter_mut().for_each(|x| *x = v);
    }
}

/// Dense boolean row → maximal half-open intervals.
pub fn intervals(dense: &[bool]) -> Row {
    let mut out = Vec::new();
    let mut start = None;
    for (j, &v) in dense.iter().enumerate() {
        match (v, start) {
            (true, None) => start = Some(j),
            (false, Some(a)) => {
                out.push((a as u32, j as u32));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        out.push((a as u32, dense.len() as u32));
    }
    out
}

/// Number of visible columns of a row.
pub fn row_count(row: &[(u32, u32)]) -> usize {
    row.iter().map(|&(a, b)| (b - a) as usize).sum()
}

/// Fill `dst` (length = number of columns) with the row's visibility.
pub fn fill_dense(row: &[(u32, u32)], dst: &mut [bool]) {
    for &(a, b) in row {
        let b = (b as usize).min(dst.len());
        for v in &mut dst[a as usize..b] {
            *v = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(sc: bool, bi: bool, diag: bool) -> MaskFlags {
        MaskFlags {
            see_current: sc,
            bi_directional: bi,
            diagonal: diag,
            ..Default::default()
        }
    }

    /// The golden trace: L = 263, local_start = 257, C = 2.
    #[test]
    fn golden_compression_step_default() {
        let ind = Indicator {
            text_start: 257,
            text_end: 264,
            comp_start: 264,
            comp_end: 266,
            n_continue: 1,
        };
        let rows = local_mask(263, 4, Some(&ind), &flags(false, false, false));
        assert_eq!(
            rows,
            vec![
                vec![(0, 264)],
                vec![(0, 265)],
                vec![(0, 266)],
                vec![(0, 257), (264, 267)]
            ]
        );
    }

    /// Visibility table of spec §2.6 for every flag.
    #[test]
    fn flag_table() {
        // P = [0,2), B = [2,4), T = [4,6); S = 6, O = 7,8, K = 9
        let ind = Indicator {
            text_start: 4,
            text_end: 7,
            comp_start: 7,
            comp_end: 9,
            n_continue: 1,
        };
        let sc = local_mask(6, 4, Some(&ind), &flags(true, false, false));
        assert_eq!(sc[1], vec![(4, 8)]);
        assert_eq!(sc[2], vec![(4, 9)]);
        assert_eq!(sc[3], vec![(0, 4), (7, 10)]);
        let bi = local_mask(6, 4, Some(&ind), &flags(false, true, false));
        assert_eq!(bi[1], vec![(0, 9)]);
        let scbi = local_mask(6, 4, Some(&ind), &flags(true, true, false));
        assert_eq!(scbi[1], vec![(4, 9)]);
        let diag = local_mask(6, 4, Some(&ind), &flags(false, true, true));
        assert_eq!(diag[1], vec![(0, 8)]);
        assert_eq!(diag[2], vec![(0, 7), (8, 9)]);
        assert_eq!(diag[0], vec![(0, 7)]);
    }

    /// AnLLM: q = 1, the anchor row with see_current sees only its sentence and itself.
    #[test]
    fn anllm_anchor_row() {
        let ind = Indicator {
            text_start: 6,
            text_end: 9,
            comp_start: 9,
            comp_end: 10,
            n_continue: 0,
        };
        assert_eq!(
            local_mask(9, 1, Some(&ind), &flags(true, false, false))[0],
            vec![(6, 10)]
        );
        assert_eq!(
            local_mask(9, 1, Some(&ind), &flags(false, false, false))[0],
            vec![(0, 10)]
        );
    }
}
