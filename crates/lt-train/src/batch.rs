//! Micro-batches on the device and the data sources the training loop pulls them from.
use crate::error::{Result, TrainError};
use lt_data::{Batch, BuiltRow, PadTo};
use lt_mask::MaskFlags;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

/// One collated micro-batch plus its bookkeeping.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// The padded batch (ids, labels, positions, per-row masks).
    pub batch: Batch,
    /// Real (unpadded) tokens in the batch; used for tokens/s.
    pub real_tokens: usize,
}

impl TrainBatch {
    /// Collate `rows` with `lt_data::collate` (masks built in parallel).
    pub fn from_rows(
        rows: &[BuiltRow],
        flags: &MaskFlags,
        pad: PadTo,
        pad_id: i64,
    ) -> Result<Self> {
        let batch = lt_data::collate(rows, flags, pad, pad_id)?;
        Ok(Self {
            batch,
            real_tokens: rows.iter().map(BuiltRow::len).sum(),
        })
    }

    /// Wrap an already collated batch (real tokens = all `batch * seq_len` positions).
    pub fn from_batch(batch: Batch) -> Self {
        let real_tokens = batch.batch * batch.seq_len;
        Self { batch, real_tokens }
    }

    /// Labelled positions (the batch's contribution to `N_window`).
    pub fn n_labelled(&self) -> usize {
        crate::loss::count_labels(&self.batch.labels)
    }

    /// Move to `device`: `(input_ids, labels, position_ids, mask)` with ids/labels/positions
    /// `[B, T]` Int64 and the mask `[B, 1, T, T]` Bool (true = visible) or `None` (causal).
    pub fn to_tensors(&self, device: Device) -> Result<DeviceBatch> {
        let b = &self.batch;
        let shape = [b.batch as i64, b.seq_len as i64];
        let check = |n: usize, what: &str| {
            if n != b.batch * b.seq_len {
                Err(TrainError::Data(format!(
                    "batch {what} has {n} values, expected {}",
                    b.batch * b.seq_len
                )))
            } else {
                Ok(())
            }
        };
        check(b.input_ids.len(), "input_ids")?;
        check(b.labels.len(), "labels")?;
        check(b.position_ids.len(), "position_ids")?;
        let t = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        let mask = match &b.masks {
            None => None,
            Some(ms) => {
                if ms.len() != b.batch {
                    return Err(TrainError::Data(format!(
                        "{} masks for {} rows",
                        ms.len(),
                        b.batch
                    )));
                }
                let mut bytes = Vec::with_capacity(b.batch * b.seq_len * b.seq_len);
                for m in ms {
                    if m.rows() != b.seq_len || m.cols() != b.seq_len {
                        return Err(TrainError::Data(format!(
                            "mask is {}x{}, the batch is padded to {}",
                            m.rows(),
                            m.cols(),
                            b.seq_len
                        )));
                    }
                    bytes.extend(m.to_dense().into_iter().map(u8::from));
                }
                Some(
                    Tensor::from_slice(&bytes)
                        .view([b.batch as i64, 1, b.seq_len as i64, b.seq_len as i64])
                        .to_kind(Kind::Bool)
                        .to_device(device),
                )
            }
        };
        Ok(DeviceBatch {
            input_ids: t(&b.input_ids),
            labels: t(&b.labels),
            position_ids: t(&b.position_ids),
            mask,
        })
    }
}

/// Tensors of one micro-batch on the training device.
#[derive(Debug)]
pub struct DeviceBatch {
    /// `[B, T]` Int64.
    pub input_ids: Tensor,
    /// `[B, T]` Int64, -100 = ignored.
    pub labels: Tensor,
    /// `[B, T]` Int64.
    pub position_ids: Tensor,
    /// `[B, 1, T, T]` Bool (true = visible), `None` = plain causal.
    pub mask: Option<Tensor>,
}

/// Where the training loop gets its micro-batches.
///
/// `micro_batch(epoch, index)` must be a pure function of its arguments (given the source's
/// construction): that is what lets `--resume` re-create the exact data stream without saving
/// it. A generator of fresh synthetic problems seeds its RNG from `(epoch, index)`.
pub trait DataSource {
    /// Micro-batches per epoch; `None` = an unbounded stream (then `max_steps` is required).
    fn micro_batches_per_epoch(&self) -> Option<usize>;
    /// Micro-batch `index` (0-based) of `epoch` (0-based).
    fn micro_batch(&mut self, epoch: usize, index: usize) -> Result<TrainBatch>;
}

