//! Training throughput on CPU: lt-train (pad to the batch's longest row, interval masks → bool
//! tensor) versus the reference's collation (every sample padded to `max_length` with a dense
//! mask) in the same engine, and — side by side — a transformers step with the reference's
//! collation (`scripts/lt_train_bench_hf.py`, run when `.venv/bin/python` exists).
//!
//! `cargo bench -p lt-train --bench train_step` (env `LT_BENCH_STEPS`, `LT_BENCH_MAXLEN`).
#[path = "../tests/common/mod.rs"]
mod common;

use lt_data::{Mode, PadTo};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model, ModelConfig};
use lt_train::{train, RowsSource, TrainConfig};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    tch::set_num_threads(1);
    let steps: usize = std::env::var("LT_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let max_length: usize = std::env::var("LT_BENCH_MAXLEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = common::data_with(Mode::AugWoPc, false, max_length);
    let (hidden, layers, heads, kv, inter) = (128, 4, 4, 2, 256);
    let mcfg = ModelConfig::tiny_llama(d.tokenizer.len(), hidden, layers, heads, kv, inter);
    let mbs = 4;
    let real: usize = d.samples.iter().map(|r| r[0].len()).sum();
    println!(
        "tiny Llama h{hidden} L{layers} vocab {}; {} aug-wo-pc samples, mean {:.1} tokens, micro-batch {mbs}, max_length {max_length}, 1 thread",
        d.tokenizer.len(),
        d.samples.len(),
        real as f64 / d.samples.len() as f64
    );
    let mut results = Vec::new();
    for (name, pad) in [
        ("lt-train (pad to longest)", PadTo::Longest),
        (
            "lt-train, reference collation (pad to max_length)",
            PadTo::MaxLength(max_length),
        ),
    ] {
        let mut model = Model::random(&mcfg, Device::Cpu, Kind::Float, 0).unwrap();
        let mut src = RowsSource::new(
            d.samples.clone(),
            mbs,
            MaskFlags::default(),
            pad,
            d.pad_id,
            0,
            false,
        )
        .unwrap();
        let cfg = TrainConfig {
            lr: 1e-3,
            gradient_accumulation_steps: 1,
            max_steps: Some(steps),
            warmup_steps: 1,
            ..Default::default()
        };
        let t0 = Instant::now();
        let rep = train(&cfg, &mut model, &mut src).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let tps = rep.tokens as f64 / dt;
        println!(
            "{name:<52} {:>9.0} real tokens/s  ({:.1} ms/step)",
            tps,
            dt * 1e3 / steps as f64
        );
        results.push(tps);
    }
    // HF transformers side by side, on exactly these rows.
    let py = root.join("../../.venv/bin/python");
    let script = root.join("../../scripts/lt_train_bench_hf.py");
    if py.exists() && script.exists() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<serde_json::Value> = d
            .samples
            .iter()
            .map(|r| {
                let r = &r[0];
                serde_json::json!({"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids,
                    "mask": r.mask(&MaskFlags::default(), None).unwrap().to_dense()})
            })
            .collect();
        let rows_path = dir.path().join("rows.json");
        std::fs::write(&rows_path, serde_json::to_string(&serde_json::json!({
            "rows": rows, "pad_id": d.pad_id, "vocab": d.tokenizer.len(), "hidden": hidden, "layers": layers,
            "heads": heads, "kv_heads": kv, "intermediate": inter, "micro_batch": mbs, "max_length": max_length, "steps": steps
        })).unwrap()).unwrap();
        match std::process::Command::new(&py)
            .arg(&script)
            .arg(&rows_path)
            .output()
        {
            Ok(o) if o.status.success() => {
                let s = String::from_utf8_lossy(&o.stdout);
                print!("{s}");
                if let Some(hf) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("HF_TOKENS_PER_S "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    println!(
                        "speed-up of lt-train over HF with the reference collation: {:.2}x",
                        results[0] / hf
                    );
                }
            }
            Ok(o) => println!("HF bench failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => println!("HF bench not run: {e}"),
        }
    }
}
