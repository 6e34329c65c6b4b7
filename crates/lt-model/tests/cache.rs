//! KV cache invariants: incremental decode == full forward, eviction + continue == full forward with
//! the matching mask/positions, bit-identical survivors, ragged batches, byte accounting.
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig, RopeScaling};
use tch::Tensor;

fn models() -> Vec<(&'static str, Model)> {
    let mut llama = ModelConfig::tiny_llama(61, 32, 2, 4, 2, 48);
    llama.rope_scaling = Some(RopeScaling {
        rope_type: Some("llama3".into()),
        factor: Some(8.0),
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(16.0),
        extra: Default::default(),
    });
    llama.initializer_range = 0.2;
    let mut qwen = ModelConfig::tiny_qwen2(61, 32, 2, 4, 1, 48);
    qwen.initializer_range = 0.2;
    vec![
        (
            "llama",
            Model::random(&llama, Device::Cpu, Kind::Float, 1).unwrap(),
        ),
        (
            "qwen2",
            Model::random(&qwen, Device::Cpu, Kind::Float, 2).unwrap(),
        ),
    ]
}

const TOL: f64 = 2e-5;

#[test]
fn incremental_decode_equals_full_forward() {
    let _g = tch::no_grad_guard();
    for (name, m) in models() {
        let toks = ids(14, 0, 61, 7);
        let full = m
            .forward(
                &row(&toks),
                &arange_row(0, 14),
                AttnMask::Causal,
                None,
                Logits::All,
            )
            .unwrap();
        let scale = max_abs(&full);
        let mut cache = m.new_cache(1, 2); // small capacity: exercises growth
                                           // prefill 5, then a 3-token chunk (causal mask over cache), then 1 token at a time
        let a = m.forward(
            &row(&toks[..5]),
            &arange_row(0, 5),
            AttnMask::Causal,
            Some(&mut cache),
            Logits::All,
        );
        assert!(
            max_diff(&a.unwrap(), &full.narrow(1, 0, 5)) <= TOL * scale,
            "{name} prefill"
        );
        let b = m.forward(
            &row(&toks[5..8]),
            &arange_row(5, 8),
            AttnMask::Causal,
            Some(&mut cache),
            Logits::All,
        );
        assert!(
            max_diff(&b.unwrap(), &full.narrow(1, 5, 3)) <= TOL * scale,
            "{name} chunk"
        );
        for i in 8..14 {
            let l = m
                .forward(
                    &row(&toks[i..i + 1]),
                    &arange_row(i as i64, i as i64 + 1),
                    AttnMask::Causal,
                    Some(&mut cache),
                    Logits::Last,
                )
                .unwrap();
            assert_eq!(l.size(), vec![1, 61]);
            let d = max_diff(&l, &full.get(0).get(i as i64).unsqueeze(0));
            assert!(d <= TOL * scale, "{name} step {i}: {d}");
        }
        assert_eq!(cache.len(), 14);
        assert_eq!(cache.positions(), (0..14).collect::<Vec<i64>>().as_slice());
        assert!(cache.capacity() >= 14);
    }
}

