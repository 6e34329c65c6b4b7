//! The fused CPU decode step (one token per row, f32) computes what the libtorch path computes:
//! logits, hidden states and the cache contents agree to float rounding for ragged batches,
//! biases, tied / untied heads, head dims on and off the vector width, explicit masks, and
//! batches large enough to be split over two threads.
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, KvCache, Logits, Model, ModelConfig};
use tch::Tensor;

fn configs() -> Vec<(&'static str, ModelConfig, usize)> {
    let mut qwen = ModelConfig::tiny_qwen2(97, 64, 2, 4, 2, 96); // q/k/v biases, d = 16
    qwen.initializer_range = 0.2;
    let mut llama = ModelConfig::tiny_llama(83, 36, 2, 3, 1, 40); // d = 12: scalar attention
    llama.attention_bias = Some(true);
    llama.mlp_bias = Some(true);
    llama.tie_word_embeddings = true;
    llama.initializer_range = 0.2;
    let mut wide = ModelConfig::tiny_qwen2(1024, 128, 2, 4, 2, 344);
    wide.initializer_range = 0.1;
    // "wide" with 5 rows splits the batch over two threads; with 1 row, its 170-token step
    // splits the row's tokens (both threads write K/V before either attends)
    // three kv heads (or a head dim off the 16-float weight panels) cannot split the attention
    // by heads: the two threads split rows, or one row's tokens, instead
    let mut odd = ModelConfig::tiny_qwen2(1024, 192, 2, 6, 3, 344);
    odd.initializer_range = 0.1;
    let mut d24 = ModelConfig::tiny_qwen2(1024, 96, 2, 4, 2, 200);
    d24.initializer_range = 0.1;
    vec![
        ("qwen2", qwen, 3),
        ("llama", llama, 3),
        ("wide", wide.clone(), 5),
        ("wide-1", wide, 1),
        ("odd-kv", odd.clone(), 5),
        ("odd-kv-1", odd, 1),
        ("d24-1", d24, 1),
    ]
}

/// A batch cache whose rows have different lengths: prefill `pre` tokens, then evict a
/// different range from each row.
fn ragged_cache(m: &Model, b: usize, pre: usize, vocab: i64) -> KvCache {
    let mut c = m.new_cache(b, 4); // small: the decode steps grow it
    let toks: Vec<i64> = (0..b)
        .flat_map(|r| ids(pre, 0, vocab, 11 + r as u64))
        .collect();
    let pos: Vec<i64> = (0..b).flat_map(|_| 0..pre as i64).collect();
    let t = |v: &[i64]| Tensor::from_slice(v).view([b as i64, pre as i64]);
    let _ = m
        .forward(
            &t(&toks),
            &t(&pos),
            AttnMask::Causal,
            Some(&mut c),
            Logits::Last,
        )
        .unwrap();
    for r in 0..b {
        c.evict_row(r, r..r * 2 + 1);
    }
    c
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes");
    let tol = 1e-5 * max_abs(b).max(1.0);
    let d = max_diff(a, b);
    assert!(d <= tol, "{what}: max diff {d} > {tol}");
}

