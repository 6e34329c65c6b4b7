//! [`IntervalMask`]: a boolean attention mask stored as per-row visible intervals.
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MaskError;

/// A `rows x cols` boolean mask (true = the query row may attend to the key column), stored as
/// per-row sorted, disjoint, maximal half-open intervals `[a, b)` of visible columns.
///
/// Storage is compressed-row (one flat interval array plus row offsets), so a 4096-token mask with
/// 40 thoughts needs ~1 MiB instead of 16 MiB of booleans. Rows are allowed to be empty (padded
/// rows of degenerate inputs); the builders of this crate never produce an empty real row.
///
/// serde: `{"rows": R, "cols": C, "intervals": [[[a,b],...], ...]}` where `intervals` has exactly
/// the format of the goldens' `mask` field. [`IntervalMask::golden_intervals`] serialises the bare
/// list, [`IntervalMask::from_intervals`] reads it back.
///
/// ```
/// use lt_mask::IntervalMask;
/// let m = IntervalMask::from_intervals(3, vec![vec![(0, 1)], vec![(0, 2)], vec![(0, 1), (2, 3)]]).unwrap();
/// assert!(m.is_visible(2, 2) && !m.is_visible(2, 1));
/// assert_eq!(m.to_dense(), vec![true, false, false, true, true, false, true, false, true]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntervalMask {
    cols: usize,
    /// `offsets[r]..offsets[r+1]` indexes `spans` for row `r`; `offsets.len() == rows + 1`.
    offsets: Vec<usize>,
    spans: Vec<(u32, u32)>,
}

impl IntervalMask {
    /// Number of query rows.
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Number of key columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Visible intervals of row `r` (empty slice when `r` is out of range).
    pub fn row(&self, r: usize) -> &[(u32, u32)] {
        match (self.offsets.get(r), self.offsets.get(r + 1)) {
            (Some(&a), Some(&b)) => &self.spans[a..b],
            _ => &[],
        }
    }

    /// Whether row `r` may attend to column `c` (false outside the shape).
    pub fn is_visible(&self, r: usize, c: usize) -> bool {
        let row = self.row(r);
        let c = match u32::try_from(c) {
            Ok(c) => c,
            Err(_) => return false,
        };
        // first interval whose end is > c
        let i = row.partition_point(|&(_, b)| b <= c);
        i < row.len() && row[i].0 <= c
    }

    /// Number of visible cells in row `r`.
    pub fn row_count(&self, r: usize) -> usize {
        self.row(r).iter().map(|&(a, b)| (b - a) as usize).sum()
    }

    /// Total number of visible cells.
    pub fn count_visible(&self) -> usize {
        self.spans.iter().map(|&(a, b)| (b - a) as usize).sum()
    }

    /// Total number of stored intervals (a size measure of the structured form).
    pub fn n_intervals(&self) -> usize {
        self.spans.len()
    }

    /// Build from explicit rows of intervals, validating that every row is sorted, disjoint,
    /// maximal (adjacent intervals merged), non-empty intervals and `b <= cols`.
    pub fn from_intervals(cols: usize, rows: Vec<Vec<(u32, u32)>>) -> Result<Self, MaskError> {
        if u32::try_from(cols).is_err() {
            return Err(MaskError::TooLong {
                field: "cols",
                value: cols,
                max: u32::MAX as usize,
            });
        }
        let mut b = Builder::with_capacity(cols, rows.len(), rows.iter().map(Vec::len).sum());
        for (r, row) in rows.iter().enumerate() {
            let mut prev_end: Option<u32> = None;
            for &(a, e) in row {
                let bad = |reason| MaskError::BadInterval {
                    row: r,
                    a,
                    b: e,
                    cols,
                    reason,
                };
                if a >= e {
                    return Err(bad("empty or inverted interval"));
                }
                if e as usize > cols {
                    return Err(bad("interval ends past the last column"));
                }
                if let Some(p) = prev_end {
                    if a < p {
                        return Err(bad("intervals overlap or are not sorted"));
                    }
                    if a == p {
                        return Err(bad("adjacent intervals are not merged"));
                    }
                }
                prev_end = Some(e);
                b.spans.push((a, e));
            }
            b.end_row();
        }
        Ok(b.finish())
    }

    /// The rows as owned interval vectors (the goldens' `mask` value).
    pub fn to_interval_rows(&self) -> Vec<Vec<(u32, u32)>> {
        (0..self.rows()).map(|r| self.row(r).to_vec()).collect()
    }

