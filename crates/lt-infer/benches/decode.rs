//! Decode benchmark: LightThinker (a forced compression every ~40 tokens) versus vanilla on the
//! same random model; and batched throughput.
//!
//! Report (printed, and written to `target/lt-infer-bench.json`): per-token decode time, total
//! time, peak tokens, peak KV bytes, Dep, for a tiny model and a Qwen2.5-0.5B-shaped one; tokens/s
//! at batch 1 vs batch 8. Criterion then times one decode step of each method.
//!
//! Environment: `LT_BENCH_TOKENS` (tiny, default 4096), `LT_BENCH_05B_TOKENS` (default 256, 0 = skip),
//! `LT_BENCH_DEVICE` (`cpu` default, `cuda`), `LT_BENCH_BATCH` (default 8), `LT_BENCH_REPS` (default 3:
//! each row is the fastest of that many identical runs).
use std::time::Instant;

use criterion::Criterion;
use lt_infer::{GenConfig, Generation, Generator, Level, Method, PromptInput, UpdateMethod};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model, ModelConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gen_cfg(method: Method, vocab: usize, max_new: usize) -> GenConfig {
    GenConfig {
        method,
        // a compression every 40 generated tokens = a splitter forced every ~40 tokens
        level: Level::Token { step: 40 },
        comp_ids: (vocab as i64 - 11..vocab as i64 - 2).collect(), // C = 9 like Qwen v1
        trigger_id: vocab as i64 - 12,
        continue_id: vocab as i64 - 2,
        eos_id: -1, // never stops early: exactly max_new tokens
        max_new_tokens: max_new,
        flags: MaskFlags::default(),
        rolling_rope: false,
        update: UpdateMethod::Local,
        capacity: None,
        trace: false,
    }
}

struct Row {
    model: String,
    method: &'static str,
    batch: usize,
    tokens: usize,
    seconds: f64,
    g: Generation,
}

fn run(m: &Model, name: &str, method: Method, tokens: usize, batch: usize, reps: usize) -> Row {
    let vocab = m.config().vocab_size;
    let gen = Generator::new(m, gen_cfg(method, vocab, tokens));
    let prompts: Vec<PromptInput> = (0..batch)
        .map(|i| {
            PromptInput::plain(
                (0..128)
                    .map(|j| ((i * 131 + j * 7) % 1000 + 1) as i64)
                    .collect(),
            )
        })
        .collect();
    // best of LT_BENCH_REPS runs (the shared VM is noisy; outputs are identical every run)
    let mut seconds = f64::MAX;
    let mut gens = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        gens = gen.generate_batch(&prompts, &mut ()).expect("generation");
        seconds = seconds.min(t0.elapsed().as_secs_f64());
    }
    let tokens_out: usize = gens.iter().map(|g| g.output_ids.len() - 1).sum();
    Row {
        model: name.into(),
        method: match method {
            Method::Vanilla => "vanilla",
            _ => "lightthinker",
        },
        batch,
        tokens: tokens_out,
        seconds,
        g: gens.into_iter().next().expect("one"),
    }
}

fn report(rows: &[Row], write_json: bool) {
    println!(
        "{:<10} {:<13} {:>5} {:>7} {:>9} {:>11} {:>9} {:>10} {:>14} {:>6}",
        "model",
        "method",
        "batch",
        "tokens",
        "total_s",
        "ms/token",
        "tok/s",
        "peak_tok",
        "peak_KV_bytes",
        "Dep"
    );
    for r in rows {
        println!(
            "{:<10} {:<13} {:>5} {:>7} {:>9.2} {:>11.3} {:>9.1} {:>10} {:>14} {:>6.2e}",
            r.model,
            r.method,
            r.batch,
            r.tokens,
            r.seconds,
            1e3 * r.seconds / r.tokens as f64,
            r.tokens as f64 / r.seconds,
            r.g.max_token,
            r.g.peak_kv_bytes,
            r.g.dep as f64
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"model": r.model, "method": r.method, "batch": r.batch, "tokens": r.tokens,
                "seconds": r.seconds, "ms_per_token": 1e3 * r.seconds / r.tokens as f64,
                "tok_per_s": r.tokens as f64 / r.seconds, "peak_tokens": r.g.max_token,
                "peak_kv_bytes": r.g.peak_kv_bytes, "dep": r.g.dep, "compressions": r.g.n_compress})
        })
        .collect();
    if !write_json {
        return;
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/lt-infer-bench.json");
    let _ = std::fs::write(
        path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}

fn main() {
    let device = match std::env::var("LT_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let kind = if device == Device::Cpu {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let mut tiny = Model::random(
        &ModelConfig::tiny_qwen2(1024, 128, 4, 4, 2, 344),
        device,
        kind,
        0,
    )
    .expect("tiny model");
    tiny.prepack().expect("prepack");
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it: then
    // only a quick smoke run (no 0.5B model, short generations, one rep).
    let smoke = !std::env::args().any(|a| a == "--bench");
    let reps = if smoke {
        1
    } else {
        env("LT_BENCH_REPS", 3).max(1)
    };
    let n = if smoke {
        64
    } else {
        env("LT_BENCH_TOKENS", 4096)
    };
    let bs = if smoke { 2 } else { env("LT_BENCH_BATCH", 8) };
    let mut rows = Vec::new();
    for method in [Method::Vanilla, Method::LightThinker] {
        rows.push(run(&tiny, "tiny", method, n, 1, reps));
    }
    for method in [Method::Vanilla, Method::LightThinker] {
        rows.push(run(&tiny, "tiny", method, n.min(512), 1, reps));
        rows.push(run(&tiny, "tiny", method, n.min(512), bs, reps));
    }
    let n05 = if smoke {
        0
    } else {
        env("LT_BENCH_05B_TOKENS", 256)
    };
    if n05 > 0 {
        let mut big = Model::random(&ModelConfig::qwen2_5_0_5b_shape(), device, kind, 0)
            .expect("0.5B-shaped model");
        big.prepack().expect("prepack");
        for method in [Method::Vanilla, Method::LightThinker] {
            rows.push(run(&big, "qwen0.5b", method, n05, 1, reps));
        }
    }
    report(&rows, !smoke);

    // Criterion: one generation of 128 tokens on the tiny model (per-token time = result / 128).
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    for method in [Method::Vanilla, Method::LightThinker] {
        let gen = Generator::new(&tiny, gen_cfg(method, 1024, 128));
        let prompt = PromptInput::plain((1..129).collect());
        c.bench_function(&format!("tiny_{method:?}_128_tokens"), |b| {
            b.iter(|| gen.generate(&prompt).expect("gen"))
        });
    }
    c.final_summary();
}
