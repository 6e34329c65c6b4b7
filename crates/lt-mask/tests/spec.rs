//! The worked examples of the specs: the §6 ASCII grid and its flag variants, the aug and
//! recover examples (§3.4, §4.2), the local-mask visibility table (§2.6) and the inference
//! traces (§2.10, §5).
use lt_mask::{
    global_mask, local_mask, recover_mask, BlockKind, IntervalMask, Layout, LocalIndicator,
    MaskError, MaskFlags, RecoverKey, RecoverSpec, ThoughtBlock,
};

fn out(start: usize, end: usize) -> ThoughtBlock {
    ThoughtBlock {
        start,
        end,
        l_inst: 0,
        n_comp: 2,
        n_continue: 1,
        kind: BlockKind::Output,
    }
}
fn prompt(start: usize, end: usize) -> ThoughtBlock {
    ThoughtBlock {
        start,
        end,
        l_inst: 0,
        n_comp: 2,
        n_continue: 0,
        kind: BlockKind::Prompt,
    }
}
fn grid(m: &IntervalMask) -> Vec<String> {
    m.to_ascii().lines().map(str::to_string).collect()
}
/// Visible columns of a row as a list.
fn cols(m: &IntervalMask, r: usize) -> Vec<usize> {
    (0..m.cols()).filter(|&c| m.is_visible(r, c)).collect()
}

const SPEC6: [&str; 18] = [
    "#.................",
    "##................",
    "###...............",
    "####..............",
    "#####.............",
    "######............",
    "#######...........",
    "########..........",
    "#########.........",
    "###....###........",
    "###....####.......",
    "###....#####......",
    "###....######.....",
    "###....#######....",
    "###....########...",
    "###....###...###..",
    "###....###...####.",
    "###....###...####.",
];

fn spec6(flags: MaskFlags) -> IntervalMask {
    let layout = Layout {
        len: 17,
        blocks: vec![out(3, 7), out(10, 13)],
    };
    global_mask(&layout, &flags, Some(18)).unwrap()
}

#[test]
fn spec6_grid_all_flags_false() {
    assert_eq!(grid(&spec6(MaskFlags::default())), SPEC6);
}

#[test]
fn spec6_flag_variants() {
    let base = spec6(MaskFlags::default());
    let changed = |m: &IntervalMask| {
        (0..18)
            .filter(|&r| m.row(r) != base.row(r))
            .collect::<Vec<_>>()
    };

    let sc = spec6(MaskFlags {
        see_current: true,
        ..Default::default()
    });
    assert_eq!(changed(&sc), vec![7, 8, 13, 14]);
    assert_eq!(cols(&sc, 7), (3..=7).collect::<Vec<_>>());
    assert_eq!(cols(&sc, 8), (3..=8).collect::<Vec<_>>());
    assert_eq!(cols(&sc, 13), (10..=13).collect::<Vec<_>>());
    assert_eq!(cols(&sc, 14), (10..=14).collect::<Vec<_>>());

    let bi = spec6(MaskFlags {
        bi_directional: true,
        ..Default::default()
    });
    assert_eq!(changed(&bi), vec![7, 13]);
    assert!(bi.is_visible(7, 8) && bi.is_visible(13, 14));

    let dg = spec6(MaskFlags {
        diagonal: true,
        ..Default::default()
    });
    assert_eq!(changed(&dg), vec![8, 14]);
    assert!(dg.is_visible(8, 8) && !dg.is_visible(8, 7) && !dg.is_visible(14, 13));

    let ex = spec6(MaskFlags {
        exclude_continue: true,
        ..Default::default()
    });
    assert_eq!(changed(&ex), vec![15, 16, 17]);
    for r in 15..18 {
        assert!(!ex.is_visible(r, 9));
    }
    for r in 10..15 {
        assert!(ex.is_visible(r, 9));
    }
}

fn aug_layout() -> Layout {
    // §3.4: BOS S . o0 o1 Q o0 o1 : a ␣b \n SPL o0 o1 CON c \n SPL o0 o1 CON EOS
    Layout {
        len: 23,
        blocks: vec![prompt(1, 3), prompt(5, 6), out(9, 13), out(16, 19)],
    }
}