/// LightThinker step: thought [3, 8) is followed by cache tokens whose KV must see the thought,
/// then the thought's slots are evicted and decoding continues. Equivalent full forward: one
/// sequence with positions 0..N and a mask where rows after the compression cannot see [3, 8).
#[test]
fn eviction_then_decode_equals_masked_full_forward() {
    let _g = tch::no_grad_guard();
    for (name, m) in models() {
        let n = 16usize;
        let toks = ids(n, 0, 61, 11);
        let (s, e) = (3usize, 8usize); // thought slots, evicted after token 10 (cache tokens 8..10)
        let boundary = 11usize; // rows >= boundary no longer see [s, e)
        let rows: Vec<Vec<(u32, u32)>> = (0..n)
            .map(|r| {
                if r >= boundary {
                    vec![(0, s as u32), (e as u32, r as u32 + 1)]
                } else {
                    vec![(0, r as u32 + 1)]
                }
            })
            .collect();
        let mask = bool_mask(n, &rows);
        let full = m
            .forward(
                &row(&toks),
                &arange_row(0, n as i64),
                AttnMask::Bool(&mask),
                None,
                Logits::All,
            )
            .unwrap();
        let scale = max_abs(&full);

        let mut cache = m.new_cache(1, 32);
        let _ = m
            .forward(
                &row(&toks[..boundary]),
                &arange_row(0, boundary as i64),
                AttnMask::Causal,
                Some(&mut cache),
                Logits::None,
            )
            .unwrap();
        let before_k = cache.keys(1).unwrap().narrow(2, 0, boundary as i64).copy();
        cache.evict(s..e);
        assert_eq!(cache.len(), boundary - (e - s));
        let mut want_pos: Vec<i64> = (0..boundary as i64).collect();
        want_pos.drain(s..e);
        assert_eq!(cache.positions(), want_pos.as_slice());
        // survivors bit-identical
        let after_k = cache.keys(1).unwrap().narrow(2, 0, cache.len() as i64);
        let kept = Tensor::cat(
            &[
                before_k.narrow(2, 0, s as i64),
                before_k.narrow(2, e as i64, (boundary - e) as i64),
            ],
            2,
        );
        assert!(after_k.equal(&kept), "{name}: survivors changed");

        // continue: a 2-token block with an explicit local mask over the compacted cache, then causal steps
        let l = cache.len();
        let local = bool_mask(l + 2, &[vec![(0, l as u32 + 1)], vec![(0, l as u32 + 2)]]);
        let got = m
            .forward(
                &row(&toks[boundary..boundary + 2]),
                &arange_row(boundary as i64, boundary as i64 + 2),
                AttnMask::Bool(&local),
                Some(&mut cache),
                Logits::All,
            )
            .unwrap();
        let d = max_diff(&got, &full.narrow(1, boundary as i64, 2));
        assert!(d <= TOL * scale, "{name} block: {d}");
        for i in boundary + 2..n {
            let got = m
                .forward(
                    &row(&toks[i..i + 1]),
                    &arange_row(i as i64, i as i64 + 1),
                    AttnMask::Causal,
                    Some(&mut cache),
                    Logits::Last,
                )
                .unwrap();
            let d = max_diff(&got, &full.get(0).get(i as i64).unsqueeze(0));
            assert!(d <= TOL * scale, "{name} step {i}: {d}");
        }
        // and the wrong (un-evicted) path differs: the test can fail
        let plain = m
            .forward(
                &row(&toks),
                &arange_row(0, n as i64),
                AttnMask::Causal,
                None,
                Logits::All,
            )
            .unwrap();
        assert!(
            max_diff(
                &plain.narrow(1, boundary as i64, 5),
                &full.narrow(1, boundary as i64, 5)
            ) > 100.0 * TOL * scale
        );
    }
}

#[test]
fn additive_mask_through_cache_matches_bool() {
    let _g = tch::no_grad_guard();
    let (_, m) = models().remove(1);
    let toks = ids(6, 0, 61, 3);
    let mut c1 = m.new_cache(1, 8);
    let mut c2 = m.new_cache(1, 8);
    let _ = m
        .forward(
            &row(&toks[..4]),
            &arange_row(0, 4),
            AttnMask::Causal,
            Some(&mut c1),
            Logits::None,
        )
        .unwrap();
    let _ = m
        .forward(
            &row(&toks[..4]),
            &arange_row(0, 4),
            AttnMask::Causal,
            Some(&mut c2),
            Logits::None,
        )
        .unwrap();
    let b = bool_mask(6, &[vec![(0, 1), (3, 5)], vec![(2, 6)]]);
    let a = Tensor::zeros([1, 1, 2, 6], (Kind::Float, Device::Cpu))
        .masked_fill(&b.logical_not(), f64::NEG_INFINITY);
    let x = m
        .forward(
            &row(&toks[4..]),
            &row(&[9, 10]),
            AttnMask::Bool(&b),
            Some(&mut c1),
            Logits::All,
        )
        .unwrap();
    let y = m
        .forward(
            &row(&toks[4..]),
            &row(&[9, 10]),
            AttnMask::Additive(&a),
            Some(&mut c2),
            Logits::All,
        )
        .unwrap();
    assert!(max_diff(&x, &y) <= 1e-6 * max_abs(&x));
    assert_eq!(c1.positions(), &[0, 1, 2, 3, 9, 10]);
}