#[test]
fn fused_step_equals_libtorch_step() {
    let _g = tch::no_grad_guard();
    for (name, cfg, b) in configs() {
        let Some(fused) = prepacked(Model::random(&cfg, Device::Cpu, Kind::Float, 5).unwrap())
        else {
            return;
        };
        let mut plain = Model::random(&cfg, Device::Cpu, Kind::Float, 5).unwrap();
        plain.set_fused_decode(false);
        let vocab = cfg.vocab_size as i64;
        let mut cf = ragged_cache(&fused, b, 9, vocab);
        let mut cp = ragged_cache(&plain, b, 9, vocab);
        // (new tokens, mask, logits) per step: decode steps with every mask and output kind,
        // then multi-token blocks (causal, and a look-ahead mask like LightThinker's
        // bidirectional gist tokens; a long step)
        let plan: [(i64, u8, Logits); 11] = [
            (1, 0, Logits::Last),
            (1, 0, Logits::Last),
            (1, 1, Logits::Last),
            (1, 2, Logits::All),
            (1, 0, Logits::None),
            (1, 0, Logits::Last),
            (3, 0, Logits::All),
            (11, 1, Logits::Last),
            (40, 0, Logits::All),
            (33, 1, Logits::Last),
            (170, 1, Logits::All),
        ];
        for (step, &(t, mk, logits)) in plan.iter().enumerate() {
            let keys = cf.max_len() as i64 + t;
            let tok: Vec<i64> = ids(b * t as usize, 0, vocab, 100 + step as u64);
            // positions with holes, different per row
            let pos: Vec<i64> = (0..b as i64)
                .flat_map(|r| (0..t).map(move |i| 40 * step as i64 + r + 2 * i))
                .collect();
            let col = |v: &[i64]| Tensor::from_slice(v).view([b as i64, t]);
            // random visibility, but every query sees its own slot
            let bool_m = Tensor::from_slice(
                &(0..b as i64 * t * keys)
                    .map(|i| {
                        let (qi, c) = ((i / keys) % t, i % keys);
                        c == keys - t + qi || (i * 7 + step as i64) % 3 != 0
                    })
                    .collect::<Vec<_>>(),
            )
            .view([b as i64, 1, t, keys]);
            let add_m = Tensor::zeros([1, 1, t, keys], (Kind::Float, Device::Cpu)).masked_fill(
                &Tensor::arange(keys, (Kind::Int64, Device::Cpu))
                    .eq(1)
                    .view([1, 1, 1, keys]),
                f64::NEG_INFINITY,
            );
            let mask = match mk {
                1 => AttnMask::Bool(&bool_m),
                2 => AttnMask::Additive(&add_m),
                _ => AttnMask::Causal,
            };
            let yf = fused
                .forward(&col(&tok), &col(&pos), mask, Some(&mut cf), logits)
                .unwrap();
            let yp = plain
                .forward(&col(&tok), &col(&pos), mask, Some(&mut cp), logits)
                .unwrap();
            close(&yf, &yp, &format!("{name} step {step} t={t} {logits:?}"));
            for r in 0..b {
                assert_eq!(cf.row_len(r), cp.row_len(r));
                assert_eq!(cf.row_positions(r), cp.row_positions(r));
            }
        }
        for l in 0..cfg.num_hidden_layers {
            for (a, p) in [(cf.keys(l), cp.keys(l)), (cf.values(l), cp.values(l))] {
                let (a, p) = (a.unwrap(), p.unwrap());
                for r in 0..b as i64 {
                    let n = cf.row_len(r as usize) as i64;
                    close(
                        &a.narrow(0, r, 1).narrow(2, 0, n),
                        &p.narrow(0, r, 1).narrow(2, 0, n),
                        &format!("{name} cache layer {l} row {r}"),
                    );
                }
            }
        }
    }
}

/// Greedy decoding through the fused step picks the same tokens as the libtorch path, and
/// batch rows decode exactly as each row alone (rows are independent in the fused step).
#[test]
fn fused_greedy_matches_and_rows_are_independent() {
    let _g = tch::no_grad_guard();
    let (_, cfg, _) = configs().remove(2);
    let Some(fused) = prepacked(Model::random(&cfg, Device::Cpu, Kind::Float, 9).unwrap()) else {
        return;
    };
    let mut plain = Model::random(&cfg, Device::Cpu, Kind::Float, 9).unwrap();
    plain.set_fused_decode(false);
    let b = 6usize;
    let prompt: Vec<i64> = (0..b)
        .flat_map(|r| ids(12, 0, 1024, 40 + r as u64))
        .collect();
    let decode = |m: &Model, rows: std::ops::Range<usize>| -> Vec<Vec<f32>> {
        let n = rows.len() as i64;
        let mut c = m.new_cache(rows.len(), 64);
        let p = Tensor::from_slice(&prompt[rows.start * 12..rows.end * 12]).view([n, 12]);
        let pos = Tensor::arange(12, (Kind::Int64, Device::Cpu)).repeat([n, 1]);
        let mut y = m
            .forward(&p, &pos, AttnMask::Causal, Some(&mut c), Logits::Last)
            .unwrap();
        let mut out = vec![Vec::new(); rows.len()];
        for s in 0..20 {
            let next = y.argmax(-1, true);
            for (r, o) in out.iter_mut().enumerate() {
                o.push(
                    Vec::<f32>::try_from(y.get(r as i64))
                        .unwrap()
                        .iter()
                        .cloned()
                        .fold(f32::MIN, f32::max),
                );
                o.push(next.int64_value(&[r as i64, 0]) as f32);
            }
            let pos = Tensor::full([n, 1], 12 + s, (Kind::Int64, Device::Cpu));
            y = m
                .forward(&next, &pos, AttnMask::Causal, Some(&mut c), Logits::Last)
                .unwrap();
        }
        out
    };
    let batch = decode(&fused, 0..b);
    let want = decode(&plain, 0..b);
    for r in 0..b {
        // same greedy tokens (odd entries), max logits within rounding (even entries)
        for (i, (x, y)) in batch[r].iter().zip(&want[r]).enumerate() {
            if i % 2 == 1 {
                assert_eq!(x, y, "row {r} token {}", i / 2);
            } else {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                    "row {r}: {x} vs {y}"
                );
            }
        }
        // bit for bit from the first fused step on (the prefill before it is libtorch's, whose
        // GEMM sums differently for 6 rows than for 1)
        let alone = decode(&fused, r..r + 1);
        assert_eq!(
            batch[r][2..],
            alone[0][2..],
            "row {r}: batch vs alone differ"
        );
    }
}

