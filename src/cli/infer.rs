//! `lightthinker infer`: generation with thought compression (LightThinker, AnLLM) or vanilla,
//! writing the reference's JSONL records (plus ours), sharded and resumable.
//!
//! Every option also accepts the reference's underscore spelling (`--model_path`, `--see_current`,
//! …), so a command line written for `inference.py` / `inference.sh` works unchanged.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lt_infer::quick::Dataset;
use lt_infer::run::{self, InferOptions};
use lt_infer::{Method, UpdateMethod};
use lt_mask::MaskFlags;

use super::parse_bool;

/// Arguments of `lightthinker infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// HF checkpoint directory (default: `output/{model_tag}/checkpoint-{ckpt}` under `--root-dir`).
    #[arg(long, alias = "model_path")]
    pub model_path: Option<PathBuf>,
    /// Base tokenizer (`tokenizer.json` or a directory holding it); the LightThinker tokens are added.
    #[arg(long, alias = "tokenizer_path")]
    pub tokenizer_path: Option<PathBuf>,
    /// Compression config (`configs/LightThinker/<model>/v1.json`).
    #[arg(long, alias = "compress_config")]
    pub compress_config: PathBuf,
    /// Model family of the checkpoint.
    #[arg(long, alias = "model_type", default_value = "qwen", value_parser = ["qwen", "llama"])]
    pub model_type: String,
    /// BOS string prepended to the prompt text.
    #[arg(long, alias = "bos_token", default_value = "<|im_start|>")]
    pub bos_token: String,
    /// The stop token (its id is the only stop id).
    #[arg(long, alias = "eos_token", default_value = "<|im_end|>")]
    pub eos_token: String,
    /// Maximum number of generated tokens (loop iterations).
    #[arg(long, alias = "max_new_tokens", default_value_t = 10240)]
    pub max_new_tokens: usize,
    /// Generation method.
    #[arg(long, default_value = "lightthinker", value_parser = ["lightthinker", "anllm", "vanilla"])]
    pub method: String,
    /// Cache tokens see only the current thought.
    #[arg(long, alias = "see_current", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub see_current: bool,
    /// Cache tokens of a block see each other.
    #[arg(long, alias = "bi_directional", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub bi_directional: bool,
    /// Each cache token sees only itself inside its block.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub diagonal: bool,
    /// NON-REFERENCE: positions = current cache length (the reference crashes with true).
    #[arg(long, alias = "rolling_rope", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub rolling_rope: bool,
    /// Compress the prompt at prefill (the reference's argparse default is true; the paper and
    /// inference.sh use false, which is the default here).
    #[arg(long, alias = "compress_prompt", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub compress_prompt: bool,
    /// With a compressed prompt: apply the compression mask during prefill (false = plain causal).
    #[arg(long, alias = "prefill_compress", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub prefill_compress: bool,
    /// `local` (the reference) or `global` (self-check; identical outputs here).
    #[arg(long, alias = "update_attention_method", default_value = "local", value_parser = ["local", "global"])]
    pub update_attention_method: String,
    /// Number of shards (with `--index`).
    #[arg(long, alias = "split_size", requires = "index")]
    pub split_size: Option<usize>,
    /// 1-based shard index (the last shard takes the remainder).
    #[arg(long, requires = "split_size")]
    pub index: Option<usize>,
    /// Dataset; without it the reference's four run in its order (mmlu, gsm8k, gpqa, bbh).
    #[arg(long, value_enum)]
    pub dataset: Option<super::DatasetArg>,
    /// Evaluation file in the reference's `data/eval/<dataset>.json` layout
    /// (default: `{root_dir}/data/eval/<dataset>.json`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output JSONL (default: the reference's
    /// `inference_results/{output_tag}/{dataset}/{ckpt}/{index}-{split_size}{model_short_tag}.jsonl`).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Model dtype.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub dtype: String,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Prompts generated together (each compresses and evicts on its own; outputs equal batch 1).
    #[arg(long, alias = "batch_size", default_value_t = 1)]
    pub batch_size: usize,
    /// Reference: checkpoint directory name under `output/` when `--model-path` is absent.
    #[arg(long, alias = "model_tag", default_value = "")]
    pub model_tag: String,
    /// Reference: checkpoint number (also part of the default output path).
    #[arg(long, default_value = "0")]
    pub ckpt: String,
    /// Reference: output directory tag of the default output path.
    #[arg(long, alias = "output_tag", default_value = "")]
    pub output_tag: String,
    /// Reference: file-name suffix of the default output path (default: model_tag).
    #[arg(long, alias = "model_short_tag")]
    pub model_short_tag: Option<String>,
    /// Reference: root directory that relative default paths start from.
    #[arg(long, alias = "root_dir", default_value = ".")]
    pub root_dir: PathBuf,
    /// Reference: log-file prefix (accepted, unused).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Reference: dead at inference (accepted, ignored).
    #[arg(long, alias = "exclude_continue", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_continue: bool,
    /// Reference: dead at inference (accepted; a non-empty value only warns).
    #[arg(long, alias = "output_compress_instruction", default_value = "None")]
    pub output_compress_instruction: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Run `lightthinker infer`.