/// A ragged batch (rows of different cache lengths, per-row eviction) equals running each row alone.
#[test]
fn ragged_batch_equals_single_rows() {
    let _g = tch::no_grad_guard();
    let (_, m) = models().remove(0);
    let seqs = [ids(9, 0, 61, 21), ids(9, 0, 61, 22)];
    // batched: prefill 6 tokens both rows, evict [1,4) of row 1 only, then decode 3 steps
    let mut cb = m.new_cache(2, 4);
    let ids0 = Tensor::cat(&[row(&seqs[0][..6]), row(&seqs[1][..6])], 0);
    let _ = m
        .forward(
            &ids0,
            &Tensor::cat(&[arange_row(0, 6), arange_row(0, 6)], 0),
            AttnMask::Causal,
            Some(&mut cb),
            Logits::None,
        )
        .unwrap();
    cb.evict_row(1, 1..4);
    assert_eq!((cb.row_len(0), cb.row_len(1)), (6, 3));
    let mut singles: Vec<_> = (0..2).map(|_| m.new_cache(1, 4)).collect();
    for (r, c) in singles.iter_mut().enumerate() {
        let _ = m
            .forward(
                &row(&seqs[r][..6]),
                &arange_row(0, 6),
                AttnMask::Causal,
                Some(c),
                Logits::None,
            )
            .unwrap();
    }
    singles[1].evict(1..4);
    for i in 6..9 {
        let ids = Tensor::cat(&[row(&seqs[0][i..i + 1]), row(&seqs[1][i..i + 1])], 0);
        let pos = Tensor::cat(
            &[
                arange_row(i as i64, i as i64 + 1),
                arange_row(i as i64, i as i64 + 1),
            ],
            0,
        );
        let got = m
            .forward(&ids, &pos, AttnMask::Causal, Some(&mut cb), Logits::Last)
            .unwrap();
        // also with an explicit all-true Bool mask over max-len columns: the model hides the gaps
        for (r, c) in singles.iter_mut().enumerate() {
            let want = m
                .forward(
                    &row(&seqs[r][i..i + 1]),
                    &arange_row(i as i64, i as i64 + 1),
                    AttnMask::Causal,
                    Some(c),
                    Logits::Last,
                )
                .unwrap();
            let d = max_diff(&got.get(r as i64).unsqueeze(0), &want);
            assert!(d <= TOL * max_abs(&want), "row {r} step {i}: {d}");
        }
    }
    assert_eq!((cb.row_len(0), cb.row_len(1)), (9, 6));
    assert_eq!(cb.row_positions(1), &[0, 4, 5, 6, 7, 8]);
    // a Bool mask of all-true over max columns hides row 1's stale slots
    let ones = Tensor::ones([2, 1, 1, 10], (Kind::Bool, Device::Cpu));
    let ids = Tensor::cat(&[row(&[5]), row(&[6])], 0);
    let pos = Tensor::cat(&[row(&[9]), row(&[9])], 0);
    let got = m
        .forward(
            &ids,
            &pos,
            AttnMask::Bool(&ones),
            Some(&mut cb),
            Logits::Last,
        )
        .unwrap();
    let want = m
        .forward(
            &row(&[6]),
            &row(&[9]),
            AttnMask::Causal,
            Some(&mut singles[1]),
            Logits::Last,
        )
        .unwrap();
    assert!(max_diff(&got.get(1).unsqueeze(0), &want) <= TOL * max_abs(&want));
}

#[test]
fn bytes_match_analytic_size() {
    let _g = tch::no_grad_guard();
    for kind in [Kind::Float, Kind::BFloat16] {
        let cfg = ModelConfig::tiny_qwen2(61, 32, 3, 4, 2, 48);
        let m = Model::random(&cfg, Device::Cpu, kind, 0).unwrap();
        let mut c = m.new_cache(1, 16);
        let _ = m
            .forward(
                &row(&ids(10, 0, 61, 1)),
                &arange_row(0, 10),
                AttnMask::Causal,
                Some(&mut c),
                Logits::Last,
            )
            .unwrap();
        let elem = if kind == Kind::Float { 4 } else { 2 };
        let head_dim = 32 / 4;
        assert_eq!(c.bytes(), 10 * 3 * 2 * 2 * head_dim * elem);
        c.evict(2..6);
        assert_eq!(c.bytes(), 6 * 3 * 2 * 2 * head_dim * elem);
        c.truncate(1);
        assert_eq!((c.len(), c.positions()), (1, &[0i64][..]));
        assert_eq!(c.bytes(), 3 * 2 * 2 * head_dim * elem);
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let _g = tch::no_grad_guard();
    let (_, m) = models().remove(0);
    let ids3 = row(&[1, 2, 3]);
    // out-of-range id
    assert!(m
        .forward(
            &row(&[1, 999]),
            &arange_row(0, 2),
            AttnMask::Causal,
            None,
            Logits::All
        )
        .is_err());
    // position shape mismatch
    assert!(m
        .forward(
            &ids3,
            &arange_row(0, 2),
            AttnMask::Causal,
            None,
            Logits::All
        )
        .is_err());
    // mask with wrong key count
    let bad = Tensor::ones([1, 1, 3, 4], (Kind::Bool, Device::Cpu));
    let e = m
        .forward(
            &ids3,
            &arange_row(0, 3),
            AttnMask::Bool(&bad),
            None,
            Logits::All,
        )
        .unwrap_err();
    assert!(e.to_string().contains("mask shape"), "{e}");
    // float tensor passed as Bool
    let f = Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu));
    assert!(m
        .forward(
            &ids3,
            &arange_row(0, 3),
            AttnMask::Bool(&f),
            None,
            Logits::All
        )
        .is_err());
    // cache batch mismatch
    let mut c = m.new_cache(2, 4);
    assert!(m
        .forward(
            &ids3,
            &arange_row(0, 3),
            AttnMask::Causal,
            Some(&mut c),
            Logits::All
        )
        .is_err());
}