/// Adapter: any `FnMut(epoch, index) -> Result<TrainBatch>` is an unbounded [`DataSource`].
///
/// ```no_run
/// # fn make(seed: u64) -> lt_train::TrainBatch { unimplemented!() }
/// let mut src = lt_train::FnSource(|epoch: usize, i: usize| Ok::<_, lt_train::TrainError>(make((epoch * 1_000_003 + i) as u64)));
/// ```
pub struct FnSource<F>(pub F);

impl<F: FnMut(usize, usize) -> Result<TrainBatch>> DataSource for FnSource<F> {
    fn micro_batches_per_epoch(&self) -> Option<usize> {
        None
    }
    fn micro_batch(&mut self, epoch: usize, index: usize) -> Result<TrainBatch> {
        (self.0)(epoch, index)
    }
}

/// A fixed set of built samples, shuffled every epoch (seeded by `seed + epoch`) and cut into
/// micro-batches of `micro_batch_size` samples (the last one may be smaller). In hybrid mode a
/// sample has two rows; a micro-batch then holds the main rows followed by the prompt-recover
/// rows, like the reference collator.
#[derive(Debug, Clone)]
pub struct RowsSource {
    samples: Vec<Vec<BuiltRow>>,
    micro_batch_size: usize,
    flags: MaskFlags,
    pad: PadTo,
    pad_id: i64,
    seed: u64,
    shuffle: bool,
    cached_epoch: Option<(usize, Vec<usize>)>,
}

impl RowsSource {
    /// `samples[i]` = the row(s) of sample `i` (one, or two in hybrid mode).
    pub fn new(
        samples: Vec<Vec<BuiltRow>>,
        micro_batch_size: usize,
        flags: MaskFlags,
        pad: PadTo,
        pad_id: i64,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self> {
        if micro_batch_size == 0 {
            return Err(TrainError::config("micro_batch_size", "must be at least 1"));
        }
        if samples.is_empty() {
            return Err(TrainError::Data("no training samples".into()));
        }
        if let Some(i) = samples.iter().position(|s| s.is_empty()) {
            return Err(TrainError::Data(format!("sample {i} has no rows")));
        }
        Ok(Self {
            samples,
            micro_batch_size,
            flags,
            pad,
            pad_id,
            seed,
            shuffle,
            cached_epoch: None,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples (never true for a constructed source).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sample order of `epoch`.
    pub fn order(&mut self, epoch: usize) -> &[usize] {
        if self.cached_epoch.as_ref().map(|c| c.0) != Some(epoch) {
            let mut idx: Vec<usize> = (0..self.samples.len()).collect();
            if self.shuffle {
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(epoch as u64));
                idx.shuffle(&mut rng);
            }
            self.cached_epoch = Some((epoch, idx));
        }
        &self.cached_epoch.as_ref().expect("just set").1
    }
}

impl DataSource for RowsSource {
    fn micro_batches_per_epoch(&self) -> Option<usize> {
        Some(self.samples.len().div_ceil(self.micro_batch_size))
    }

    fn micro_batch(&mut self, epoch: usize, index: usize) -> Result<TrainBatch> {
        let mbs = self.micro_batch_size;
        let order = self.order(epoch).to_vec();
        let lo = index * mbs;
        if lo >= order.len() {
            return Err(TrainError::Data(format!(
                "micro-batch {index} is past the end of epoch {epoch}"
            )));
        }
        let picked = &order[lo..(lo + mbs).min(order.len())];
        let width = picked
            .iter()
            .map(|&i| self.samples[i].len())
            .max()
            .unwrap_or(1);
        let mut rows = Vec::with_capacity(picked.len() * width);
        for k in 0..width {
            rows.extend(
                picked
                    .iter()
                    .filter_map(|&i| self.samples[i].get(k).cloned()),
            );
        }
        TrainBatch::from_rows(&rows, &self.flags, self.pad, self.pad_id)
    }
}
