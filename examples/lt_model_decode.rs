//! Load an HF model directory and greedy-decode with one forced LightThinker compression:
//! after `--thought` generated tokens, force `C` cache tokens + a continue token (they attend to
//! the thought), evict the thought's KV and keep decoding over the compacted cache.
//!
//! ```text
//! cargo run --example lt_model_decode -- crates/lt-model/tests/fixtures/qwen2_lt/model \
//!     --prompt 585,248,27 --cache-ids 595,596 --continue-id 588 --thought 8 --steps 12
//! ```
use anyhow::{Context, Result};
use lt_model::{AttnMask, Kind, Logits, Model};
use tch::Tensor;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn list(args: &[String], name: &str, default: &str) -> Vec<i64> {
    let s = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.as_str());
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .context("usage: lt_model_decode MODEL_DIR [--prompt ids] [--cache-ids ids] ...")?;
    let device = lt_model::device::cuda_if_available();
    let model = Model::load_for_inference(dir, device, Kind::Float)?;
    let vocab = model.config().vocab_size as i64;
    let prompt = list(&args, "--prompt", "1,2,3");
    let cache_ids = list(
        &args,
        "--cache-ids",
        &format!("{},{}", vocab - 2, vocab - 1),
    );
    let continue_id: i64 = arg(&args, "--continue-id", vocab - 3);
    let thought: usize = arg(&args, "--thought", 6);
    let steps: usize = arg(&args, "--steps", 12);

    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(1, 64);
    let mut next_pos = 0i64;
    let feed = |cache: &mut lt_model::KvCache,
                ids: &[i64],
                pos: &mut i64,
                mask: Option<&Tensor>|
     -> Result<i64> {
        let n = ids.len() as i64;
        let t = Tensor::from_slice(ids).view([1, n]);
        let p = Tensor::arange_start(*pos, *pos + n, (Kind::Int64, tch::Device::Cpu)).view([1, n]);
        *pos += n;
        let m = mask.map_or(AttnMask::Causal, AttnMask::Bool);
        let logits = model.forward(&t, &p, m, Some(cache), Logits::Last)?;
        Ok(logits.argmax(-1, false).int64_value(&[0]))
    };
    let mut tok = feed(&mut cache, &prompt, &mut next_pos, None)?;
    let thought_start = cache.len();
    let mut out = Vec::new();
    for _ in 0..thought {
        out.push(tok);
        tok = feed(&mut cache, &[tok], &mut next_pos, None)?;
    }
    // compression: feed [cache tokens.., continue]; cache rows see everything so far, the continue
    // row does not see the thought (the reference's default flags)
    let l = cache.len();
    let block: Vec<i64> = cache_ids.iter().copied().chain([continue_id]).collect();
    let q = block.len();
    let rows: Vec<Vec<(u32, u32)>> = (0..q)
        .map(|r| {
            if r + 1 < q {
                vec![(0, (l + r + 1) as u32)]
            } else {
                vec![(0, thought_start as u32), (l as u32, (l + r + 1) as u32)]
            }
        })
        .collect();
    let mask = lt_mask::IntervalMask::from_intervals(l + q, rows)?
        .to_bool_tensor(device)
        .view([1, 1, q as i64, (l + q) as i64]);
    let before = cache.bytes();
    tok = feed(&mut cache, &block, &mut next_pos, Some(&mask))?;
    cache.evict(thought_start..l);
    println!(
        "compressed thought {:?}: KV {} -> {} bytes, positions now {:?}",
        out,
        before,
        cache.bytes(),
        cache.positions()
    );
    for _ in 0..steps {
        out.push(tok);
        tok = feed(&mut cache, &[tok], &mut next_pos, None)?;
    }
    println!("generated: {out:?}");
    println!("cache: {} slots, {} bytes", cache.len(), cache.bytes());
    Ok(())
}