/// Under autograd the forward is differentiable (training path: no cache, custom mask).
#[test]
fn backward_through_masked_forward() {
    let (_, m) = models().remove(1);
    let mask = bool_mask(
        5,
        &[
            vec![(0, 1)],
            vec![(0, 2)],
            vec![(0, 1), (2, 3)],
            vec![(0, 4)],
            vec![(3, 5)],
        ],
    );
    let out = m
        .forward(
            &row(&ids(5, 0, 61, 5)),
            &row(&[0, 1, 2, 3, 4]),
            AttnMask::Bool(&mask),
            None,
            Logits::All,
        )
        .unwrap();
    out.sum(Kind::Float).backward();
    let (name, p) = &m.named_parameters()[1];
    assert!(name.ends_with("q_proj.weight"), "{name}");
    assert!(p.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// A row lent with `borrow_row` runs a forward, an eviction and a decode on its own, in place:
/// its logits equal a batch-1 cache's, the other row's slots stay bit-identical, and after
/// `return_row` the batch decodes both rows as if the row had been fed in the batch. The lent
/// row's block is longer than the capacity left, so lending must make room first.
#[test]
fn borrowed_row_runs_alone_in_place() {
    let _g = tch::no_grad_guard();
    let (_, m) = models().remove(0);
    let seqs = [ids(20, 0, 61, 31), ids(20, 0, 61, 32)];
    let mut cb = m.new_cache(2, 8);
    let ids0 = Tensor::cat(&[row(&seqs[0][..5]), row(&seqs[1][..5])], 0);
    let pos0 = Tensor::cat(&[arange_row(0, 5), arange_row(0, 5)], 0);
    let _ = m
        .forward(&ids0, &pos0, AttnMask::Causal, Some(&mut cb), Logits::None)
        .unwrap();
    let other_before = cb.keys(0).unwrap().get(0).narrow(1, 0, 5).copy();
    // row 1 alone: a 9-token block (5 + 9 > capacity 8), then evict [2, 6)
    let mut one = cb.borrow_row(1, 9).unwrap();
    assert_eq!((one.batch(), one.row_len(0)), (1, 5));
    assert!(cb.capacity() >= 14);
    let got = m
        .forward(
            &row(&seqs[1][5..14]),
            &arange_row(5, 14),
            AttnMask::Causal,
            Some(&mut one),
            Logits::Last,
        )
        .unwrap();
    one.evict(2..6);
    cb.return_row(1, one);
    assert_eq!((cb.row_len(0), cb.row_len(1)), (5, 10));
    assert_eq!(cb.row_positions(1), &[0, 1, 6, 7, 8, 9, 10, 11, 12, 13]);
    let other_after = cb.keys(0).unwrap().get(0).narrow(1, 0, 5);
    assert!(other_before.equal(&other_after), "row 0 changed");

    let mut single = m.new_cache(1, 4);
    let _ = m
        .forward(
            &row(&seqs[1][..5]),
            &arange_row(0, 5),
            AttnMask::Causal,
            Some(&mut single),
            Logits::None,
        )
        .unwrap();
    let want = m
        .forward(
            &row(&seqs[1][5..14]),
            &arange_row(5, 14),
            AttnMask::Causal,
            Some(&mut single),
            Logits::Last,
        )
        .unwrap();
    assert!(max_diff(&got, &want) <= TOL * max_abs(&want));
    single.evict(2..6);
    let mut single0 = m.new_cache(1, 4);
    let _ = m
        .forward(
            &row(&seqs[0][..5]),
            &arange_row(0, 5),
            AttnMask::Causal,
            Some(&mut single0),
            Logits::None,
        )
        .unwrap();
    // one batched decode step of both rows
    let ids = Tensor::cat(&[row(&seqs[0][5..6]), row(&seqs[1][14..15])], 0);
    let pos = Tensor::cat(&[arange_row(5, 6), arange_row(14, 15)], 0);
    let got = m
        .forward(&ids, &pos, AttnMask::Causal, Some(&mut cb), Logits::Last)
        .unwrap();
    for (r, c, i, p) in [(0, &mut single0, 5, 5), (1, &mut single, 14, 14)] {
        let want = m
            .forward(
                &row(&seqs[r][i..i + 1]),
                &arange_row(p, p + 1),
                AttnMask::Causal,
                Some(c),
                Logits::Last,
            )
            .unwrap();
        let d = max_diff(&got.get(r as i64).unsqueeze(0), &want);
        assert!(d <= TOL * max_abs(&want), "row {r}: {d}");
    }
    // out of range
    assert!(cb.borrow_row(2, 1).is_none());
}
