//! Prefill / greedy-decode throughput of lt-model on CPU (or CUDA with `--device cuda`).
//!
//! `cargo bench -p lt-model --bench lt_model_bench` runs the built-in tiny models (f32, bf16).
//! `... -- --model DIR --dtype bf16 --prompt 128 --decode 64` benches one HF directory and prints
//! one JSON line (used by `scripts/lt_model_hf_bench.py` for the side-by-side with transformers);
//! `--batch N` decodes N sequences at once (tokens/s over the batch).
use std::time::Instant;

use lt_model::{AttnMask, Device, Kind, Logits, Model, ModelConfig};
use tch::Tensor;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

struct Result {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    kv_bytes: usize,
    kv_expected: usize,
}

fn bench(model: &Model, prompt: usize, decode: usize, reps: usize, batch: usize) -> Result {
    let _g = lt_model::InferenceMode::new();
    let v = model.config().vocab_size as i64;
    let bsz = batch as i64;
    let ids: Vec<i64> = (0..(prompt * batch) as i64)
        .map(|i| (i * 7919 + 13) % v)
        .collect();
    let run = || {
        let mut cache = model.new_cache(batch, prompt + decode + 1);
        let t0 = Instant::now();
        let ids_t = Tensor::from_slice(&ids).view([bsz, prompt as i64]);
        let pos = Tensor::arange(prompt as i64, (Kind::Int64, Device::Cpu))
            .view([1, prompt as i64])
            .repeat([bsz, 1]);
        let l = model
            .forward(
                &ids_t,
                &pos,
                AttnMask::Causal,
                Some(&mut cache),
                Logits::Last,
            )
            .unwrap();
        let mut tok = Vec::<i64>::try_from(l.argmax(-1, false)).unwrap();
        let t_prefill = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for i in 0..decode {
            let p = vec![(prompt + i) as i64; batch];
            let l = model
                .forward(
                    &Tensor::from_slice(&tok).view([bsz, 1]),
                    &Tensor::from_slice(&p).view([bsz, 1]),
                    AttnMask::Causal,
                    Some(&mut cache),
                    Logits::Last,
                )
                .unwrap();
            tok = Vec::<i64>::try_from(l.argmax(-1, false)).unwrap();
        }
        (t_prefill, t1.elapsed().as_secs_f64(), cache.bytes())
    };
    run(); // warm-up
    let (mut tp, mut td, mut bytes) = (f64::MAX, f64::MAX, 0);
    for _ in 0..reps {
        let (a, b, c) = run();
        tp = tp.min(a);
        td = td.min(b);
        bytes = c;
    }
    let c = model.config();
    let kv_expected = batch
        * (prompt + decode)
        * c.num_hidden_layers
        * 2
        * c.kv_heads()
        * c.head_dim()
        * model.kind().elt_size_in_bytes();
    Result {
        prefill_tok_s: (prompt * batch) as f64 / tp,
        decode_tok_s: (decode * batch) as f64 / td,
        kv_bytes: bytes,
        kv_expected,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let prompt: usize = arg(&args, "--prompt")
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let decode: usize = arg(&args, "--decode")
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let reps: usize = arg(&args, "--reps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let device =
        lt_model::device::parse_device(&arg(&args, "--device").unwrap_or_else(|| "cpu".into()))
            .unwrap();
    if let Some(dir) = arg(&args, "--model") {
        let kind =
            lt_model::parse_kind(&arg(&args, "--dtype").unwrap_or_else(|| "f32".into())).unwrap();
        let mut model = Model::load(&dir, device, kind).unwrap();
        model.prepack().unwrap();
        let batch: usize = arg(&args, "--batch")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let r = bench(&model, prompt, decode, reps, batch);
        println!(
            "{}",
            serde_json::json!({"impl": "lt-model", "model": dir, "dtype": lt_model::kind_name(kind), "prompt": prompt,
                "decode": decode, "batch": batch, "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s,
                "kv_bytes": r.kv_bytes, "kv_bytes_analytic": r.kv_expected})
        );
        return;
    }
    let tiny = ModelConfig::tiny_qwen2(597, 64, 2, 4, 2, 176);
    for (name, cfg) in [("tiny-qwen2 (597v, h64, 2L)", tiny)] {
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut model = Model::random(&cfg, device, kind, 0).unwrap();
            model.prepack().unwrap();
            let r = bench(&model, prompt, decode, reps, 1);
            println!(
                "{name} {:>8}: prefill {:>9.0} tok/s, decode {:>7.0} tok/s, KV {} B (analytic {} B)",
                lt_model::kind_name(kind),
                r.prefill_tok_s,
                r.decode_tok_s,
                r.kv_bytes,
                r.kv_expected
            );
            assert_eq!(r.kv_bytes, r.kv_expected);
        }
    }
}
