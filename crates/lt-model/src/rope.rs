//! Rotary position embeddings from explicit position ids (HF `rotate_half` convention).
use tch::{Device, Kind, Tensor};

use crate::ModelConfig;

/// Precomputed inverse frequencies (f32, like HF).
#[derive(Debug)]
pub(crate) struct Rope {
    inv_freq: Tensor, // [head_dim/2] f32
    inv_freq_host: Vec<f32>,
    /// Host table of (cos, sin) per non-negative position, `head_dim/2` values each, grown on
    /// demand (positions below [`TABLE_MAX`]); the same f32 arithmetic as computing them anew.
    table: std::sync::RwLock<(Vec<f32>, Vec<f32>)>,
}

/// Positions beyond this are computed on the fly instead of tabulated.
const TABLE_MAX: usize = 1 << 17;

impl Rope {
    pub(crate) fn new(cfg: &ModelConfig, device: Device) -> Self {
        let dim = cfg.head_dim() as i64;
        // HF: 1 / base ** (arange(0, dim, 2).float() / dim), all in f32.
        let exps = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
            .to_kind(Kind::Float)
            / (dim as f64);
        let base = Tensor::from(cfg.rope_theta as f32);
        let mut inv_freq = base.pow(&exps).reciprocal();
        if let Some(rs) = &cfg.rope_scaling {
            match rs.rope_type.as_deref().unwrap_or("default") {
                "linear" => inv_freq /= rs.factor.unwrap_or(1.0),
                "llama3" => {
                    let factor = rs.factor.unwrap_or(1.0);
                    let lff = rs.low_freq_factor.unwrap_or(1.0);
                    let hff = rs.high_freq_factor.unwrap_or(4.0);
                    let old = rs.original_max_position_embeddings.unwrap_or(8192.0);
                    let low_wl = old / lff;
                    let high_wl = old / hff;
                    let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                    let scaled = &inv_freq / factor;
                    let inv_l = scaled.where_self(&wavelen.gt(low_wl), &inv_freq);
                    let smooth = (wavelen.reciprocal() * old - lff) / (hff - lff);
                    let smoothed =
                        (smooth.ones_like() - &smooth) * &inv_l / factor + &smooth * &inv_l;
                    let medium = wavelen
                        .lt(high_wl)
                        .logical_not()
                        .logical_and(&wavelen.gt(low_wl).logical_not());
                    inv_freq = smoothed.where_self(&medium, &inv_l);
                }
                _ => {}
            }
        }
        let inv_freq = inv_freq.to_kind(Kind::Float);
        let inv_freq_host = Vec::<f32>::try_from(&inv_freq).unwrap_or_default();
        Rope {
            inv_freq: inv_freq.to_device(device),
            inv_freq_host,
            table: std::sync::RwLock::new((Vec::new(), Vec::new())),
        }
    }

    /// cos and the rotation's sin of shape [B, 1, T, head_dim] in `kind` for position ids
    /// [B, T]: `cos = [cos f, cos f]`, `sin = [-sin f, sin f]` — HF's sin with the sign of
    /// `rotate_half` folded into its first half (see [`apply_rope`]).
    pub(crate) fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let pos = position_ids.to_kind(Kind::Float).unsqueeze(-1); // [B,T,1]
        let freqs = pos * self.inv_freq.view([1, 1, -1]); // [B,T,D/2]
        let c = freqs.cos();
        let s = freqs.sin();
        let cos = Tensor::cat(&[&c, &c], -1).unsqueeze(1); // [B,1,T,D]
        let sin = Tensor::cat(&[&(-&s), &s], -1).unsqueeze(1);
        (cos.to_kind(kind), sin.to_kind(kind))
    }
}

impl Rope {
    /// [`Rope::cos_sin`] computed on the host for CPU models: the same f32 products
    /// `position * inv_freq` (HF's f32 matmul with one term is exact), `cos`/`sin` in f32 (libm,
    /// within an ulp of libtorch's vectorised ones), two tensors made at once instead of ~8 ops.
    pub(crate) fn cos_sin_host(
        &self,
        positions: &[i64],
        b: i64,
        t: i64,
        kind: Kind,
    ) -> (Tensor, Tensor) {
        let (cos, sin) = self.cos_sin_host_vecs(positions);
        let d = 2 * self.inv_freq_host.len();
        let shape = [b, 1, t, d as i64];
        let c = Tensor::from_slice(&cos).view(shape);
        let s = Tensor::from_slice(&sin).view(shape);
        if kind == Kind::Float {
            (c, s)
        } else {
            (c.to_kind(kind), s.to_kind(kind))
        }
    }