    /// A serialisable view of the bare interval list, exactly the goldens' `mask` format.
    pub fn golden_intervals(&self) -> GoldenIntervals<'_> {
        GoldenIntervals(self)
    }

    /// Row-major dense booleans (`rows * cols`).
    pub fn to_dense(&self) -> Vec<bool> {
        let mut out = vec![false; self.rows() * self.cols];
        self.write_dense(true, false, &mut out);
        out
    }

    /// Fill `out` (row-major, `rows * cols` long) with `visible` / `hidden`, row by row with slice
    /// fills (no per-element branching). Works for any element type: `u8`, `f32`, `half::bf16`, ...
    ///
    /// # Panics
    /// Never; if `out` is shorter than `rows * cols` only the rows that fit are written.
    pub fn write_dense<T: Copy>(&self, visible: T, hidden: T, out: &mut [T]) {
        if self.cols == 0 {
            return;
        }
        for (r, dst) in out
            .chunks_exact_mut(self.cols)
            .take(self.rows())
            .enumerate()
        {
            let mut pos = 0usize;
            for &(a, b) in self.row(r) {
                let (a, b) = (a as usize, b as usize);
                dst[pos..a].fill(hidden);
                dst[a..b].fill(visible);
                pos = b;
            }
            dst[pos..].fill(hidden);
        }
    }

    /// Dense additive `f32` mask: `0.0` where visible, `hidden` (e.g. `f32::NEG_INFINITY` or
    /// `f32::MIN`) where masked.
    pub fn to_additive_f32(&self, hidden: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows() * self.cols];
        self.write_dense(0.0, hidden, &mut out);
        out
    }

    /// Bit-packed rows: `rows * ceil(cols / 64)` words, bit `c % 64` of word `c / 64` = column `c`.
    pub fn to_bitpacked(&self) -> Vec<u64> {
        let words = self.cols.div_ceil(64);
        let mut out = vec![0u64; self.rows() * words];
        for r in 0..self.rows() {
            let dst = &mut out[r * words..(r + 1) * words];
            for &(a, b) in self.row(r) {
                let (a, b) = (a as usize, b as usize);
                let (wa, wb) = (a / 64, (b - 1) / 64);
                let lo = !0u64 << (a % 64);
                let hi = !0u64 >> (63 - (b - 1) % 64);
                if wa == wb {
                    dst[wa] |= lo & hi;
                } else {
                    dst[wa] |= lo;
                    dst[wa + 1..wb].fill(!0);
                    dst[wb] |= hi;
                }
            }
        }
        out
    }

    /// The sub-mask of rows `[r0, r1)` restricted to the given columns (in the given order, which
    /// must be increasing): column `j` of the result is column `keep[j]` of `self`. Used to compare
    /// a global (training) mask with a local (inference) step mask over the columns still cached.
    pub fn select(&self, r0: usize, r1: usize, keep: &[usize]) -> IntervalMask {
        let mut b = Builder::with_capacity(keep.len(), r1.saturating_sub(r0), 0);
        for r in r0..r1.min(self.rows()) {
            for (j, &c) in keep.iter().enumerate() {
                if self.is_visible(r, c) {
                    b.push(j as u32, j as u32 + 1);
                }
            }
            b.end_row();
        }
        b.finish()
    }

    /// ASCII picture, one line per row: `#` visible, `.` masked.
    pub fn to_ascii(&self) -> String {
        let mut s = String::with_capacity(self.rows() * (self.cols + 1));
        let mut row = vec![b'.'; self.cols];
        for r in 0..self.rows() {
            row.fill(b'.');
            for &(a, b) in self.row(r) {
                row[a as usize..b as usize].fill(b'#');
            }
            s.push_str(std::str::from_utf8(&row).unwrap_or_default());
            s.push('\n');
        }
        s
    }
}

#[cfg(feature = "tch")]
impl IntervalMask {
    /// `[rows, cols]` `Bool` tensor on `device` (true = visible). Built from a byte buffer filled
    /// row-wise with slice fills and one `Tensor::from_slice`; no per-element loop.
    pub fn to_bool_tensor(&self, device: tch::Device) -> tch::Tensor {
        let mut bytes = vec![0u8; self.rows() * self.cols];
        self.write_dense(1u8, 0u8, &mut bytes);
        crate::bytes_to_bool(&bytes, &[self.rows() as i64, self.cols as i64]).to_device(device)
    }

