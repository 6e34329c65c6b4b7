//! `lightthinker train`: every training argument of the reference (`ARGS.md`) as a kebab-case
//! flag, on top of `lt_train`.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use lt_data::{BuildOptions, Mode, PadTo};
use lt_mask::MaskFlags;
use lt_model::{Kind, Model};
use lt_train::{RowsSource, SaveDtype, SchedulerKind, TrainConfig};

use super::parse_bool;

/// Arguments of `lightthinker train`.
///
/// Booleans take `true`/`false` like the reference scripts (`--hybrid false`); a bare flag means true.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct TrainArgs {
    /// Model family: `qwen` or `llama` (selects the default BOS/EOS and the config folder).
    #[arg(long, default_value = "qwen")]
    pub model_type: String,
    /// tokenizer.json (or a directory holding one); defaults to --model-path.
    #[arg(long)]
    pub tokenizer_path: Option<PathBuf>,
    /// HF model directory (config.json + safetensors) to fine-tune.
    #[arg(long)]
    pub model_path: PathBuf,
    /// BOS string prepended to prompts (default: `<|im_start|>` for qwen, `<|begin_of_text|>` for llama).
    #[arg(long)]
    pub bos_token: Option<String>,
    /// EOS string appended to outputs; its id also pads inputs (default: `<|im_end|>` / `<|eot_id|>`).
    #[arg(long)]
    pub eos_token: Option<String>,
    /// Compression config name: `configs/LightThinker/{model_type}/{conf_version}.json`.
    #[arg(long, default_value = "v1")]
    pub conf_version: String,
    /// Explicit compression config file (wins over --conf-version).
    #[arg(long)]
    pub compress_config: Option<PathBuf>,
    /// Truncation length P (samples are cut, never dropped).
    #[arg(long, default_value_t = 768)]
    pub max_length: usize,
    /// `linear`, `cosine` or `constant` (HF schedules with warmup).
    #[arg(
        long,
        alias = "lr-schedule-type",
        alias = "lr_scheduler_type",
        alias = "lr_schedule_type",
        default_value = "cosine"
    )]
    pub lr_scheduler_type: String,
    /// Number of epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Peak learning rate (AdamW 0.9/0.999/1e-8, weight decay 0).
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Samples per micro-batch (hybrid doubles the rows).
    #[arg(long, default_value_t = 5)]
    pub micro_batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long, default_value_t = 4)]
    pub gradient_accumulation_steps: usize,
    /// Warmup as a fraction of the total steps: ceil(total * ratio) (used when --warmup-steps is 0).
    #[arg(long, default_value_t = 0.05)]
    pub warmup_ratio: f64,
    /// Warmup steps (wins over --warmup-ratio when > 0).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// `normal`, `aug`, `aug-wo-pc` (the paper's method) or `recover`.
    #[arg(long, default_value = "aug-wo-pc")]
    pub mode: String,
    /// Only used to name the default output directory.
    #[arg(long, default_value = "")]
    pub model_size: String,
    /// Only used to name the default output directory.
    #[arg(long, default_value = "")]
    pub init_tag: String,
    /// Training JSONL (`.gz` allowed): question, system_prompt, system_list, question_list, thoughts_list, gt_output[, add_eos].
    #[arg(long)]
    pub train_path: PathBuf,
    /// Cache tokens see only the current thought.
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub see_current: bool,
    /// Cache tokens of a block see each other.
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub bi_directional: bool,
    /// Each cache token sees only itself inside its block (ARGS.md spells it `diagnonal`).
    #[arg(long, alias = "diagnonal", value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub diagonal: bool,
    /// Label the prompt too (recommended false).
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub train_on_input: bool,
    /// aug/recover: add the prompt-reconstruction row to every sample (ignored by normal and aug-wo-pc).
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub hybrid: bool,
    /// Text inserted before the cache tokens of every thought (`None` = empty, as the reference).
    #[arg(long, default_value = "")]
    pub output_compress_instruction: String,
    /// Compress the prompt during prefill; false = plain causal prefill (aug/recover only; aug-wo-pc forces false).
    #[arg(long, value_parser = parse_bool, default_value = "true", num_args = 0..=1, default_missing_value = "true")]
    pub prefill_compress: bool,
    /// Accepted and ignored, as in the reference (checkpoints are per epoch); use --checkpoint-steps.
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Accepted and ignored: this engine trains in one process (see docs/train.md for multi-GPU).
    #[arg(long)]
    pub deepspeed: Option<String>,
    /// Hide the previous block's `<|continue|>` from later tokens (live in the reference; keep false for parity).
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub exclude_continue: bool,
    /// Extra cache-token q/k/v projections: only `no` is supported (the reference's setting).
    #[arg(long, default_value = "no")]
    pub qkv: String,
    /// Train only new-token embeddings: only `false` is supported (the reference's setting).
    #[arg(long, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub freeze_model: bool,
    /// Output directory (metrics.jsonl, loss.svg, checkpoint-STEP/); default named from the flags under `output/`.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute dtype: f32 or bf16 (default: bf16 on CUDA, f32 on CPU). Master weights and optimizer state are always f32.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Seed of the data order (and of nothing else: there is no dropout).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many optimizer steps (also the schedule length).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue from the newest checkpoint in --output-dir.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing run in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
    /// Also checkpoint every N optimizer steps.
    #[arg(long)]
    pub checkpoint_steps: Option<usize>,
    /// Pad every sample to --max-length like the reference (default: pad to the batch's longest row).
    #[arg(long)]
    pub pad_to_max_length: bool,
    /// Emulate DeepSpeed's extra 1/GAS loss scale before clipping (the reference's effective clip threshold).
    #[arg(long)]
    pub deepspeed_gas_scale: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

