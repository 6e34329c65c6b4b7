//! Property tests: the interval builders against a literal dense port of the reference, the
//! local (inference) / global (training) invariant, and robustness on bad layouts.
mod common;

use common::*;
use lt_mask::{
    global_mask, local_mask, recover_mask, BlockKind, Layout, LocalIndicator, MaskFlags,
    RecoverKey, RecoverSpec, ThoughtBlock,
};
use proptest::prelude::*;

fn arb_flags() -> impl Strategy<Value = MaskFlags> {
    (any::<[bool; 5]>()).prop_map(|f| MaskFlags {
        see_current: f[0],
        bi_directional: f[1],
        diagonal: f[2],
        exclude_continue: f[3],
        prefill_compress: f[4],
    })
}

/// Valid layouts of every style: prompt/output blocks in any order, gaps, truncated last block.
fn arb_layout() -> impl Strategy<Value = Layout> {
    (
        1usize..90,
        prop::collection::vec(
            (
                0usize..4,
                0usize..9,
                0usize..3,
                0usize..4,
                0usize..3,
                any::<bool>(),
            ),
            0..9,
        ),
    )
        .prop_map(|(len, specs)| {
            let mut blocks = Vec::new();
            let mut pos = 0;
            for (gap, tl, li, nc, ncont, prompt) in specs {
                let start = pos + gap;
                if start >= len {
                    break;
                }
                let b = if prompt {
                    ThoughtBlock {
                        start,
                        end: start + tl,
                        l_inst: 0,
                        n_comp: nc,
                        n_continue: 0,
                        kind: BlockKind::Prompt,
                    }
                } else {
                    ThoughtBlock {
                        start,
                        end: start + tl,
                        l_inst: li,
                        n_comp: nc,
                        n_continue: ncont,
                        kind: BlockKind::Output,
                    }
                };
                pos = b.block_end();
                blocks.push(b);
            }
            Layout { len, blocks }
        })
}