pub fn run(a: InferArgs) -> anyhow::Result<()> {
    let method = match a.method.as_str() {
        "anllm" => Method::Anllm,
        "vanilla" => Method::Vanilla,
        _ => Method::LightThinker,
    };
    if !matches!(a.output_compress_instruction.as_str(), "None" | "") {
        tracing::warn!(
            "--output-compress-instruction is unused at inference (as in the reference)"
        );
    }
    if a.rolling_rope {
        tracing::warn!("--rolling-rope true is NON-REFERENCE (the reference crashes): new tokens get position = cache length");
    }
    let kind = lt_model::parse_kind(&a.dtype)?;
    let device = lt_model::device::parse_device(&a.device)?;
    let model_path = match &a.model_path {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => a
            .root_dir
            .join("output")
            .join(&a.model_tag)
            .join(format!("checkpoint-{}", a.ckpt)),
    };
    let tokenizer_path = a
        .tokenizer_path
        .clone()
        .unwrap_or_else(|| model_path.clone());
    let datasets: Vec<Dataset> = match &a.dataset {
        Some(d) => vec![Dataset::from(*d)],
        None => Dataset::REFERENCE_ORDER.to_vec(),
    };
    if datasets.len() > 1 && (a.data.is_some() || a.output.is_some()) {
        anyhow::bail!("--data / --output need --dataset");
    }
    let vocab = run::Vocab::load(
        &tokenizer_path,
        &a.compress_config,
        &a.bos_token,
        &a.eos_token,
    )
    .with_context(|| {
        format!(
            "vocabulary of tokenizer {} with compress config {}",
            tokenizer_path.display(),
            a.compress_config.display()
        )
    })?;
    tracing::info!(model = %model_path.display(), ?device, dtype = %a.dtype, "loading model");
    let model = lt_model::Model::load_for_inference(&model_path, device, kind)
        .with_context(|| format!("loading model {}", model_path.display()))?;
    let short = a
        .model_short_tag
        .clone()
        .unwrap_or_else(|| a.model_tag.clone());
    for ds in datasets {
        let data = a.data.clone().unwrap_or_else(|| {
            a.root_dir
                .join("data/eval")
                .join(format!("{}.json", ds.name()))
        });
        let output = a.output.clone().unwrap_or_else(|| {
            run::reference_output_path(
                &a.root_dir,
                &a.output_tag,
                ds,
                &a.ckpt,
                a.split_size,
                a.index,
                &short,
            )
        });
        let opts = InferOptions {
            model_path: model_path.clone(),
            tokenizer_path: tokenizer_path.clone(),
            compress_config: a.compress_config.clone(),
            model_type: a.model_type.clone(),
            bos_token: a.bos_token.clone(),
            eos_token: a.eos_token.clone(),
            max_new_tokens: a.max_new_tokens,
            method,
            flags: MaskFlags {
                see_current: a.see_current,
                bi_directional: a.bi_directional,
                diagonal: a.diagonal,
                exclude_continue: false,
                prefill_compress: a.prefill_compress,
            },
            rolling_rope: a.rolling_rope,
            compress_prompt: a.compress_prompt,
            update: if a.update_attention_method == "global" {
                UpdateMethod::Global
            } else {
                UpdateMethod::Local
            },
            split_size: a.split_size,
            index: a.index,
            dataset: ds,
            data: data.clone(),
            output: output.clone(),
            kind,
            device,
            batch_size: a.batch_size.max(1),
            progress: !a.no_progress,
            trace: false,
            system_prompt: None,
        };
        let s = run::run_with(&opts, &vocab, &model).with_context(|| {
            format!("{}: {} -> {}", ds.name(), data.display(), output.display())
        })?;
        tracing::info!(
            dataset = ds.name(),
            written = s.written,
            skipped = s.skipped,
            tokens = s.tokens,
            compressions = s.compressions,
            tok_per_s = format!("{:.1}", s.tokens as f64 / s.seconds.max(1e-9)),
            output = %output.display(),
            "done"
        );
    }
    Ok(())
}
