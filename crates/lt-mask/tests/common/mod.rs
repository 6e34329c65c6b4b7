//! Shared test helpers: fixture readers and a literal dense port of the reference builders.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::path::Path;

use lt_mask::{BlockKind, Layout, MaskFlags, ThoughtBlock};
use serde_json::Value;

/// Read a (gzipped) JSONL fixture into values.
pub fn read_jsonl_gz(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = BufReader::new(flate2::read::GzDecoder::new(f));
    r.lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Layout from the goldens' `locate_index` / `locate_indicator`.
pub fn layout(len: usize, locate: &Value, kinds: &Value) -> Layout {
    let blocks = locate
        .as_array()
        .unwrap()
        .iter()
        .zip(kinds.as_array().unwrap())
        .map(|(t, k)| {
            let t: Vec<usize> = serde_json::from_value(t.clone()).unwrap();
            ThoughtBlock {
                start: t[0],
                end: t[1],
                l_inst: t[2],
                n_comp: t[3],
                n_continue: t[4],
                kind: match k.as_str().unwrap() {
                    "compressed-prompt" => BlockKind::Prompt,
                    "compressed-output" => BlockKind::Output,
                    other => panic!("kind {other}"),
                },
            }
        })
        .collect();
    Layout { len, blocks }
}

pub fn flags(v: &Value) -> MaskFlags {
    let b = |k: &str| v[k].as_bool().unwrap();
    MaskFlags {
        see_current: b("see_current"),
        bi_directional: b("bi_directional"),
        diagonal: b("diagonal"),
        exclude_continue: b("exclude_continue"),
        prefill_compress: b("prefill_compress"),
    }
}

pub fn intervals(v: &Value) -> Vec<Vec<(u32, u32)>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Dense boolean matrix, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub n: usize,
    pub a: Vec<bool>,
}

impl Dense {
    fn tril(n: usize) -> Self {
        let mut a = vec![false; n * n];
        for r in 0..n {
            for c in 0..=r {
                a[r * n + c] = true;
            }
        }
        Dense { n, a }
    }
    /// Python-slice assignment `A[r0:r1, c0:c1] = f(r, c)` (ends clamped to n).
    fn set(
        &mut self,
        r0: usize,
        r1: usize,
        c0: usize,
        c1: usize,
        f: impl Fn(usize, usize) -> bool,
    ) {
        let n = self.n;
        for r in r0.min(n)..r1.min(n) {
            for c in c0.min(n)..c1.min(n) {
                self.a[r * n + c] = f(r, c);
            }
        }
    }
    pub fn rows(&self) -> Vec<Vec<bool>> {
        self.a.chunks(self.n.max(1)).map(|c| c.to_vec()).collect()
    }
}

/// Steps (a)..(f) of spec §4.1 over `n` rows, literally.
fn aug_steps(m: &mut Dense, layout: &Layout, f: &MaskFlags, diag_ok_len: usize) {
    let n = m.n;
    let mut prev: Option<&ThoughtBlock> = None;
    for b in &layout.blocks {
        let (s, i, z) = (b.start, b.cache_start(), b.cache_end());
        m.set(z, n, s, i, |_, _| false);
        if let (true, Some(p)) = (f.exclude_continue, prev) {
            if p.n_continue != 0 {
                m.set(z, n, p.cache_end(), p.block_end(), |_, _| false);
            }
        }
        if !f.prefill_compress && b.kind == BlockKind::Prompt {
            let zz = z.min(n);
            m.set(0, zz, 0, zz, |r, c| c <= r);
        }
        if !f.prefill_compress
            && b.kind == BlockKind::Output
            && prev.map(|p| p.kind) == Some(BlockKind::Prompt)
        {
            m.set(0, s, 0, s, |r, c| c <= r);
        }
        prev = Some(b);
        if f.bi_directional {
            m.set(i, z, i, z, |_, _| true);
        }
        if f.diagonal && z < diag_ok_len {
            m.set(i, z, i, z, |r, c| r == c);
        }
        if f.see_current {
            m.set(i, z, 0, s, |_, _| false);
        }
    }
}

fn pad(m: Dense, t: usize, pad_to: Option<usize>) -> Dense {
    let p = pad_to.unwrap_or(0);
    if p <= m.n {
        return m;
    }
    let mut b = vec![false; p * p];
    for r in 0..p {
        let src = r.min(t - 1);
        for c in 0..t {
            b[r * p + c] = m.a[src * m.n + c];
        }
    }
    Dense { n: p, a: b }
}

/// Literal port of `create_attention_for_aug_data`.
pub fn dense_aug(layout: &Layout, f: &MaskFlags, pad_to: Option<usize>) -> Dense {
    let t = layout.len;
    let mut m = Dense::tril(t);
    aug_steps(&mut m, layout, f, t);
    pad(m, t, pad_to)
}

/// Literal port of `create_attention_for_recover_data` (diagonal must be false); returns offset.
pub fn dense_recover(
    layout: &Layout,
    added: usize,
    keys: &[lt_mask::RecoverKey],
    f: &MaskFlags,
    pad_to: Option<usize>,
) -> (Dense, usize) {
    let ta = layout.len;
    let n = ta + added;
    let mut m = Dense::tril(n);
    aug_steps(&mut m, layout, f, usize::MAX);
    for b in &layout.blocks {
        if b.kind == BlockKind::Output && !keys.contains(&lt_mask::RecoverKey::of(b)) {
            m.set(ta, n, b.start, b.block_end(), |_, _| false);
        }
    }
    if let Some(last) = layout.blocks.last() {
        if ta > last.block_end() {
            m.set(ta, n, last.block_end(), ta, |_, _| false);
        }
    }
    let offset = (0..ta)
        .rev()
        .find(|&c| m.a[(n - 1) * n + c])
        .map(|c| c + 1)
        .unwrap_or(0);
    (pad(m, n, pad_to), offset)
}

/// Dense rows of an interval mask.
pub fn dense_of(m: &lt_mask::IntervalMask) -> Dense {
    assert_eq!(m.rows(), m.cols());
    Dense {
        n: m.rows(),
        a: m.to_dense(),
    }
}
