//! An explicit, evictable key/value cache for every layer.
use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::ModelError;

/// KV cache for all layers: per layer one K and one V tensor of shape
/// `[batch, kv_heads, capacity, head_dim]` (keys stored after RoPE, like HF).
///
/// Rows may have different lengths (ragged batches); [`crate::Model::forward`] appends each
/// row's new entries at that row's own length and hides slots beyond it. The position id of every
/// slot is tracked per row ([`KvCache::positions`], [`KvCache::row_positions`]).
///
/// ```no_run
/// # use lt_model::{Model, ModelConfig, Device, Kind};
/// let model = Model::random(&ModelConfig::tiny_llama(16, 16, 1, 2, 1, 16), Device::Cpu, Kind::Float, 0).unwrap();
/// let cache = model.new_cache(1, 8);
/// assert!(cache.is_empty());
/// assert_eq!(cache.capacity(), 8);
/// ```
#[derive(Debug)]
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    lens: Vec<usize>,
    positions: Vec<Vec<i64>>,
    capacity: usize,
    kv_heads: i64,
    head_dim: i64,
    kind: Kind,
    device: Device,
    /// The fused CPU step's raw views of `k` / `v` per layer, taken once and dropped whenever
    /// they are reallocated ([`KvCache::reserve`]).
    pub(crate) fused_layouts: Option<Vec<(crate::fused::KvLayout, crate::fused::KvLayout)>>,
}

impl KvCache {
    /// An empty cache (normally made by [`crate::Model::new_cache`]).
    pub fn new(
        layers: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        kind: Kind,
        device: Device,
    ) -> Self {
        let capacity = capacity.max(1);
        let shape = [
            batch as i64,
            kv_heads as i64,
            capacity as i64,
            head_dim as i64,
        ];
        // ordinary tensors even when made inside InferenceMode: the cache is updated in place
        // both inside (append) and possibly outside (evict) the mode
        let _mode = crate::InferenceMode::disabled();
        let alloc = || Tensor::zeros(shape, (kind, device));
        KvCache {
            k: (0..layers).map(|_| alloc()).collect(),
            v: (0..layers).map(|_| alloc()).collect(),
            lens: vec![0; batch],
            positions: vec![Vec::with_capacity(capacity); batch],
            capacity,
            kv_heads: kv_heads as i64,
            head_dim: head_dim as i64,
            kind,
            device,
            fused_layouts: None,
        }
    }