/// bf16 models: the fused step (f32 arithmetic, rounded to bf16 where HF's bf16 forward rounds)
/// stays as close to the exact answer as libtorch's bf16 path. Reference: the f32 model with the
/// same (bf16-exact) weights.
#[test]
fn fused_bf16_is_as_accurate_as_libtorch_bf16() {
    let _g = tch::no_grad_guard();
    for (name, cfg, _) in configs() {
        let Some(fused) = prepacked(Model::random(&cfg, Device::Cpu, Kind::BFloat16, 3).unwrap())
        else {
            return;
        };
        let mut plain = Model::random(&cfg, Device::Cpu, Kind::BFloat16, 3).unwrap();
        plain.set_fused_decode(false);
        let exact = Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap();
        for (_, p) in exact.named_parameters() {
            let mut p = p;
            let r = p.to_kind(Kind::BFloat16).to_kind(Kind::Float);
            p.copy_(&r);
        }
        let b = 2usize;
        let vocab = cfg.vocab_size as i64;
        let mut caches: Vec<KvCache> = [&fused, &plain, &exact]
            .iter()
            .map(|m| m.new_cache(b, 8))
            .collect();
        // prompt (9 tokens), 5 decode steps, a 10-token block with a look-ahead mask, 2 more steps
        let plan: [(i64, bool, Logits); 8] = [
            (9, false, Logits::All),
            (1, false, Logits::Last),
            (1, false, Logits::Last),
            (1, false, Logits::Last),
            (1, false, Logits::Last),
            (10, true, Logits::All),
            (1, false, Logits::Last),
            (1, false, Logits::Last),
        ];
        for (step, &(t, masked, logits)) in plan.iter().enumerate() {
            let keys = caches[0].max_len() as i64 + t;
            let tok = ids(b * t as usize, 0, vocab, 300 + step as u64);
            let start = caches[0].max_len() as i64;
            let pos: Vec<i64> = (0..b as i64)
                .flat_map(|_| (0..t).map(move |i| start + i))
                .collect();
            let ten = |v: &[i64]| Tensor::from_slice(v).view([b as i64, t]);
            let m = Tensor::from_slice(
                &(0..t * keys)
                    .map(|i| i % keys >= 2 && (i % keys) != 4)
                    .collect::<Vec<_>>(),
            )
            .view([1, 1, t, keys]);
            let mask = if masked {
                AttnMask::Bool(&m)
            } else {
                AttnMask::Causal
            };
            let outs: Vec<Tensor> = [&fused, &plain, &exact]
                .iter()
                .zip(caches.iter_mut())
                .map(|(model, c)| {
                    let y = model
                        .forward(&ten(&tok), &ten(&pos), mask, Some(c), logits)
                        .unwrap();
                    assert_eq!(y.kind(), model.kind(), "outputs in the model's dtype");
                    y.to_kind(Kind::Float)
                })
                .collect();
            let scale = max_abs(&outs[2]).max(1.0);
            let (ef, ep) = (max_diff(&outs[0], &outs[2]), max_diff(&outs[1], &outs[2]));
            assert!(
                ef <= 2.0 * ep + 0.01 * scale,
                "{name} step {step}: fused bf16 error {ef} vs libtorch bf16 error {ep} (scale {scale})"
            );
            assert!(
                ef <= 0.1 * scale,
                "{name} step {step}: fused bf16 error {ef}, scale {scale}"
            );
        }
    }
}