    /// `[rows, cols]` additive tensor of `kind` on `device`: `0` where visible and the dtype's
    /// most negative finite value where masked (bf16: -3.3895313892515355e38, as the reference).
    /// Half-precision masks are written as raw bit patterns into a 16-bit buffer and reinterpreted
    /// (`view_dtype`), so no float conversion pass runs over the `rows * cols` cells.
    pub fn to_additive_tensor(&self, kind: tch::Kind, device: tch::Device) -> tch::Tensor {
        crate::additive_tensor(
            std::slice::from_ref(self),
            &[self.rows() as i64, self.cols as i64],
            kind,
        )
        .to_device(device)
    }
}

/// Serialises an [`IntervalMask`] as the bare `[[[a,b],...],...]` list of the goldens.
#[derive(Debug, Clone, Copy)]
pub struct GoldenIntervals<'a>(pub &'a IntervalMask);

struct RowSer<'a>(&'a [(u32, u32)]);

impl Serialize for RowSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for &(a, b) in self.0 {
            seq.serialize_element(&[a, b])?;
        }
        seq.end()
    }
}

impl Serialize for GoldenIntervals<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut seq = s.serialize_seq(Some(m.rows()))?;
        for r in 0..m.rows() {
            seq.serialize_element(&RowSer(m.row(r)))?;
        }
        seq.end()
    }
}

impl Serialize for IntervalMask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("IntervalMask", 3)?;
        st.serialize_field("rows", &self.rows())?;
        st.serialize_field("cols", &self.cols)?;
        st.serialize_field("intervals", &GoldenIntervals(self))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for IntervalMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            rows: usize,
            cols: usize,
            intervals: Vec<Vec<(u32, u32)>>,
        }
        let raw = Raw::deserialize(d)?;
        if raw.rows != raw.intervals.len() {
            return Err(serde::de::Error::custom(format!(
                "rows = {} but {} interval rows",
                raw.rows,
                raw.intervals.len()
            )));
        }
        IntervalMask::from_intervals(raw.cols, raw.intervals).map_err(serde::de::Error::custom)
    }
}

/// Incremental CSR builder used by the mask builders.
#[derive(Debug)]
pub(crate) struct Builder {
    cols: usize,
    offsets: Vec<usize>,
    pub(crate) spans: Vec<(u32, u32)>,
}

impl Builder {
    pub(crate) fn with_capacity(cols: usize, rows: usize, spans: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Builder {
            cols,
            offsets,
            spans: Vec::with_capacity(spans),
        }
    }

    /// Append `[a, b)` to the current row, merging with the previous interval when adjacent or
    /// overlapping. Intervals must come in non-decreasing order of `a`; empty ones are skipped.
    #[inline]
    pub(crate) fn push(&mut self, a: u32, b: u32) {
        if a >= b {
            return;
        }
        let row_start = *self.offsets.last().unwrap_or(&0);
        if self.spans.len() > row_start {
            if let Some(last) = self.spans.last_mut() {
                if a <= last.1 {
                    last.1 = last.1.max(b);
                    return;
                }
            }
        }
        self.spans.push((a, b));
    }

    /// Drop the current (unfinished) row's intervals and return them in `scratch`.
    pub(crate) fn take_current(&mut self, scratch: &mut Vec<(u32, u32)>) {
        let start = *self.offsets.last().unwrap_or(&0);
        scratch.clear();
        scratch.extend_from_slice(&self.spans[start..]);
        self.spans.truncate(start);
    }

    pub(crate) fn end_row(&mut self) {
        self.offsets.push(self.spans.len());
    }

    /// Append a copy of an already finished row `r`.
    pub(crate) fn copy_row(&mut self, r: usize) {
        let (a, b) = (self.offsets[r], self.offsets[r + 1]);
        self.spans.extend_from_within(a..b);
        self.end_row();
    }

    /// Intervals of the last finished row (empty when there is none).
    pub(crate) fn last_row(&self) -> &[(u32, u32)] {
        let k = self.offsets.len();
        if k < 2 {
            return &[];
        }
        &self.spans[self.offsets[k - 2]..self.offsets[k - 1]]
    }

    pub(crate) fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    pub(crate) fn finish(self) -> IntervalMask {
        IntervalMask {
            cols: self.cols,
            offsets: self.offsets,
            spans: self.spans,
        }
    }
}
