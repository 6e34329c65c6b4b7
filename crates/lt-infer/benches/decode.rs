//! Decode benchmark: LightThinker (a forced compression every ~40 tokens) versus vanilla on the
//! same random model; and batched throughput.
//!
//! Report (printed, and written to `target/lt-infer-bench.json`): per-token decode time, total
//! time, peak tokens, peak KV bytes, Dep, for a tiny model and a Qwen2.5-0.5B-shaped one; tokens/s
//! at batch 1 vs batch 8. Criterion then times one decode step of each method.
//!
//! Environment: `LT_BENCH_TOKENS` (tiny, default 4096), `LT_BENCH_05B_TOKENS` (default 1024: a long
//! generation, where the method pays off; 0 = skip), `LT_BENCH_05B_REPS` (default 1),
//! `LT_BENCH_DEVICE` (`cpu` default, `cuda`), `LT_BENCH_DTYPE` (`f32` on CPU, `bf16` on CUDA by default), `LT_BENCH_RAGGED=1` (also time a ragged prefill, padded vs split), `LT_BENCH_BATCH` (default 8; 1 = the batch-1 rows only), `LT_BENCH_REPS` (default 3:
//! each row is the fastest of that many identical runs, the compared configurations run
//! round-robin so that the VM's speed drifts hit them alike). With two or more runs, each
//! LightThinker-vs-vanilla line also prints both arms' run-to-run spread (slowest / fastest − 1)
//! and says "within noise" when the difference is smaller than it.
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
    /// Slowest over fastest run, minus one (with two or more runs): the VM's run-to-run noise on
    /// this arm, against which a difference between two arms is read.
    spread: Option<f64>,
    /// The same prompts with one new token: the prefill (and one step), best of as many runs.
    prefill_s: f64,
    prefill_tokens: usize,
    g: Generation,
}

impl Row {
    /// Generated tokens per second after the prefill (what batching buys at decode time).
    fn decode_tok_per_s(&self) -> f64 {
        (self.tokens - self.prefill_tokens) as f64 / (self.seconds - self.prefill_s).max(1e-9)
    }
}

/// One configuration timed by [`run_group`].
struct Arm<'m> {
    method: Method,
    batch: usize,
    gen: Generator<'m>,
    /// The same prompts with one new token: the prefill (and one step).
    gen1: Generator<'m>,
    prompts: Vec<PromptInput>,
}

/// Time every `(method, tokens, batch)` arm, round-robin: each round runs every arm once (the
/// full generation, then the prefill alone), and each row keeps its fastest run. The shared VM
/// drifts between a fast and a ~35 % slower phase within seconds; interleaving puts the arms
/// that are compared with each other (vanilla vs LightThinker, batch 8 vs batch 1) into the same
/// phases instead of one arm's runs into a slow stretch.
/// Identical arms (all of them at `LT_BENCH_BATCH=1`) run once.
fn run_group(m: &Model, name: &str, arms: &[(Method, usize, usize)], reps: usize) -> Vec<Row> {
    let vocab = m.config().vocab_size;
    let mut distinct: Vec<(Method, usize, usize)> = Vec::new();
    for a in arms {
        if !distinct.contains(a) {
            distinct.push(*a);
        }
    }
    let arms: Vec<Arm<'_>> = distinct
        .iter()
        .map(|&(method, tokens, batch)| Arm {
            method,
            batch,
            gen: Generator::new(m, gen_cfg(method, vocab, tokens)),
            gen1: Generator::new(m, gen_cfg(method, vocab, 1)),
            prompts: (0..batch)
                .map(|i| {
                    PromptInput::plain(
                        (0..128)
                            .map(|j| ((i * 131 + j * 7) % 1000 + 1) as i64)
                            .collect(),
                    )
                })
                .collect(),
        })
        .collect();
    let mut best = vec![(f64::MAX, f64::MAX); arms.len()];
    let mut slowest = vec![0f64; arms.len()];
    let mut gens: Vec<Vec<Generation>> = vec![Vec::new(); arms.len()];
    let mut prefill_tokens = vec![0; arms.len()];
    for _ in 0..reps {
        for (i, a) in arms.iter().enumerate() {
            let t0 = Instant::now();
            gens[i] = a
                .gen
                .generate_batch(&a.prompts, &mut ())
                .expect("generation");
            let took = t0.elapsed().as_secs_f64();
            best[i].0 = best[i].0.min(took);
            slowest[i] = slowest[i].max(took);
            let t0 = Instant::now();
            let g1 = a.gen1.generate_batch(&a.prompts, &mut ()).expect("prefill");
            best[i].1 = best[i].1.min(t0.elapsed().as_secs_f64());
            prefill_tokens[i] = g1.iter().map(|g| g.output_ids.len() - 1).sum();
        }
    }
    arms.iter()
        .zip(gens)
        .enumerate()
        .map(|(i, (a, g))| Row {
            model: name.into(),
            method: match a.method {
                Method::Vanilla => "vanilla",
                _ => "lightthinker",
            },
            batch: a.batch,
            tokens: g.iter().map(|g| g.output_ids.len() - 1).sum(),
            seconds: best[i].0,
            spread: (reps > 1).then(|| slowest[i] / best[i].0 - 1.0),
            prefill_s: best[i].1,
            prefill_tokens: prefill_tokens[i],
            g: g.into_iter().next().expect("one"),
        })
        .collect()
}