#[test]
fn aug_example_prefill_compress() {
    let off = global_mask(&aug_layout(), &MaskFlags::default(), None).unwrap();
    for r in 0..9 {
        assert_eq!(
            off.row(r),
            &[(0, r as u32 + 1)],
            "row {r} plain causal with prefill_compress=false"
        );
    }
    let on = global_mask(
        &aug_layout(),
        &MaskFlags {
            prefill_compress: true,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    for r in 5..9 {
        assert!(!on.is_visible(r, 1) && !on.is_visible(r, 2), "row {r}");
    }
    assert!(!on.is_visible(8, 5) && on.is_visible(7, 5));
    // from the first thought on, both lose the abandoned prompt text
    for m in [&off, &on] {
        for r in 9..23 {
            assert!(!m.is_visible(r, 1) && !m.is_visible(r, 2) && !m.is_visible(r, 5));
        }
    }
}

#[test]
fn recover_example() {
    // §3.5/§4.2: P=32, both thoughts recovered, 9 tokens appended at 23..32
    let layout = aug_layout();
    let keys = layout.blocks[2..].iter().map(RecoverKey::of).collect();
    let spec = RecoverSpec { added_len: 9, keys };
    let (m, offset) = recover_mask(&layout, &spec, &MaskFlags::default(), Some(32)).unwrap();
    assert_eq!(offset, 22);
    let g = grid(&m);
    assert_eq!(g[22], "#..##.###....###...####.........");
    assert_eq!(g[23], "#..##.###....###...###.#........");
    assert_eq!(g[31], "#..##.###....###...###.#########");
    // P=30: only the first thought fits (REC at 23, position 16)
    let spec = RecoverSpec {
        added_len: 5,
        keys: vec![RecoverKey::of(&layout.blocks[2])],
    };
    let (m, offset) = recover_mask(&layout, &spec, &MaskFlags::default(), Some(30)).unwrap();
    assert_eq!(offset, 16);
    assert!(!m.is_visible(23, 19) && !m.is_visible(23, 21) && m.is_visible(23, 15));
    let dg = MaskFlags {
        diagonal: true,
        ..Default::default()
    };
    assert_eq!(
        recover_mask(&layout, &spec, &dg, Some(30)),
        Err(MaskError::DiagonalInRecover)
    );
}

#[test]
fn truncated_thought_is_plain_causal() {
    // §5: 3-token prompt, a 10-token thought, P=12 -> locate (3,13,0,2,1), fully causal 12x12
    let layout = Layout {
        len: 12,
        blocks: vec![out(3, 13)],
    };
    let m = global_mask(
        &layout,
        &MaskFlags {
            diagonal: true,
            bi_directional: true,
            ..Default::default()
        },
        Some(12),
    )
    .unwrap();
    for r in 0..12 {
        assert_eq!(m.row(r), &[(0, r as u32 + 1)]);
    }
}

/// §2.6 visibility table: C = 2, prompt P = slots 0..3, earlier block B = 3..6, thought T = 6..9;
/// the step feeds S O0 O1 K at slots 9..13.
#[test]
fn local_visibility_table() {
    let ind = LocalIndicator::lightthinker(6, 9, 2);
    let m = |f: MaskFlags| local_mask(9, 4, Some(&ind), &f).unwrap();
    let r = |v: std::ops::Range<u32>| v.collect::<Vec<u32>>();
    let vis = |m: &IntervalMask, row: usize| {
        cols(m, row)
            .into_iter()
            .map(|c| c as u32)
            .collect::<Vec<_>>()
    };
    let d = m(MaskFlags::default());
    assert_eq!(vis(&d, 0), r(0..10)); // S: P B T S
    assert_eq!(vis(&d, 1), r(0..11)); // O0: P B T S O0
    assert_eq!(vis(&d, 2), r(0..12));
    assert_eq!(vis(&d, 3), [r(0..6), vec![10, 11, 12]].concat()); // K: P B O K
    let sc = m(MaskFlags {
        see_current: true,
        ..Default::default()
    });
    assert_eq!(vis(&sc, 1), r(6..11)); // T S O0
    assert_eq!(vis(&sc, 3), vis(&d, 3));
    let bi = m(MaskFlags {
        bi_directional: true,
        ..Default::default()
    });
    assert_eq!(vis(&bi, 1), r(0..12)); // P B T S O(all)
    let dg = m(MaskFlags {
        diagonal: true,
        bi_directional: true,
        ..Default::default()
    });
    assert_eq!(vis(&dg, 1), r(0..11));
    assert_eq!(vis(&dg, 2), [r(0..10), vec![11]].concat()); // P B T S O_1
    let scbi = m(MaskFlags {
        see_current: true,
        bi_directional: true,
        ..Default::default()
    });
    assert_eq!(vis(&scbi, 1), r(6..12)); // T S O(all)
                                         // a normal step: one all-visible row
    assert_eq!(
        local_mask(9, 1, None, &MaskFlags::default())
            .unwrap()
            .row(0),
        &[(0, 10)]
    );
}

/// §2.10 trace: p=6, C=2, thoughts of 3, 2 and 1 tokens then 2 tokens and EOS.
#[test]
fn lightthinker_trace() {
    let (p, c) = (6usize, 2usize);
    let mut slots: Vec<i64> = (0..p as i64).collect(); // positions of cached slots
    let mut next_pos = p as i64;
    let mut local_start = p;
    let mut evictions = vec![];
    let mut max_token = 0;
    for t in [3usize, 2, 1] {
        for _ in 0..t {
            slots.push(next_pos);
            next_pos += 1;
        }
        let l = slots.len();
        let ind = LocalIndicator::lightthinker(local_start, l, c);
        let m = local_mask(l, c + 2, Some(&ind), &MaskFlags::default()).unwrap();
        if evictions.is_empty() {
            let krow: Vec<usize> = cols(&m, c + 1);
            assert_eq!(
                krow,
                [(0..6).collect::<Vec<_>>(), vec![10, 11, 12]].concat()
            );
        }
        for _ in 0..c + 2 {
            slots.push(next_pos);
            next_pos += 1;
        }
        max_token = max_token.max(slots.len());
        evictions.push((local_start, l + 1));
        slots.drain(local_start..l + 1);
        local_start = slots.len();
    }
    for _ in 0..2 {
        slots.push(next_pos);
        next_pos += 1;
        max_token = max_token.max(slots.len());
    }
    assert_eq!(evictions, vec![(6, 10), (9, 12), (12, 14)]);
    assert_eq!(
        slots,
        vec![0, 1, 2, 3, 4, 5, 10, 11, 12, 16, 17, 18, 21, 22, 23, 24, 25]
    );
    assert_eq!(max_token, 17);
}

/// §5 AnLLM trace: p=6, sentences of 3, 2, 1 tokens -> evictions [6,9), [7,9), [8,9).
#[test]
fn anllm_trace() {
    let p = 6usize;
    let mut slots: Vec<i64> = (0..p as i64).collect();
    let mut next_pos = p as i64;
    let mut local_start = p;
    let mut evictions = vec![];
    let mut max_token = 0;
    for t in [3usize, 2, 1] {
        for _ in 0..t {
            slots.push(next_pos);
            next_pos += 1;
        }
        let l = slots.len();
        let ind = LocalIndicator::anllm(local_start, l);
        let sc = local_mask(
            l,
            1,
            Some(&ind),
            &MaskFlags {
                see_current: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            cols(&sc, 0),
            (local_start..=l).collect::<Vec<_>>(),
            "anchor sees its sentence and itself"
        );
        let all = local_mask(l, 1, Some(&ind), &MaskFlags::default()).unwrap();
        assert_eq!(all.row(0), &[(0, l as u32 + 1)]);
        slots.push(next_pos);
        next_pos += 1;
        max_token = max_token.max(slots.len());
        evictions.push((local_start, l));
        slots.drain(local_start..l);
        local_start = slots.len();
    }
    for _ in 0..2 {
        slots.push(next_pos);
        next_pos += 1;
        max_token = max_token.max(slots.len());
    }
    assert_eq!(evictions, vec![(6, 9), (7, 9), (8, 9)]);
    assert_eq!(slots, vec![0, 1, 2, 3, 4, 5, 9, 12, 14, 15, 16]);
    assert_eq!(max_token, 11);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let f = MaskFlags::default();
    let l = |len, blocks| Layout { len, blocks };
    assert_eq!(
        global_mask(&l(0, vec![]), &f, Some(4)),
        Err(MaskError::EmptySequence)
    );
    assert!(matches!(
        global_mask(&l(20, vec![out(5, 3)]), &f, None),
        Err(MaskError::BlockInverted { index: 0, .. })
    ));
    assert!(matches!(
        global_mask(&l(20, vec![out(3, 6), out(5, 9)]), &f, None),
        Err(MaskError::BlockOverlap { index: 1, .. })
    ));
    assert!(matches!(
        global_mask(&l(20, vec![out(9, 12), out(3, 6)]), &f, None),
        Err(MaskError::BlockOverlap { index: 1, .. })
    ));
    assert!(matches!(
        global_mask(&l(5, vec![out(5, 9)]), &f, None),
        Err(MaskError::BlockOutside { index: 0, .. })
    ));
    assert!(matches!(
        global_mask(&l(5, vec![]), &f, Some(usize::MAX)),
        Err(MaskError::TooLong { .. })
    ));
    assert!(matches!(
        IntervalMask::from_intervals(4, vec![vec![(0, 2), (2, 3)]]),
        Err(MaskError::BadInterval { row: 0, .. })
    ));
    assert!(IntervalMask::from_intervals(4, vec![vec![(0, 5)]]).is_err());
    assert!(IntervalMask::from_intervals(4, vec![vec![(2, 3), (0, 1)]]).is_err());
    let bad = LocalIndicator {
        text_start: 0,
        text_end: 3,
        n_inst: 0,
        comp_start: 5,
        comp_end: 4,
        n_continue: 1,
    };
    assert!(matches!(
        local_mask(4, 3, Some(&bad), &f),
        Err(MaskError::Shape(_))
    ));
    let big = LocalIndicator::lightthinker(0, 4, 9);
    assert!(matches!(
        local_mask(4, 3, Some(&big), &f),
        Err(MaskError::Shape(_))
    ));
}

#[test]
fn batch_matches_single() {
    let items: Vec<(Layout, MaskFlags)> = (0..8)
        .map(|i| {
            (
                Layout {
                    len: 17 + i,
                    blocks: vec![out(3, 7), out(10, 13)],
                },
                MaskFlags {
                    see_current: i % 2 == 1,
                    ..Default::default()
                },
            )
        })
        .collect();
    let batch = lt_mask::global_masks(&items, Some(32));
    for ((l, f), m) in items.iter().zip(batch) {
        assert_eq!(m.unwrap(), global_mask(l, f, Some(32)).unwrap());
    }
}

#[cfg(feature = "tch")]
#[test]
fn tch_exports_match_dense() {
    use tch::{Device, Kind};
    let layout = Layout {
        len: 17,
        blocks: vec![out(3, 7), out(10, 13)],
    };
    let m = global_mask(
        &layout,
        &MaskFlags {
            bi_directional: true,
            ..Default::default()
        },
        Some(18),
    )
    .unwrap();
    let dense = m.to_dense();
    let b = m.to_bool_tensor(Device::Cpu);
    assert_eq!(b.size(), vec![18, 18]);
    assert_eq!(b.kind(), Kind::Bool);
    let got: Vec<bool> = Vec::try_from(b.flatten(0, -1)).unwrap();
    assert_eq!(got, dense);
    for (kind, min) in [
        (Kind::BFloat16, -3.3895313892515355e38f64),
        (Kind::Half, -65504.0),
        (Kind::Float, f32::MIN as f64),
        (Kind::Double, f64::MIN),
    ] {
        let a = m.to_additive_tensor(kind, Device::Cpu);
        assert_eq!(a.kind(), kind);
        let v: Vec<f64> = Vec::try_from(a.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        for (x, &vis) in v.iter().zip(&dense) {
            assert_eq!(*x, if vis { 0.0 } else { min }, "{kind:?}");
        }
        assert_eq!(lt_mask::dtype_min(kind), min);
    }
    let s = lt_mask::stack_additive(&[m.clone(), m.clone()], Kind::BFloat16, Device::Cpu).unwrap();
    assert_eq!(s.size(), vec![2, 1, 18, 18]);
    let s1 = s.get(1).get(0);
    assert!(s1.equal(&m.to_additive_tensor(Kind::BFloat16, Device::Cpu)));
    let sb = lt_mask::stack_bool(std::slice::from_ref(&m), Device::Cpu).unwrap();
    assert!(sb.get(0).get(0).equal(&m.to_bool_tensor(Device::Cpu)));
    let other = global_mask(&layout, &MaskFlags::default(), Some(20)).unwrap();
    assert!(matches!(
        lt_mask::stack_additive(&[m, other], Kind::Float, Device::Cpu),
        Err(MaskError::Shape(_))
    ));
}
