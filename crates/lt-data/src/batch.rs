//! Padding and batching of built rows for training.
use lt_mask::{IntervalMask, MaskFlags};
use rayon::prelude::*;

use crate::build::{BuiltRow, IGNORE};
use crate::error::{DataError, Result};

/// How far rows are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadTo {
    /// To the longest row of the batch (default; much cheaper than the reference).
    #[default]
    Longest,
    /// To a fixed length (the reference always pads to `max_length`).
    MaxLength(usize),
}

/// A padded batch, row-major `[batch * seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Number of rows (2B in hybrid mode).
    pub batch: usize,
    /// Padded length.
    pub seq_len: usize,
    /// Token ids, padded with the pad id (the EOS id in the reference).
    pub input_ids: Vec<i64>,
    /// Labels, padded with -100.
    pub labels: Vec<i64>,
    /// Position ids, padded with 0 (normal rows: 0..T-1).
    pub position_ids: Vec<i64>,
    /// One `seq_len × seq_len` mask per row; `None` when every row is a normal-mode row (plain causal).
    pub masks: Option<Vec<IntervalMask>>,
}

impl Batch {
    /// Number of supervised labels in the batch.
    pub fn n_labelled(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
}

/// Pad one row's ids, labels and positions to `len` (ids with `pad_id`, labels with -100, positions with 0).
pub fn pad_row(row: &BuiltRow, len: usize, pad_id: i64) -> Result<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    let t = row.len();
    if t > len {
        return Err(DataError::Invalid(format!(
            "row of {t} tokens does not fit the padded length {len}"
        )));
    }
    let mut ids = row.input_ids.clone();
    ids.resize(len, pad_id);
    let mut labels = row.labels.clone();
    labels.resize(len, IGNORE);
    let mut pos = match &row.position_ids {
        Some(p) => p.clone(),
        None => (0..t as i64).collect(),
    };
    pos.resize(len, 0);
    Ok((ids, labels, pos))
}

/// Pad `rows` into one [`Batch`] and build their masks in parallel (rayon).
///
/// ```no_run
/// # fn f(rows: &[lt_data::BuiltRow]) -> Result<(), lt_data::DataError> {
/// let batch = lt_data::collate(rows, &lt_mask::MaskFlags::default(), lt_data::PadTo::Longest, 151645)?;
/// assert_eq!(batch.input_ids.len(), batch.batch * batch.seq_len);
/// # Ok(()) }
/// ```
pub fn collate(rows: &[BuiltRow], flags: &MaskFlags, pad: PadTo, pad_id: i64) -> Result<Batch> {
    let mut batch = collate_without_masks(rows, pad, pad_id)?;
    if rows.iter().any(|r| r.layout.is_some()) {
        let seq_len = batch.seq_len;
        let masks = rows
            .par_iter()
            .map(|r| r.mask(flags, Some(seq_len)))
            .collect::<Result<Vec<_>>>()?;
        batch.masks = Some(masks);
    }
    Ok(batch)
}

/// Like [`collate`] but leaves `masks` as `None` (build them later with [`BuiltRow::mask`]).
pub fn collate_without_masks(rows: &[BuiltRow], pad: PadTo, pad_id: i64) -> Result<Batch> {
    if rows.is_empty() {
        return Err(DataError::Invalid("cannot collate an empty batch".into()));
    }
    let longest = rows.iter().map(BuiltRow::len).max().unwrap_or(0);
    let seq_len = match pad {
        PadTo::Longest => longest.max(1),
        PadTo::MaxLength(p) => {
            if longest > p {
                return Err(DataError::Invalid(format!(
                    "a row of {longest} tokens exceeds max_length {p}"
                )));
            }
            p
        }
    };
    let n = rows.len() * seq_len;
    let (mut input_ids, mut labels, mut position_ids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in rows {
        let (i, l, p) = pad_row(r, seq_len, pad_id)?;
        input_ids.extend(i);
        labels.extend(l);
        position_ids.extend(p);
    }
    Ok(Batch {
        batch: rows.len(),
        seq_len,
        input_ids,
        labels,
        position_ids,
        masks: None,
    })
}
