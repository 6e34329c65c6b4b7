//! `lightthinker model`: inspect a checkpoint and score sequences.
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use lt_model::{AttnMask, Logits, Model};
use serde::Deserialize;

/// Subcommands of `lightthinker model`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print architecture, parameters, dtype, vocabulary and memory of an HF model directory.
    Info {
        /// HF checkpoint directory (config.json + safetensors).
        dir: PathBuf,
        /// dtype to load in (f32, bf16, f16); defaults to the checkpoint's `torch_dtype`.
        #[arg(long)]
        dtype: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Score sequences: one forward per request line, all-position logits out.
    Logits {
        /// HF checkpoint directory.
        #[arg(long)]
        model_path: PathBuf,
        /// JSONL of {"name", "input_ids": [...], "position_ids": [...]|null, "mask": intervals|null}.
        #[arg(long)]
        input: PathBuf,
        /// JSONL of {"name", "logits": [[vocab floats] per position]}.
        #[arg(long)]
        output: PathBuf,
        /// f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

/// Run a `lightthinker model` subcommand.
pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Info { dir, dtype, json } => info(dir, dtype, json),
        ModelCommand::Logits {
            model_path,
            input,
            output,
            dtype,
            device,
        } => logits(model_path, input, output, &dtype, &device),
    }
}

fn info(dir: PathBuf, dtype: Option<String>, json: bool) -> anyhow::Result<()> {
    let cfg = lt_model::ModelConfig::from_file(&dir.join("config.json"))?;
    let kind = match dtype.as_deref().or(cfg.torch_dtype.as_deref()) {
        Some(d) => lt_model::parse_kind(d)?,
        None => lt_model::Kind::Float,
    };
    let model = Model::load(&dir, lt_model::Device::Cpu, kind)
        .with_context(|| format!("loading {}", dir.display()))?;
    let c = model.config();
    let params = model.num_parameters();
    let elem = kind.elt_size_in_bytes();
    let kv_per_token = c.num_hidden_layers * 2 * c.kv_heads() * c.head_dim() * elem;
    let v = serde_json::json!({
        "architecture": c.architectures.first().cloned().unwrap_or_default(),
        "family": format!("{:?}", c.family()),
        "parameters": params,
        "dtype": lt_model::kind_name(kind),
        "checkpoint_dtype": c.torch_dtype,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "kv_heads": c.kv_heads(),
        "head_dim": c.head_dim(),
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling.as_ref().and_then(|r| r.rope_type.clone()),
        "tie_word_embeddings": c.tie_word_embeddings,
        "qkv_bias": c.qkv_bias(),
        "weights_bytes": model.parameter_bytes(),
        "kv_bytes_per_token": kv_per_token,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        println!("model:        {}", dir.display());
        println!(
            "architecture: {} ({:?})",
            v["architecture"].as_str().unwrap_or(""),
            c.family()
        );
        println!("parameters:   {params} ({:.2} M)", params as f64 / 1e6);
        println!(
            "dtype:        {} (checkpoint: {})",
            lt_model::kind_name(kind),
            c.torch_dtype.as_deref().unwrap_or("?")
        );
        println!("vocab:        {}", c.vocab_size);
        println!(
            "shape:        {} layers, hidden {}, intermediate {}, {} heads / {} kv heads, head_dim {}",
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.kv_heads(),
            c.head_dim()
        );
        println!(
            "rope:         theta {}, scaling {}",
            c.rope_theta,
            c.rope_scaling
                .as_ref()
                .and_then(|r| r.rope_type.clone())
                .unwrap_or_else(|| "none".into())
        );
        println!("tied lm_head: {}", c.tie_word_embeddings);
        println!(
            "memory:       weights {:.2} MiB, KV cache {} bytes/token ({:.2} MiB per 1k tokens)",
            mib(model.parameter_bytes()),
            kv_per_token,
            mib(kv_per_token * 1000)
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Request {
    name: serde_json::Value,
    input_ids: Vec<i64>,
    #[serde(default)]
    position_ids: Option<Vec<i64>>,
    #[serde(default)]
    mask: Option<Vec<Vec<(u32, u32)>>>,
}

fn logits(
    model_path: PathBuf,
    input: PathBuf,
    output: PathBuf,
    dtype: &str,
    device: &str,
) -> anyhow::Result<()> {
    let kind = lt_model::parse_kind(dtype)?;
    let device = lt_model::device::parse_device(device)?;
    let model = Model::load_for_inference(&model_path, device, kind)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let f = std::fs::File::open(&input).with_context(|| format!("opening {}", input.display()))?;
    let tmp = output.with_extension("jsonl.tmp");
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let _g = lt_model::InferenceMode::new();
    let mut n = 0usize;
    for (lineno, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", input.display(), lineno + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: invalid request", input.display(), lineno + 1))?;
        let at = || format!("{}:{} ({})", input.display(), lineno + 1, req.name);
        let t = req.input_ids.len();
        if t == 0 {
            bail!("{}: input_ids is empty", at());
        }
        let pos: Vec<i64> = match &req.position_ids {
            Some(p) if p.len() != t => bail!(
                "{}: position_ids has {} entries, input_ids {t}",
                at(),
                p.len()
            ),
            Some(p) => p.clone(),
            None => (0..t as i64).collect(),
        };
        let ids = tch::Tensor::from_slice(&req.input_ids).view([1, t as i64]);
        let pos = tch::Tensor::from_slice(&pos).view([1, t as i64]);
        let mask_t = match &req.mask {
            None => None,
            Some(rows) => {
                if rows.len() != t {
                    bail!("{}: mask has {} rows, input_ids {t}", at(), rows.len());
                }
                let m = lt_mask::IntervalMask::from_intervals(t, rows.clone())
                    .with_context(|| format!("{}: field `mask`", at()))?;
                Some(m.to_bool_tensor(device).view([1, 1, t as i64, t as i64]))
            }
        };
        let mask = mask_t.as_ref().map_or(AttnMask::Causal, AttnMask::Bool);
        let logits = model
            .forward(&ids, &pos, mask, None, Logits::All)
            .with_context(at)?
            .squeeze_dim(0)
            .to_kind(tch::Kind::Float)
            .to_device(tch::Device::Cpu);
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&logits)?;
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"name": req.name, "logits": rows}),
        )?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &output).with_context(|| format!("writing {}", output.display()))?;
    tracing::info!(requests = n, output = %output.display(), "wrote logits");
    Ok(())
}
