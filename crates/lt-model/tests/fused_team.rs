//! The fused CPU step gives the same bits whether it runs as a team of two threads or on one
//! (its own process: the test changes libtorch's thread count).
mod common;

use common::*;
use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig};
use tch::Tensor;

/// Logits of a prefill, one-token steps and a masked 11-token block, fused all the way (the
/// prefill too: a 6-row batch of 12 tokens stays under the fused step's size limit).
fn run(m: &Model, b: usize) -> Vec<Tensor> {
    let vocab = m.config().vocab_size as i64;
    let mut c = m.new_cache(b, 8);
    let mut out = Vec::new();
    let mut len = 0i64;
    for (step, &(t, masked)) in [(12, false), (1, false), (11, true), (1, false), (1, false)]
        .iter()
        .enumerate()
    {
        let ids: Vec<i64> = ids(b * t, 0, vocab, 70 + step as u64);
        let pos: Vec<i64> = (0..b).flat_map(|_| len..len + t as i64).collect();
        let keys = len + t as i64;
        let mask = Tensor::from_slice(
            &(0..t as i64 * keys)
                .map(|i| (i % keys) % 3 != 1 || i % keys >= len)
                .collect::<Vec<_>>(),
        )
        .view([1, 1, t as i64, keys]);
        let mask = if masked {
            AttnMask::Bool(&mask)
        } else {
            AttnMask::Causal
        };
        out.push(
            m.forward_slices(&ids, &pos, b, mask, Some(&mut c), Logits::All)
                .unwrap(),
        );
        len += t as i64;
    }
    out
}

#[test]
fn team_of_two_equals_one_thread() {
    let _g = tch::no_grad_guard();
    // by kv heads (2 kv heads, d = 32) and by tokens (3 kv heads), f32 and bf16
    let by_heads = ModelConfig::tiny_qwen2(1024, 128, 2, 4, 2, 344);
    let by_tokens = ModelConfig::tiny_qwen2(1024, 192, 2, 6, 3, 344);
    for (name, cfg) in [("by-heads", by_heads), ("by-tokens", by_tokens)] {
        for kind in [Kind::Float, Kind::BFloat16] {
            let Some(m) = prepacked(Model::random(&cfg, Device::Cpu, kind, 3).unwrap()) else {
                return;
            };
            for b in [1, 6] {
                tch::set_num_threads(2);
                let two = run(&m, b);
                tch::set_num_threads(1);
                let one = run(&m, b);
                tch::set_num_threads(2);
                for (s, (a, o)) in two.iter().zip(&one).enumerate() {
                    assert!(
                        a.equal(o),
                        "{name} {kind:?} batch {b} step {s}: team of two != one thread (max diff {})",
                        max_diff(a, o)
                    );
                }
            }
        }
    }
}