fn check_no_empty_rows(m: &lt_mask::IntervalMask) -> Result<(), TestCaseError> {
    for r in 0..m.rows() {
        prop_assert!(m.row_count(r) > 0, "row {} fully masked", r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn global_equals_dense_reference(layout in arb_layout(), flags in arb_flags(), extra in prop::option::of(0usize..20)) {
        let pad = extra.map(|e| layout.len + e);
        let m = global_mask(&layout, &flags, pad).unwrap();
        let d = dense_aug(&layout, &flags, pad);
        prop_assert_eq!(m.rows(), d.n);
        prop_assert_eq!(m.to_dense(), d.a);
        check_no_empty_rows(&m)?;
        // padded rows copy the last real row and never see columns >= T
        for r in layout.len..m.rows() {
            prop_assert_eq!(m.row(r), m.row(layout.len - 1));
        }
        for r in 0..m.rows() {
            prop_assert!(m.row(r).last().is_none_or(|&(_, b)| b as usize <= layout.len));
        }
        // serde round trip
        let back: lt_mask::IntervalMask = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn recover_equals_dense_reference(
        layout in arb_layout(), flags in arb_flags(), added in 0usize..20,
        pick in prop::collection::vec(any::<bool>(), 9), phantom in any::<bool>(), extra in prop::option::of(0usize..20),
    ) {
        let flags = MaskFlags { diagonal: false, ..flags };
        let mut keys: Vec<RecoverKey> = layout.blocks.iter().zip(&pick).filter(|(_, &p)| p).map(|(b, _)| RecoverKey::of(b)).collect();
        if phantom {
            keys.push(RecoverKey { end: 10_000, l_inst: 0, n_comp: 1, n_continue: 1 });
        }
        let pad = extra.map(|e| layout.len + added + e);
        let spec = RecoverSpec { added_len: added, keys: keys.clone() };
        let (m, off) = recover_mask(&layout, &spec, &flags, pad).unwrap();
        let (d, doff) = dense_recover(&layout, added, &keys, &flags, pad);
        prop_assert_eq!(m.to_dense(), d.a);
        prop_assert_eq!(off, doff);
        // with a truncated block the appended rows can be cache rows of a hidden block; the
        // dataset never builds such a recover sample (items exist only without truncation)
        if layout.blocks.iter().all(|b| b.block_end() <= layout.len) {
            check_no_empty_rows(&m)?;
        }
        if !layout.blocks.is_empty() {
            let dflags = MaskFlags { diagonal: true, ..flags };
            prop_assert_eq!(recover_mask(&layout, &spec, &dflags, pad), Err(lt_mask::MaskError::DiagonalInRecover));
        }
    }

    /// Arbitrary (mostly invalid) block lists: typed error or a mask equal to the dense reference; never a panic.
    #[test]
    fn bad_layouts_error_never_panic(
        len in 0usize..40,
        raw in prop::collection::vec((0usize..50, 0usize..50, 0usize..4, 0usize..4, 0usize..3, any::<bool>()), 0..6),
        flags in arb_flags(), pad in prop::option::of(0usize..60),
    ) {
        let blocks: Vec<ThoughtBlock> = raw.into_iter().map(|(s, e, l, c, n, p)| ThoughtBlock {
            start: s, end: e, l_inst: l, n_comp: c, n_continue: n,
            kind: if p { BlockKind::Prompt } else { BlockKind::Output },
        }).collect();
        let layout = Layout { len, blocks };
        match global_mask(&layout, &flags, pad) {
            Ok(m) => prop_assert_eq!(m.to_dense(), dense_aug(&layout, &flags, pad).a),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        let spec = RecoverSpec { added_len: 3, keys: vec![] };
        let _ = recover_mask(&layout, &spec, &flags, pad);
    }

    /// LightThinker: every local step mask equals the global training mask's rows restricted to
    /// the columns still in the KV cache (plus the tokens fed in the step).
    #[test]
    fn local_lightthinker_matches_global(
        p in 1usize..8, thoughts in prop::collection::vec(1usize..6, 1..5), c in 1usize..4, tail in 1usize..3,
        sc in any::<bool>(), bi in any::<bool>(), dg in any::<bool>(),
    ) {
        let flags = MaskFlags { see_current: sc, bi_directional: bi, diagonal: dg, exclude_continue: false, prefill_compress: false };
        let mut blocks = Vec::new();
        let mut pos = p;
        for &t in &thoughts {
            let b = ThoughtBlock { start: pos, end: pos + t, l_inst: 0, n_comp: c, n_continue: 1, kind: BlockKind::Output };
            pos = b.block_end();
            blocks.push(b);
        }
        let layout = Layout { len: pos + tail, blocks: blocks.clone() };
        let g = global_mask(&layout, &flags, None).unwrap();
        let mut cache: Vec<usize> = (0..p).collect();
        let mut local_start = cache.len();
        let step = |cache: &Vec<usize>, rows: std::ops::Range<usize>, ind: Option<&LocalIndicator>| -> Result<(), TestCaseError> {
            let l = local_mask(cache.len(), rows.len(), ind, &flags).unwrap();
            let keep: Vec<usize> = cache.iter().copied().chain(rows.clone()).collect();
            prop_assert_eq!(l, g.select(rows.start, rows.end, &keep), "rows {:?}", rows);
            Ok(())
        };
        for b in &blocks {
            for r in b.start..b.end - 1 {
                step(&cache, r..r + 1, None)?;
                cache.push(r);
            }
            let ind = LocalIndicator::lightthinker(local_start, cache.len(), c);
            step(&cache, b.end - 1..b.block_end(), Some(&ind))?;
            let l = cache.len();
            cache.extend(b.end - 1..b.block_end());
            cache.drain(local_start..l + 1);
            local_start = cache.len();
        }
        for r in pos..pos + tail {
            step(&cache, r..r + 1, None)?;
            cache.push(r);
        }
        // after j events the cache holds p + j (C + 1) + tail slots
        prop_assert_eq!(cache.len(), p + thoughts.len() * (c + 1) + tail);
    }

    /// AnLLM: the anchor (generated, fed alone) is both the trigger and the compressed token.
    #[test]
    fn local_anllm_matches_global(
        p in 1usize..8, thoughts in prop::collection::vec(1usize..6, 1..5), tail in 1usize..3, sc in any::<bool>(),
    ) {
        let flags = MaskFlags { see_current: sc, ..MaskFlags::default() };
        let mut blocks = Vec::new();
        let mut pos = p;
        for &t in &thoughts {
            let b = ThoughtBlock { start: pos, end: pos + t, l_inst: 0, n_comp: 1, n_continue: 0, kind: BlockKind::Output };
            pos = b.block_end();
            blocks.push(b);
        }
        let layout = Layout { len: pos + tail, blocks: blocks.clone() };
        let g = global_mask(&layout, &flags, None).unwrap();
        let mut cache: Vec<usize> = (0..p).collect();
        let mut local_start = cache.len();
        for b in &blocks {
            for r in b.start..b.end {
                let l = local_mask(cache.len(), 1, None, &flags).unwrap();
                let keep: Vec<usize> = cache.iter().copied().chain([r]).collect();
                prop_assert_eq!(l, g.select(r, r + 1, &keep));
                cache.push(r);
            }
            let ind = LocalIndicator::anllm(local_start, cache.len());
            let l = local_mask(cache.len(), 1, Some(&ind), &flags).unwrap();
            let keep: Vec<usize> = cache.iter().copied().chain([b.end]).collect();
            prop_assert_eq!(l, g.select(b.end, b.end + 1, &keep));
            let len = cache.len();
            cache.push(b.end);
            cache.drain(local_start..len);
            local_start = cache.len();
        }
        prop_assert_eq!(cache.len(), p + thoughts.len());
    }

    #[test]
    fn exports_agree(layout in arb_layout(), flags in arb_flags()) {
        let m = global_mask(&layout, &flags, Some(layout.len + 3)).unwrap();
        let dense = m.to_dense();
        let bits = m.to_bitpacked();
        let words = m.cols().div_ceil(64);
        let add = m.to_additive_f32(f32::NEG_INFINITY);
        for r in 0..m.rows() {
            for c in 0..m.cols() {
                let v = dense[r * m.cols() + c];
                prop_assert_eq!(v, m.is_visible(r, c));
                prop_assert_eq!(v, bits[r * words + c / 64] >> (c % 64) & 1 == 1);
                prop_assert_eq!(v, add[r * m.cols() + c] == 0.0);
            }
        }
    }
}
