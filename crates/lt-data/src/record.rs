//! Building whole files: parallel row building, the padded JSONL records of `lightthinker data build`
//! (same layout as the reference goldens) and a summary.
use lt_mask::MaskFlags;
use rayon::prelude::*;
use serde::Serialize;

use crate::batch::pad_row;
use crate::build::{Builder, BuiltRow};
use crate::error::Result;
use crate::sample::TrainSample;

/// One output line of `lightthinker data build`: a padded row, or the error of a sample that cannot be
/// built.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BuildRecord {
    /// A built row, padded to `max_length` exactly like the golden records.
    Row {
        /// 0-based index of the input sample (non-blank line).
        sample_index: usize,
        /// `null`, or 0/1 in hybrid mode.
        hybrid_row: Option<usize>,
        /// `max_length` ids, padded with EOS.
        input_ids: Vec<i64>,
        /// `max_length` labels, padded with -100.
        labels: Vec<i64>,
        /// `max_length` positions padded with 0; `null` in normal mode.
        position_ids: Option<Vec<i64>>,
        /// `max_length` rows of visible `[a, b)` intervals; `null` in normal mode.
        mask: Option<Vec<Vec<[u32; 2]>>>,
    },
    /// A sample that could not be read or built.
    Error {
        /// 0-based index of the input sample.
        sample_index: usize,
        /// Why.
        error: String,
    },
}

/// Counts over a built file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildSummary {
    /// Input samples (non-blank lines).
    pub samples: usize,
    /// Rows written.
    pub rows: usize,
    /// Samples that could not be read or built.
    pub errors: usize,
    /// Samples with at least one row cut at `max_length`.
    pub truncated: usize,
    /// Samples whose rows carry no supervised label at all.
    pub no_supervised: usize,
}

impl BuildSummary {
    /// Add another summary's counts.
    pub fn merge(&mut self, o: &BuildSummary) {
        self.samples += o.samples;
        self.rows += o.rows;
        self.errors += o.errors;
        self.truncated += o.truncated;
        self.no_supervised += o.no_supervised;
    }
}

impl std::fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} samples, {} rows, {} errors, {} truncated at max_length, {} with no supervised tokens",
            self.samples, self.rows, self.errors, self.truncated, self.no_supervised
        )
    }
}

impl Builder<'_> {
    /// Build many samples in parallel (rayon); results are in input order.
    pub fn build_many(&self, samples: &[TrainSample]) -> Vec<Result<Vec<BuiltRow>>> {
        samples.par_iter().map(|s| self.build(s)).collect()
    }

    /// Build the padded records of a chunk of samples in parallel (rows, masks and all), in order.
    /// `first_index` is the `sample_index` of `samples[0]`. Read errors are passed through as error records.
    pub fn build_records(
        &self,
        samples: &[Result<TrainSample>],
        first_index: usize,
        flags: &MaskFlags,
    ) -> (Vec<BuildRecord>, BuildSummary) {
        let p = self.options().max_length;
        let pad = self.eos_id() as i64;
        let per: Vec<(Vec<BuildRecord>, BuildSummary)> = samples
            .par_iter()
            .enumerate()
            .map(|(i, s)| {
                let sample_index = first_index + i;
                let mut sum = BuildSummary {
                    samples: 1,
                    ..Default::default()
                };
                let err = |e: String, mut sum: BuildSummary| {
                    sum.errors = 1;
                    (
                        vec![BuildRecord::Error {
                            sample_index,
                            error: e,
                        }],
                        sum,
                    )
                };
                let rows = match s
                    .as_ref()
                    .map_err(|e| e.to_string())
                    .and_then(|s| self.build(s).map_err(|e| e.to_string()))
                {
                    Ok(r) => r,
                    Err(e) => return err(e, sum),
                };
                let mut recs = Vec::with_capacity(rows.len());
                for row in &rows {
                    let (input_ids, labels, pos) = match pad_row(row, p, pad) {
                        Ok(x) => x,
                        Err(e) => return err(e.to_string(), sum),
                    };
                    let (position_ids, mask) = if row.layout.is_some() {
                        let m = match row.mask(flags, Some(p)) {
                            Ok(m) => m,
                            Err(e) => return err(e.to_string(), sum),
                        };
                        let rows = (0..m.rows())
                            .map(|r| m.row(r).iter().map(|&(a, b)| [a, b]).collect())
                            .collect();
                        (Some(pos), Some(rows))
                    } else {
                        (None, None)
                    };
                    recs.push(BuildRecord::Row {
                        sample_index,
                        hybrid_row: row.hybrid_row,
                        input_ids,
                        labels,
                        position_ids,
                        mask,
                    });
                }
                sum.rows = rows.len();
                sum.truncated = usize::from(rows.iter().any(|r| r.truncated));
                sum.no_supervised = usize::from(rows.iter().all(|r| r.n_labelled() == 0));
                (recs, sum)
            })
            .collect();
        let mut summary = BuildSummary::default();
        let mut out = Vec::new();
        for (recs, s) in per {
            summary.merge(&s);
            out.extend(recs);
        }
        (out, summary)
    }
}