    /// Slots in use (row 0; all rows for an unragged batch).
    pub fn len(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }
    /// No slot in use in any row.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }
    /// Allocated slots per row (grows automatically).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Batch rows.
    pub fn batch(&self) -> usize {
        self.lens.len()
    }
    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.k.len()
    }
    /// Element kind of the stored K/V.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Device of the stored K/V.
    pub fn device(&self) -> Device {
        self.device
    }
    /// Position id of each slot of row 0.
    pub fn positions(&self) -> &[i64] {
        self.row_positions(0)
    }
    /// Position id of each slot of `row`.
    pub fn row_positions(&self, row: usize) -> &[i64] {
        self.positions.get(row).map(|p| p.as_slice()).unwrap_or(&[])
    }
    /// Slots in use in `row`.
    pub fn row_len(&self, row: usize) -> usize {
        self.lens.get(row).copied().unwrap_or(0)
    }
    /// Longest row.
    pub fn max_len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }
    /// Whether all rows have the same length.
    pub fn is_uniform(&self) -> bool {
        self.lens.windows(2).all(|w| w[0] == w[1])
    }
    /// Bytes of K+V in use: `sum(row lens) * layers * 2 * kv_heads * head_dim * elem_size`
    /// (batch 1: `len * layers * 2 * kv_heads * head_dim * elem`).
    pub fn bytes(&self) -> usize {
        self.lens.iter().sum::<usize>() * self.slot_bytes()
    }
    /// Bytes allocated (capacity, all rows).
    pub fn allocated_bytes(&self) -> usize {
        self.capacity * self.batch() * self.slot_bytes()
    }
    fn slot_bytes(&self) -> usize {
        self.k.len() * 2 * (self.kv_heads * self.head_dim) as usize * self.kind.elt_size_in_bytes()
    }

    /// Key tensor of `layer` (full capacity view; slots `>= row_len` are garbage).
    pub fn keys(&self, layer: usize) -> Option<&Tensor> {
        self.k.get(layer)
    }
    /// Value tensor of `layer` (full capacity view).
    pub fn values(&self, layer: usize) -> Option<&Tensor> {
        self.v.get(layer)
    }

    /// Drop slots `range` of every row and every layer (K and V), shifting the tail left.
    /// The remaining entries keep their exact bits; ranges are clamped to each row's length.
    pub fn evict(&mut self, range: Range<usize>) {
        for row in 0..self.batch() {
            self.evict_row(row, range.clone());
        }
    }

    /// Drop slots `range` of one row (all layers), shifting that row's tail left.
    /// Out-of-range rows / empty ranges are no-ops; the range is clamped to the row length.
    pub fn evict_row(&mut self, row: usize, range: Range<usize>) {
        let Some(&len) = self.lens.get(row) else {
            return;
        };
        let start = range.start.min(len);
        let end = range.end.min(len);
        if start >= end {
            return;
        }
        let tail = (len - end) as i64;
        let _g = tch::no_grad_guard();
        let rows_last_dense = |t: &Tensor| t.stride().get(3) == Some(&1);
        if tail > 0
            && self.device == Device::Cpu
            && self.k.iter().chain(&self.v).all(rows_last_dense)
        {
            // a CPU cache: move the tail with memmove per head (two libtorch copies per tensor
            // cost ~1–2 µs each, and a thought's eviction needs 16 of them on a 4-layer model)
            let (heads, elem) = (self.kv_heads as usize, self.kind.elt_size_in_bytes());
            let slot_bytes = self.head_dim as usize * elem;
            for t in self.k.iter().chain(self.v.iter()) {
                let st = t.stride();
                let base = t.data_ptr() as *mut u8;
                for h in 0..heads {
                    let at = |s: usize| {
                        ((row as i64 * st[0] + h as i64 * st[1] + s as i64 * st[2]) * elem as i64)
                            as isize
                    };
                    // SAFETY: row < batch, h < kv_heads and slots start..start+tail, end..len
                    // lie within the tensor (len <= its slot count); each slot's head_dim
                    // elements are contiguous (stride 1) and slots of one head are `st[2]`
                    // apart, so for st[2] == head_dim the tail is one block: `copy` moves it
                    // overlapping-safe; otherwise slot by slot, front to back (start < end)
                    unsafe {
                        if st[2] == self.head_dim {
                            std::ptr::copy(
                                base.offset(at(end)),
                                base.offset(at(start)),
                                tail as usize * slot_bytes,
                            );
                        } else {
                            for i in 0..tail as usize {
                                std::ptr::copy(
                                    base.offset(at(end + i)),
                                    base.offset(at(start + i)),
                                    slot_bytes,
                                );
                            }
                        }
                    }
                }
            }
        } else if tail > 0 {
            for t in self.k.iter_mut().chain(self.v.iter_mut()) {
                let r = t.narrow(0, row as i64, 1);
                // clone first: source and destination may overlap
                let src = r.narrow(2, end as i64, tail).copy();
                r.narrow(2, start as i64, tail).copy_(&src);
            }
        }
        self.positions[row].drain(start..end);
        self.lens[row] = len - (end - start);
    }

    /// Keep the first `len` slots of every row (longer rows only).
    pub fn truncate(&mut self, len: usize) {
        for (l, p) in self.lens.iter_mut().zip(self.positions.iter_mut()) {
            if *l > len {
                *l = len;
                p.truncate(len);
            }
        }
    }

    /// Forget everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Make room for `extra` more slots in the longest row (reallocating by doubling).
    pub(crate) fn reserve(&mut self, extra: usize) {
        let need = self.max_len() + extra;
        if need <= self.capacity {
            return;
        }
        let new_cap = need.max(self.capacity * 2);
        tracing::debug!(from = self.capacity, to = new_cap, "growing KV cache");
        let _mode = crate::InferenceMode::disabled();
        let _g = tch::no_grad_guard();
        self.fused_layouts = None;
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut s = t.size();
            let old = s[2];
            s[2] = new_cap as i64;
            let n = Tensor::zeros(s.as_slice(), (self.kind, self.device));
            n.narrow(2, 0, old).copy_(t);
            *t = n;
        }
        self.capacity = new_cap;
    }

    /// Lend `row` as a batch-1 cache that shares this cache's storage: forwards and evictions
    /// through it update the row in place. Room for `extra` more slots is made first, so the
    /// view never has to grow. Give it back with [`KvCache::return_row`] before using the row
    /// here again (until then the row reads as empty of positions). `None` for a row out of range.
    ///
    /// This is how a ragged batch step runs one row's long block alone (lt-infer) instead of
    /// padding every row to it.
    ///
    /// ```no_run
    /// # use lt_model::{Model, ModelConfig, Device, Kind};
    /// # let model = Model::random(&ModelConfig::tiny_llama(16, 16, 1, 2, 1, 16), Device::Cpu, Kind::Float, 0).unwrap();
    /// let mut cache = model.new_cache(4, 32);
    /// let mut one = cache.borrow_row(2, 8).unwrap();
    /// assert_eq!(one.batch(), 1);
    /// // ... model.forward(&ids, &pos, AttnMask::Causal, Some(&mut one), Logits::Last) ...
    /// cache.return_row(2, one);
    /// ```
    pub fn borrow_row(&mut self, row: usize, extra: usize) -> Option<KvCache> {
        let len = *self.lens.get(row)?;
        self.reserve((len + extra).saturating_sub(self.max_len()));
        let r = row as i64;
        Some(KvCache {
            k: self.k.iter().map(|t| t.narrow(0, r, 1)).collect(),
            v: self.v.iter().map(|t| t.narrow(0, r, 1)).collect(),
            lens: vec![len],
            positions: vec![std::mem::take(&mut self.positions[row])],
            capacity: self.capacity,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            kind: self.kind,
            device: self.device,
            fused_layouts: None,
        })
    }

    /// Take back a row lent by [`KvCache::borrow_row`]: its length and positions (and, should
    /// the view have grown after all, its slots).
    pub fn return_row(&mut self, row: usize, mut view: KvCache) {
        if row >= self.batch() || view.batch() != 1 {
            return;
        }
        let len = view.lens[0];
        if view.capacity != self.capacity {
            // the view reallocated: copy its slots back into this cache's storage
            self.reserve(len.saturating_sub(self.max_len()));
            let _mode = crate::InferenceMode::disabled();
            let _g = tch::no_grad_guard();
            for (dst, src) in self
                .k
                .iter_mut()
                .chain(self.v.iter_mut())
                .zip(view.k.iter().chain(view.v.iter()))
            {
                dst.narrow(0, row as i64, 1)
                    .narrow(2, 0, len as i64)
                    .copy_(&src.narrow(2, 0, len as i64));
            }
        }
        self.lens[row] = len;
        self.positions[row] = std::mem::take(&mut view.positions[0]);
    }

    /// Lengths before the current append, per row.
    pub(crate) fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Write `k_new`, `v_new` ([B, kv_heads, T, D]) of `layer` after each row's length and return
    /// K, V views covering `[0, max_len + T)`. Lengths are committed by [`KvCache::commit`].
    pub(crate) fn append_layer(
        &mut self,
        layer: usize,
        k_new: &Tensor,
        v_new: &Tensor,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let t = k_new.size()[2];
        let (Some(kc), Some(vc)) = (self.k.get_mut(layer), self.v.get_mut(layer)) else {
            return Err(ModelError::Input(format!("cache has no layer {layer}")));
        };
        let cast = |t: &Tensor| {
            if t.kind() == self.kind {
                t.shallow_clone()
            } else {
                t.to_kind(self.kind)
            }
        };
        let (k_new, v_new) = (cast(k_new), cast(v_new));
        let uniform = self.lens.windows(2).all(|w| w[0] == w[1]);
        if uniform {
            let l = self.lens.first().copied().unwrap_or(0) as i64;
            kc.narrow(2, l, t).copy_(&k_new);
            vc.narrow(2, l, t).copy_(&v_new);
        } else {
            for (b, &l) in self.lens.iter().enumerate() {
                let b = b as i64;
                kc.narrow(0, b, 1)
                    .narrow(2, l as i64, t)
                    .copy_(&k_new.narrow(0, b, 1));
                vc.narrow(0, b, 1)
                    .narrow(2, l as i64, t)
                    .copy_(&v_new.narrow(0, b, 1));
            }
        }
        let total = self.lens.iter().copied().max().unwrap_or(0) as i64 + t;
        Ok((kc.narrow(2, 0, total), vc.narrow(2, 0, total)))
    }

    /// Record `t` appended slots per row with their position ids (`positions[b]` has length t).
    pub(crate) fn commit(&mut self, positions: &[Vec<i64>]) {
        for ((l, p), new) in self
            .lens
            .iter_mut()
            .zip(self.positions.iter_mut())
            .zip(positions)
        {
            *l += new.len();
            p.extend_from_slice(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eviction compacts in place (memmove on CPU): every row's survivors equal the row before
    /// with the range cut out, bit for bit, for f32 and bf16, the other rows untouched.
    #[test]
    fn evict_row_moves_exact_bits() {
        let _g = tch::no_grad_guard();
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut c = KvCache::new(2, 3, 2, 8, 12, kind, Device::Cpu);
            for t in c.k.iter_mut().chain(c.v.iter_mut()) {
                t.copy_(&Tensor::randn([3, 2, 12, 8], (Kind::Float, Device::Cpu)));
            }
            c.commit(&[(0..10).collect(), (0..7).collect(), (0..12).collect()]);
            let before: Vec<Tensor> = c.k.iter().chain(&c.v).map(Tensor::copy).collect();
            c.evict_row(1, 2..5);
            c.evict_row(2, 3..4);
            assert_eq!((c.row_len(0), c.row_len(1), c.row_len(2)), (10, 4, 11));
            assert_eq!(c.row_positions(1), &[0, 1, 5, 6]);
            for (b, a) in before.iter().zip(c.k.iter().chain(&c.v)) {
                assert!(a.get(0).equal(&b.get(0)), "{kind:?}: row 0 changed");
                let want1 = Tensor::cat(&[b.get(1).narrow(1, 0, 2), b.get(1).narrow(1, 5, 2)], 1);
                assert!(a.get(1).narrow(1, 0, 4).equal(&want1), "{kind:?}: row 1");
                let want2 = Tensor::cat(&[b.get(2).narrow(1, 0, 3), b.get(2).narrow(1, 4, 8)], 1);
                assert!(a.get(2).narrow(1, 0, 11).equal(&want2), "{kind:?}: row 2");
            }
        }
    }
}