fn report(rows: &[Row], write_json: bool) {
    println!(
        "{:<10} {:<13} {:>5} {:>7} {:>9} {:>11} {:>9} {:>10} {:>12} {:>10} {:>14} {:>6}",
        "model",
        "method",
        "batch",
        "tokens",
        "total_s",
        "ms/token",
        "tok/s",
        "prefill_s",
        "decode_tok/s",
        "peak_tok",
        "peak_KV_bytes",
        "Dep"
    );
    for r in rows {
        println!(
            "{:<10} {:<13} {:>5} {:>7} {:>9.2} {:>11.3} {:>9.1} {:>10.3} {:>12.1} {:>10} {:>14} {:>6.2e}",
            r.model,
            r.method,
            r.batch,
            r.tokens,
            r.seconds,
            1e3 * r.seconds / r.tokens as f64,
            r.tokens as f64 / r.seconds,
            r.prefill_s,
            r.decode_tok_per_s(),
            r.g.max_token,
            r.g.peak_kv_bytes,
            r.g.dep as f64
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"model": r.model, "method": r.method, "batch": r.batch, "tokens": r.tokens,
                "seconds": r.seconds, "run_spread": r.spread, "ms_per_token": 1e3 * r.seconds / r.tokens as f64,
                "tok_per_s": r.tokens as f64 / r.seconds, "prefill_seconds": r.prefill_s,
                "decode_tok_per_s": r.decode_tok_per_s(), "peak_tokens": r.g.max_token,
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

/// The targets as ratios: per (model, batch, tokens), LightThinker's time saved against
/// its Dep saved; per (model, method, tokens), the batched tokens/s over batch 1.
fn ratios(rows: &[Row]) {
    let ms = |r: &Row| 1e3 * r.seconds / r.tokens as f64;
    let tps = |r: &Row| r.tokens as f64 / r.seconds;
    for v in rows.iter().filter(|r| r.method == "vanilla") {
        if let Some(l) = rows.iter().find(|l| {
            l.method == "lightthinker"
                && l.model == v.model
                && l.batch == v.batch
                && l.tokens == v.tokens
        }) {
            let time_saved = 1.0 - ms(l) / ms(v);
            let dep_saved = 1.0 - l.g.dep as f64 / v.g.dep as f64;
            // a difference smaller than either arm's run-to-run spread is not a measurement
            let noise = match (l.spread, v.spread) {
                (Some(a), Some(b)) => format!(
                    "; run-to-run spread {:.1}% / {:.1}%{}",
                    100.0 * a,
                    100.0 * b,
                    if time_saved.abs() < a.max(b) {
                        ": within noise"
                    } else {
                        ""
                    }
                ),
                _ => "; one run: no noise estimate".into(),
            };
            println!(
                "{} batch {} x {} tokens: LightThinker {:.3} vs vanilla {:.3} ms/token: time saved {:.1}% vs Dep saved {:.1}% (ratio {:.2}; target >= 0.5; never slower: {}{noise})",
                v.model,
                v.batch,
                v.tokens / v.batch,
                ms(l),
                ms(v),
                100.0 * time_saved,
                100.0 * dep_saved,
                time_saved / dep_saved,
                ms(l) <= ms(v)
            );
        }
    }
    for one in rows.iter().filter(|r| r.batch == 1) {
        for many in rows.iter().filter(|r| {
            r.batch > 1
                && r.model == one.model
                && r.method == one.method
                && r.tokens / r.batch == one.tokens
        }) {
            println!(
                "{} {} x {} tokens: batch {} gives {:.0} vs {:.0} tok/s at batch 1: {:.2}x; after the prefill {:.0} vs {:.0}: {:.2}x (target >= 4x at batch 8)",
                one.model,
                one.method,
                one.tokens,
                many.batch,
                tps(many),
                tps(one),
                tps(many) / tps(one),
                many.decode_tok_per_s(),
                one.decode_tok_per_s(),
                many.decode_tok_per_s() / one.decode_tok_per_s()
            );
        }
    }
}

/// A batch of 8 prompts of 32..256 tokens, prefilled (one new token): padded to the longest
/// versus split by the engine's cost model (`Generator::with_forward_cost`).
fn ragged_prefill(m: &Model, name: &str, reps: usize) {
    let vocab = m.config().vocab_size;
    let prompts: Vec<PromptInput> = (0..8)
        .map(|i| {
            PromptInput::plain(
                (0..32 + 32 * i)
                    .map(|j| (j * 7 % 1000 + 1) as i64)
                    .collect(),
            )
        })
        .collect();
    let mut best = [f64::MAX; 2];
    for _ in 0..reps {
        for (i, cost) in [f64::INFINITY, 8.0].into_iter().enumerate() {
            let gen =
                Generator::new(m, gen_cfg(Method::LightThinker, vocab, 1)).with_forward_cost(cost);
            let t0 = Instant::now();
            gen.generate_batch(&prompts, &mut ()).expect("prefill");
            best[i] = best[i].min(t0.elapsed().as_secs_f64());
        }
    }
    println!(
        "{name}: ragged prefill of 8 prompts (32..256 tokens): padded {:.3} s, split {:.3} s ({:.2}x)",
        best[0],
        best[1],
        best[0] / best[1]
    );
}

fn main() {
    let device = match std::env::var("LT_BENCH_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let kind = match std::env::var("LT_BENCH_DTYPE").as_deref() {
        Ok("bf16") => Kind::BFloat16,
        Ok("f32") => Kind::Float,
        _ if device == Device::Cpu => Kind::Float,
        _ => Kind::BFloat16,
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
    let (v, lt) = (Method::Vanilla, Method::LightThinker);
    let mut rows = run_group(
        &tiny,
        "tiny",
        &[(v, n, 1), (lt, n, 1), (v, n, bs), (lt, n, bs)],
        reps,
    );
    if n > 512 {
        rows.extend(run_group(
            &tiny,
            "tiny",
            &[(v, 512, 1), (v, 512, bs), (lt, 512, 1), (lt, 512, bs)],
            reps,
        ));
    }
    let n05 = if smoke {
        0
    } else {
        env("LT_BENCH_05B_TOKENS", 1024)
    };
    // the 0.5B shape is made (and prepacked) once, for its rows and the ragged prefill
    let big = (n05 > 0).then(|| {
        let mut big = Model::random(&ModelConfig::qwen2_5_0_5b_shape(), device, kind, 0)
            .expect("0.5B-shaped model");
        big.prepack().expect("prepack");
        big
    });
    if let Some(big) = &big {
        rows.extend(run_group(
            big,
            "qwen0.5b",
            &[(v, n05, 1), (lt, n05, 1), (v, n05, bs), (lt, n05, bs)],
            // each run is long (~45 s at batch 1): one round unless asked
            env("LT_BENCH_05B_REPS", 1).max(1),
        ));
    }
    report(&rows, !smoke);
    ratios(&rows);
    if !smoke && env("LT_BENCH_RAGGED", 0) > 0 {
        ragged_prefill(&tiny, "tiny", reps);
        if let Some(big) = &big {
            ragged_prefill(big, "qwen0.5b", reps);
        }
    }

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