    /// The f32 values of [`Rope::cos_sin_host`]: `head_dim` cos and `head_dim` sin per position,
    /// row-major.
    pub(crate) fn cos_sin_host_vecs(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq_host.len();
        let d = 2 * half;
        let need = positions
            .iter()
            .filter(|&&p| p >= 0 && (p as usize) < TABLE_MAX)
            .map(|&p| p as usize + 1)
            .max()
            .unwrap_or(0);
        self.grow_table(need);
        let mut cos = vec![0f32; positions.len() * d];
        let mut sin = vec![0f32; positions.len() * d];
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let (tc, ts) = (&table.0, &table.1);
        for (i, &p) in positions.iter().enumerate() {
            let (c, s) = (&mut cos[i * d..(i + 1) * d], &mut sin[i * d..(i + 1) * d]);
            if p >= 0 && (p as usize) < tc.len() / half.max(1) {
                let at = p as usize * half;
                c[..half].copy_from_slice(&tc[at..at + half]);
                s[..half].copy_from_slice(&ts[at..at + half]);
            } else {
                self.fill(p, &mut c[..half], &mut s[..half]);
            }
            c.copy_within(..half, half);
            s.copy_within(..half, half);
            // the sign of rotate_half folded into sin (see `apply_rope`)
            s[..half].iter_mut().for_each(|v| *v = -*v);
        }
        drop(table);
        (cos, sin)
    }

    /// cos / sin of `p * inv_freq` (f32 product, as HF's one-term f32 matmul).
    fn fill(&self, p: i64, c: &mut [f32], s: &mut [f32]) {
        let p = p as f32;
        for (j, &f) in self.inv_freq_host.iter().enumerate() {
            let (sv, cv) = (p * f).sin_cos();
            c[j] = cv;
            s[j] = sv;
        }
    }

    /// Make the table cover positions `< need` (doubling).
    fn grow_table(&self, need: usize) {
        let half = self.inv_freq_host.len();
        if half == 0 {
            return;
        }
        let have = self.table.read().map(|t| t.0.len() / half).unwrap_or(0);
        if need <= have {
            return;
        }
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let have = t.0.len() / half;
        if need <= have {
            return;
        }
        let target = need.max(2 * have).clamp(256, TABLE_MAX);
        let (mut c, mut s) = (vec![0f32; half], vec![0f32; half]);
        for p in have..target {
            self.fill(p as i64, &mut c, &mut s);
            t.0.extend_from_slice(&c);
            t.1.extend_from_slice(&s);
        }
    }
}

/// HF's `x * cos + rotate_half(x) * sin` for x [B, heads, T, D], with `sin` from
/// [`Rope::cos_sin`] (first half negated): `rotate_half(x) * sin_hf = roll(x, D/2) * sin`, exactly
/// (a negation is exact), in 4 ops instead of 7.
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let mut y = x * cos;
    let _ = y.g_add_(&(x.roll([half], [-1]) * sin));
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host table (incl. positions past it and negative ones) agrees with libtorch's cos/sin.
    #[test]
    fn host_table_matches_tensor_path() {
        let cfg = ModelConfig::tiny_llama(16, 32, 1, 2, 1, 16);
        let rope = Rope::new(&cfg, Device::Cpu);
        let pos: Vec<i64> = vec![0, 1, 7, 300, 1000, 300, TABLE_MAX as i64 + 5, -3];
        let n = pos.len() as i64;
        let (hc, hs) = rope.cos_sin_host(&pos, 1, n, Kind::Float);
        let (tc, ts) = rope.cos_sin(&Tensor::from_slice(&pos).view([1, n]), Kind::Float);
        for (h, t) in [(hc, tc), (hs, ts)] {
            assert_eq!(h.size(), t.size());
            let d = (h - t).abs().max().double_value(&[]);
            assert!(d < 1e-4, "max diff {d}");
        }
        // the table grew to cover 1000 but not the far position
        let rows = rope.table.read().unwrap().0.len() / 8;
        assert!((1001..=TABLE_MAX).contains(&rows), "{rows}");
    }
}