/// The fused step is opt-in through `prepack` and gone after `unpack` (then a step is the
/// libtorch path's, bit for bit); `set_fused_decode(false)` turns it off on a prepacked model.
#[test]
fn fused_step_follows_prepack() {
    let _g = tch::no_grad_guard();
    let (_, cfg, _) = configs().remove(0);
    let Some(mut m) = prepacked(Model::random(&cfg, Device::Cpu, Kind::Float, 4).unwrap()) else {
        return;
    };
    let plain = Model::random(&cfg, Device::Cpu, Kind::Float, 4).unwrap();
    let step = |m: &Model| -> Tensor {
        let mut c = m.new_cache(2, 16);
        let ids = Tensor::from_slice(&ids(10, 0, cfg.vocab_size as i64, 8)).view([2, 5]);
        let pos = Tensor::arange(5, (Kind::Int64, Device::Cpu)).repeat([2, 1]);
        let _ = m
            .forward(&ids, &pos, AttnMask::Causal, Some(&mut c), Logits::Last)
            .unwrap();
        let next = Tensor::from_slice(&[3i64, 4]).view([2, 1]);
        let p = Tensor::from_slice(&[5i64, 5]).view([2, 1]);
        m.forward(&next, &p, AttnMask::Causal, Some(&mut c), Logits::Last)
            .unwrap()
    };
    let want = step(&plain);
    close(&step(&m), &want, "prepacked");
    m.set_fused_decode(false);
    let off = step(&m);
    m.set_fused_decode(true);
    m.unpack();
    let unpacked = step(&m);
    assert_eq!(
        max_diff(&unpacked, &want),
        0.0,
        "unpacked = libtorch path, bit for bit"
    );
    assert_eq!(
        max_diff(&off, &want),
        0.0,
        "fused off = libtorch path, bit for bit"
    );
}

/// `forward_slices` (host ids / positions, what lt-infer's decode loop calls) returns exactly
/// what `forward` returns — on the fused step (cache, inference; the step itself is checked
/// against libtorch above), on libtorch's path (no cache), with a mask — and rejects malformed
/// or out-of-range input with an error, not a panic.
#[test]
fn forward_slices_equals_forward() {
    let _g = tch::no_grad_guard();
    let (_, cfg, _) = configs().remove(2);
    let Some(m) = prepacked(Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap()) else {
        return;
    };
    let b = 3usize;
    let (mut c1, mut c2) = (m.new_cache(b, 8), m.new_cache(b, 8));
    for (step, t) in [5usize, 1, 1, 4, 1].into_iter().enumerate() {
        let ids: Vec<i64> = ids(b * t, 0, 1024, 70 + step as u64);
        let pos: Vec<i64> = (0..b)
            .flat_map(|r| (0..t).map(move |i| (10 * step + 2 * i + r) as i64))
            .collect();
        let shape = [b as i64, t as i64];
        let (it, pt) = (
            Tensor::from_slice(&ids).view(shape),
            Tensor::from_slice(&pos).view(shape),
        );
        let keys = c1.max_len() as i64 + t as i64;
        let look = Tensor::ones([b as i64, 1, t as i64, keys], (Kind::Bool, Device::Cpu));
        let mask = if t == 4 {
            AttnMask::Bool(&look)
        } else {
            AttnMask::Causal
        };
        let logits = if step % 2 == 0 {
            Logits::All
        } else {
            Logits::Last
        };
        let x = m.forward(&it, &pt, mask, Some(&mut c1), logits).unwrap();
        let y = m
            .forward_slices(&ids, &pos, b, mask, Some(&mut c2), logits)
            .unwrap();
        assert!(x.equal(&y), "step {step} {logits:?}");
        assert_eq!(c1.positions(), c2.positions());
        // no cache: libtorch's path, same answer
        let x = m
            .forward(&it, &pt, AttnMask::Causal, None, Logits::All)
            .unwrap();
        let y = m
            .forward_slices(&ids, &pos, b, AttnMask::Causal, None, Logits::All)
            .unwrap();
        assert!(x.equal(&y), "step {step} without cache");
    }
    let mut c = m.new_cache(2, 4);
    for (ids, pos, batch) in [
        (vec![1i64, 2, 3], vec![0i64, 1, 2], 2usize), // 3 tokens are not 2 rows
        (vec![1, 2], vec![0], 2),                     // positions do not match
        (vec![], vec![], 1),                          // nothing
        (vec![1, 2], vec![0, 1], 0),                  // no rows
        (vec![1, 4096], vec![0, 0], 2),               // id out of range
        (vec![1, 2, 3], vec![0, 0, 0], 3),            // cache of 2 rows
    ] {
        let r = m.forward_slices(
            &ids,
            &pos,
            batch,
            AttnMask::Causal,
            Some(&mut c),
            Logits::Last,
        );
        assert!(r.is_err(), "{ids:?} / {pos:?} / {batch}");
    }
}