const AFTER_HELP: &str = "\
Output: OUT/metrics.jsonl (one line per optimizer step: step, loss, lr, grad_norm, tokens_per_s, ...),
OUT/loss.svg, OUT/tokenizer.json (the expanded tokenizer) and OUT/checkpoint-<step>/ at the end of every
epoch (HF config.json + model.safetensors, optimizer.safetensors, scheduler.json, trainer_state.json).
An existing run is never overwritten without --resume or --overwrite.

Reference flags kept for compatibility: --save-steps and --deepspeed are ignored (as in the reference /
single process here); --exclude-continue is live (it changes the mask); --qkv must be `no` and
--freeze-model false (the reference's values; the other code paths are not implemented).";

fn default_output_dir(a: &TrainArgs) -> PathBuf {
    let b = |x: bool| if x { "1" } else { "0" };
    PathBuf::from("output").join(format!(
        "{}{}{}-{}-len_{}-ep_{}-lr_{}-bs_{}x{}-{}-{}-sc{}bi{}dg{}ex{}pc{}-toi{}{}",
        a.init_tag,
        a.lr_scheduler_type,
        a.model_size,
        a.model_type,
        a.max_length,
        a.epochs,
        a.lr,
        a.micro_batch_size,
        a.gradient_accumulation_steps,
        a.mode,
        a.conf_version,
        b(a.see_current),
        b(a.bi_directional),
        b(a.diagonal),
        b(a.exclude_continue),
        b(a.prefill_compress),
        b(a.train_on_input),
        if a.hybrid { "-hybrid" } else { "" },
    ))
}

/// Run `lightthinker train`.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let mode: Mode = a.mode.parse().map_err(|e| anyhow::anyhow!("--mode: {e}"))?;
    let scheduler: SchedulerKind = a
        .lr_scheduler_type
        .parse()
        .map_err(|e| anyhow::anyhow!("--lr-scheduler-type: {e}"))?;
    let qkv = a.qkv.to_ascii_lowercase();
    if !(qkv.is_empty() || qkv == "no" || qkv == "none" || !qkv.contains(['q', 'k', 'v'])) {
        bail!("--qkv {}: the extra cache-token q/k/v projections are not supported (the reference trains with `no`)", a.qkv);
    }
    if a.freeze_model {
        bail!(
            "--freeze-model true is not supported (the reference trains all parameters with false)"
        );
    }
    if a.model_type != "qwen" && a.model_type != "llama" {
        bail!("--model-type must be qwen or llama, got `{}`", a.model_type);
    }
    if a.save_steps.is_some() {
        tracing::info!("--save-steps is ignored as in the reference (checkpoints per epoch; see --checkpoint-steps)");
    }
    if let Some(ds) = &a.deepspeed {
        tracing::info!(config = %ds, "--deepspeed is ignored: single-process training");
    }
    let instruction = if a.output_compress_instruction == "None" {
        String::new()
    } else {
        a.output_compress_instruction.clone()
    };
    let (bos, eos) = if a.model_type == "llama" {
        ("<|begin_of_text|>", "<|eot_id|>")
    } else {
        ("<|im_start|>", "<|im_end|>")
    };
    let flags = MaskFlags {
        see_current: a.see_current,
        bi_directional: a.bi_directional,
        diagonal: a.diagonal,
        exclude_continue: a.exclude_continue,
        prefill_compress: a.prefill_compress && mode != Mode::AugWoPc,
    };
    let opts = BuildOptions {
        mode,
        hybrid: a.hybrid && matches!(mode, Mode::Aug | Mode::Recover),
        max_length: a.max_length,
        train_on_input: a.train_on_input,
        flags,
        output_compress_instruction: instruction,
        bos_token: a.bos_token.clone().unwrap_or_else(|| bos.into()),
        eos_token: a.eos_token.clone().unwrap_or_else(|| eos.into()),
    };
    let compress_config = a.compress_config.clone().unwrap_or_else(|| {
        PathBuf::from("configs/LightThinker")
            .join(&a.model_type)
            .join(format!("{}.json", a.conf_version))
    });
    let tokenizer_path = a
        .tokenizer_path
        .clone()
        .unwrap_or_else(|| a.model_path.clone());
    let out = a
        .output_dir
        .clone()
        .unwrap_or_else(|| default_output_dir(&a));

    // Everything that can fail on bad input happens before the model is touched.
    if !a.resume && !a.overwrite && lt_train::holds_run(&out) {
        return Err(lt_train::TrainError::OutputExists(out).into());
    }
    let data = lt_train::prepare_data(&a.train_path, &tokenizer_path, &compress_config, opts)?;
    tracing::info!(
        samples = data.samples.len(),
        truncated = data.truncated,
        unsupervised = data.unsupervised,
        vocab = data.tokenizer.len(),
        "training data built ({mode})"
    );

    lt_model::device::load_cuda_library();
    let device = lt_model::device::parse_device(&a.device)?;
    let kind = match &a.dtype {
        Some(s) => lt_model::parse_kind(s)?,
        None if device.is_cuda() => Kind::BFloat16,
        None => Kind::Float,
    };
    let mut model = Model::load(&a.model_path, device, kind)
        .with_context(|| format!("loading {}", a.model_path.display()))?;
    if model.config().vocab_size != data.tokenizer.len() {
        tracing::info!(
            from = model.config().vocab_size,
            to = data.tokenizer.len(),
            "resizing the vocabulary"
        );
        model.resize_vocab(data.tokenizer.len(), &data.embedding_init)?;
    }
    let pad = if a.pad_to_max_length {
        PadTo::MaxLength(a.max_length)
    } else {
        PadTo::Longest
    };
    let mut source = RowsSource::new(
        data.samples,
        a.micro_batch_size,
        flags,
        pad,
        data.pad_id,
        a.seed,
        true,
    )?;
    let cfg = TrainConfig {
        lr: a.lr,
        scheduler,
        warmup_ratio: a.warmup_ratio,
        warmup_steps: a.warmup_steps,
        epochs: a.epochs,
        gradient_accumulation_steps: a.gradient_accumulation_steps,
        max_grad_norm: 1.0,
        max_steps: a.max_steps,
        save_steps: a.checkpoint_steps,
        save_each_epoch: true,
        seed: a.seed,
        output_dir: Some(out.clone()),
        resume: a.resume,
        overwrite: a.overwrite,
        save_dtype: Some(match kind {
            Kind::BFloat16 => SaveDtype::Bf16,
            Kind::Half => SaveDtype::F16,
            _ => SaveDtype::F32,
        }),
        adamw: Default::default(),
        deepspeed_gas_scale: a.deepspeed_gas_scale,
        progress: !a.no_progress,
        halt_after: None,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let report = lt_train::train(&cfg, &mut model, &mut source)?;
    data.tokenizer.save(out.join("tokenizer.json"))?;
    if report.metrics.is_empty() {
        eprintln!(
            "nothing to do: the run in {} is already complete ({} steps)",
            out.display(),
            report.steps
        );
        return Ok(());
    }
    eprintln!(
        "trained {} steps ({} this run, {:.0} tokens/s); final loss {:.4}; checkpoints in {}",
        report.steps,
        report.metrics.len(),
        report.tokens_per_s(),
        report.final_loss().unwrap_or(f64::NAN),
        out.display()
    );
    Ok(())
}
