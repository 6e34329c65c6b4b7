//! The demo pipeline: data → tokenizer → two tiny models trained with `lt-train` → generation with
//! `lt-infer` → metrics with `lt-eval`. Nothing here bypasses the library crates.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lt_data::{BuildOptions, Builder, CompressConfig, LtTokenizer, Mode, PadTo, TrainSample};
use lt_eval::{
    CompressSettings, Dataset, Judge, JudgeMode, Method as EvalMethod, MetricOptions, Summary,
};
use lt_infer::run::{run_with, InferOptions, Vocab};
use lt_infer::{Method as InferMethod, UpdateMethod};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model, ModelConfig};
use lt_train::{Control, FnSource, SchedulerKind, StepMetrics, TrainBatch, TrainConfig};
use serde::Serialize;
use serde_json::json;

use super::task::{gsm8k_file, Problem, ProblemStream, TaskShape, BOXED_INSTRUCTION};
use super::tokenizer::{train_tokenizer, BOS, EOS};

/// The demo's compression config (`configs/demo/v1.json`): thought-level output compression with two
/// cache tokens, a minimal template (no system prompt).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo/v1.json");

/// Everything the demo can be told.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Output folder.
    pub out: PathBuf,
    /// Tiny budget: checks the pipeline runs, not accuracy.
    pub quick: bool,
    /// Master seed.
    pub seed: u64,
    /// Held-out problems.
    pub n_eval: usize,
    /// Optimizer steps of the vanilla model.
    pub vanilla_steps: usize,
    /// Optimizer steps of the LightThinker model.
    pub lightthinker_steps: usize,
    /// Problems per optimizer step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Sequences generated together.
    pub infer_batch: usize,
    /// Train/evaluate the two models on two threads at once (one core each).
    pub parallel: bool,
}

impl DemoOptions {
    /// The defaults (`quick` = the CI budget).
    pub fn new(out: PathBuf, quick: bool) -> Self {
        DemoOptions {
            out,
            quick,
            seed: 1234,
            n_eval: if quick { 16 } else { 200 },
            vanilla_steps: if quick { 12 } else { 2600 },
            lightthinker_steps: if quick { 12 } else { 2600 },
            batch_size: 16,
            lr: 3e-3,
            infer_batch: 16,
            parallel: true,
        }
    }
}

/// One method's line of `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    /// Problems evaluated.
    pub n: usize,
    /// Accuracy in percent.
    pub acc: f64,
    /// Total generation seconds.
    pub time_s: f64,
    /// Mean peak KV tokens per problem.
    pub peak: f64,
    /// Mean Dep per problem.
    pub dep: f64,
    /// Mean compressions per problem.
    pub compressions: f64,
}

impl MethodResult {
    fn from_summary(s: &Summary) -> Self {
        MethodResult {
            n: s.n,
            acc: s.acc,
            time_s: s.time_h * 3600.0,
            peak: s.peak,
            dep: s.dep,
            compressions: s.compress,
        }
    }
}

/// The seed of one arm (model init and data stream).
fn arm_seed(opts: &DemoOptions, arm: &Arm) -> u64 {
    opts.seed
        .wrapping_mul(1_000_003)
        .wrapping_add(arm.seed_offset)
}

/// A freshly initialised demo model (N(0, 0.02) weights). `Model::random` seeds libtorch's global
/// generator, so models are created one after the other, before any training thread starts.
fn init_model(vocab: usize, seed: u64) -> Result<Model> {
    Ok(Model::random(
        &demo_model_config(vocab),
        Device::Cpu,
        Kind::Float,
        seed as i64,
    )?)
}

/// Model shape of the demo (see `docs/demo.md`).
fn demo_model_config(vocab: usize) -> ModelConfig {
    let mut cfg = ModelConfig::tiny_llama(vocab, 128, 4, 4, 4, 352);
    cfg.rms_norm_eps = 1e-5;
    cfg.max_position_embeddings = 1024;
    cfg
}

struct Arm {
    name: &'static str,
    mode: Mode,
    method: InferMethod,
    eval_method: EvalMethod,
    steps: usize,
    seed_offset: u64,
}

/// The demo's data settings for `mode` (P = 1024, all flags false, no instruction).
pub(crate) fn build_options(mode: Mode) -> BuildOptions {
    BuildOptions {
        mode,
        hybrid: false,
        max_length: 1024,
        train_on_input: false,
        flags: MaskFlags::default(),
        output_compress_instruction: String::new(),
        bos_token: BOS.into(),
        eos_token: EOS.into(),
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Train one arm and return its checkpoint directory.
#[allow(clippy::too_many_arguments)]
fn train_arm(
    arm: &Arm,
    opts: &DemoOptions,
    cfg: &CompressConfig,
    tok: &LtTokenizer,
    model: Model,
    bar: ProgressBar,
) -> Result<(PathBuf, Vec<StepMetrics>)> {
    let out = opts.out.join(arm.name);
    let builder = Builder::new(cfg, tok, build_options(arm.mode))?;
    let flags = builder.options().effective_flags();
    let pad_id = builder.eos_id() as i64;
    let seed = arm_seed(opts, arm);
    let batch = opts.batch_size;
    let mut source = FnSource(move |epoch: usize, i: usize| {
        let mut problems = ProblemStream::new(
            seed ^ ((epoch as u64) << 40) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            TaskShape::default(),
        );
        let mut rows = Vec::with_capacity(batch);
        for p in problems.by_ref().take(batch) {
            let sample = TrainSample::from_value(p.training_record())
                .map_err(|e| lt_train::TrainError::Data(format!("demo sample: {e}")))?;
            rows.extend(builder.build(&sample)?);
        }
        TrainBatch::from_rows(&rows, &flags, PadTo::Longest, pad_id)
    });
    let mut model = model;
    let tcfg = TrainConfig {
        lr: opts.lr,
        scheduler: SchedulerKind::Cosine,
        warmup_ratio: 0.0,
        warmup_steps: 30.min(arm.steps / 4),
        epochs: 1,
        gradient_accumulation_steps: 1,
        max_grad_norm: 1.0,
        max_steps: Some(arm.steps),
        save_steps: None,
        save_each_epoch: false,
        seed,
        output_dir: Some(out.clone()),
        resume: false,
        overwrite: true,
        save_dtype: None,
        adamw: lt_train::AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        deepspeed_gas_scale: false,
        progress: false,
        halt_after: None,
    };
    bar.set_length(arm.steps as u64);
    let report = lt_train::train_with(&tcfg, &mut model, &mut source, &mut |m: &StepMetrics| {
        bar.set_position(m.step as u64);
        bar.set_message(format!("loss {:.4}", m.loss));
        Control::Continue
    })?;
    bar.finish_with_message(format!(
        "loss {:.4} ({:.0} s)",
        report.final_loss().unwrap_or(f64::NAN),
        report.elapsed_s
    ));
    let ckpt = report
        .checkpoints
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("{}: training wrote no checkpoint", arm.name))?;
    Ok((ckpt, report.metrics))
}

/// Generate on the eval set with one arm's checkpoint and judge it.
fn eval_arm(
    arm: &Arm,
    opts: &DemoOptions,
    ckpt: &Path,
    paths: &Paths,
    bar: ProgressBar,
) -> Result<(Summary, Vec<lt_eval::Record>)> {
    let records_path = opts.out.join(format!("{}.records.jsonl", arm.name));
    let _ = std::fs::remove_file(&records_path);
    let iopts = InferOptions {
        model_path: ckpt.to_path_buf(),
        tokenizer_path: paths.tokenizer.clone(),
        compress_config: paths.config.clone(),
        model_type: "llama".into(),
        bos_token: BOS.into(),
        eos_token: EOS.into(),
        max_new_tokens: 400,
        method: arm.method,
        flags: MaskFlags::default(),
        rolling_rope: false,
        compress_prompt: false,
        update: UpdateMethod::Local,
        split_size: None,
        index: None,
        dataset: Dataset::Gsm8k,
        data: paths.eval.clone(),
        output: records_path.clone(),
        kind: Kind::Float,
        device: Device::Cpu,
        batch_size: opts.infer_batch,
        progress: false,
        trace: false,
        system_prompt: Some(String::new()),
    };
    bar.set_length(opts.n_eval as u64);
    bar.set_message("generating");
    let vocab = Vocab::load(&iopts.tokenizer_path, &iopts.compress_config, BOS, EOS)?;
    let model = Model::load_for_inference(ckpt, Device::Cpu, Kind::Float)?;
    let summary = run_with(&iopts, &vocab, &model)?;
    bar.set_position(summary.written as u64);
    let records = lt_eval::read_records(&records_path)?;
    let refs = lt_eval::build_references(&paths.eval, Dataset::Gsm8k)?;
    let mut judge = Judge::new(Dataset::Gsm8k, refs, JudgeMode::Strict);
    let correct = lt_eval::judge_records(&mut judge, &records, lt_eval::Compat::Intended, None)?;
    let cfg = CompressConfig::from_file(&paths.config)?;
    let settings = CompressSettings::sentence(cfg.output.n_token);
    let mopts = MetricOptions::new(arm.eval_method, settings);
    let s = lt_eval::summarize(&records, &mopts, &correct)?;
    bar.finish_with_message(format!("acc {:.1}% ({:.0} s)", s.acc, summary.seconds));
    Ok((s, records))
}

struct Paths {
    tokenizer: PathBuf,
    config: PathBuf,
    eval: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    lt_eval::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Run the demo; returns the `results.json` value.
pub fn run_demo(opts: &DemoOptions) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let out = &opts.out;
    std::fs::create_dir_all(out.join("data"))
        .with_context(|| format!("creating {}", out.display()))?;
    tracing::info!(out = %out.display(), quick = opts.quick, "demo: writing data, tokenizer and config");

    // 1. data: a training sample file (for inspection / `lightthinker train`), the eval set.
    let shape = TaskShape::default();
    let train_file: Vec<Problem> = ProblemStream::new(opts.seed, shape).take(2000).collect();
    let mut jsonl = String::new();
    for p in &train_file {
        jsonl.push_str(&serde_json::to_string(&p.training_record())?);
        jsonl.push('\n');
    }
    write_atomic(&out.join("data/train.jsonl"), jsonl.as_bytes())?;
    let eval_problems: Vec<Problem> = ProblemStream::new(opts.seed ^ 0xE7A1, shape)
        .take(opts.n_eval)
        .collect();
    let eval_path = out.join("data/gsm8k.json");
    write_atomic(
        &eval_path,
        serde_json::to_string_pretty(&gsm8k_file(&eval_problems))?.as_bytes(),
    )?;

    // 2. tokenizer trained on the corpus, and the compression config.
    let tok_dir = out.join("tokenizer");
    std::fs::create_dir_all(&tok_dir)?;
    let corpus: Vec<String> = train_file
        .iter()
        .flat_map(|p| {
            // thoughts end with "\n" (before `<|splitter|>`) and the template's suffix is "\n".
            let mut t: Vec<String> = p.thoughts().into_iter().map(|t| t + "\n").collect();
            t.push(format!("{BOXED_INSTRUCTION} {}\n", p.question()));
            t
        })
        .collect();
    let tok_path = tok_dir.join("tokenizer.json");
    train_tokenizer(
        corpus.iter().map(String::as_str),
        shape.max_steps,
        &tok_path,
    )?;
    let cfg_path = out.join("compress_config.json");
    write_atomic(&cfg_path, DEMO_CONFIG.as_bytes())?;
    let cfg = CompressConfig::from_file(&cfg_path)?;
    let mut tok = LtTokenizer::from_file(&tok_path)?;
    tok.add_special_tokens(&cfg);
    let vocab_size = tok.len();
    // Every word of the task must be in the vocabulary: an `<|unk|>` would make the task unlearnable.
    let unk = tok.token_id(super::tokenizer::UNK);
    let probe = &train_file[0];
    let mut probe_text = probe.thoughts().join("\n");
    probe_text.push_str(&format!("\n{BOXED_INSTRUCTION} {}\n", probe.question()));
    if let Some(u) = unk {
        if tok.encode(&probe_text).contains(&u) {
            return Err(anyhow!(
                "demo tokenizer maps part of `{probe_text}` to {}",
                super::tokenizer::UNK
            ));
        }
    }
    let paths = Paths {
        tokenizer: tok_path,
        config: cfg_path,
        eval: eval_path,
    };

    // 3. train both arms.
    let arms = [
        Arm {
            name: "vanilla",
            mode: Mode::Normal,
            method: InferMethod::Vanilla,
            eval_method: EvalMethod::Normal,
            steps: opts.vanilla_steps,
            seed_offset: 1,
        },
        Arm {
            name: "lightthinker",
            mode: Mode::AugWoPc,
            method: InferMethod::LightThinker,
            eval_method: EvalMethod::AnchorThought,
            steps: opts.lightthinker_steps,
            seed_offset: 2,
        },
    ];
    let mp = MultiProgress::new();
    let bars: Vec<ProgressBar> = arms
        .iter()
        .map(|a| {
            let b = mp.add(ProgressBar::new(a.steps as u64));
            b.set_style(style(&format!(
                "train {:<12} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta}}] {{msg}}",
                a.name
            )));
            b
        })
        .collect();
    if opts.parallel {
        tch::set_num_threads(1);
    }
    let models = arms
        .iter()
        .map(|a| init_model(vocab_size, arm_seed(opts, a)))
        .collect::<Result<Vec<_>>>()?;
    let trained: Vec<Result<(PathBuf, Vec<StepMetrics>)>> = if opts.parallel {
        std::thread::scope(|s| {
            let hs: Vec<_> = arms
                .iter()
                .zip(&bars)
                .zip(models)
                .map(|((a, b), m)| {
                    let (cfg, tok, b) = (&cfg, &tok, b.clone());
                    s.spawn(move || train_arm(a, opts, cfg, tok, m, b))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("training thread panicked")))
                })
                .collect()
        })
    } else {
        arms.iter()
            .zip(&bars)
            .zip(models)
            .map(|((a, b), m)| train_arm(a, opts, &cfg, &tok, m, b.clone()))
            .collect()
    };
    let trained: Vec<(PathBuf, Vec<StepMetrics>)> = trained.into_iter().collect::<Result<_>>()?;

    // 4. generate + judge.
    let ebars: Vec<ProgressBar> = arms
        .iter()
        .map(|a| {
            let b = mp.add(ProgressBar::new(opts.n_eval as u64));
            b.set_style(style(&format!(
                "infer {:<12} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}] {{msg}}",
                a.name
            )));
            b
        })
        .collect();
    let evals: Vec<Result<(Summary, Vec<lt_eval::Record>)>> = if opts.parallel {
        std::thread::scope(|s| {
            let hs: Vec<_> = arms
                .iter()
                .zip(&trained)
                .zip(&ebars)
                .map(|((a, (ckpt, _)), b)| {
                    let (paths, b) = (&paths, b.clone());
                    s.spawn(move || eval_arm(a, opts, ckpt, paths, b))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("inference thread panicked")))
                })
                .collect()
        })
    } else {
        arms.iter()
            .zip(&trained)
            .zip(&ebars)
            .map(|((a, (ckpt, _)), b)| eval_arm(a, opts, ckpt, &paths, b.clone()))
            .collect()
    };
    let evals: Vec<(Summary, Vec<lt_eval::Record>)> = evals.into_iter().collect::<Result<_>>()?;

    // 5. report.
    let mut methods = serde_json::Map::new();
    for (a, (s, _)) in arms.iter().zip(&evals) {
        methods.insert(
            a.name.into(),
            serde_json::to_value(MethodResult::from_summary(s))?,
        );
    }
    let results = json!({ "methods": methods });
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    let table: Vec<(String, Summary)> = arms
        .iter()
        .zip(&evals)
        .map(|(a, (s, _))| (a.name.to_string(), s.clone()))
        .collect();
    let md = super::report::markdown(&table, &trained, opts, t0.elapsed().as_secs_f64());
    write_atomic(&out.join("results.md"), md.as_bytes())?;
    super::report::plots(
        out,
        &arms.iter().map(|a| a.name).collect::<Vec<_>>(),
        &evals,
        &trained,
        &cfg,
        &tok,
    )?;
    println!("{md}");
    println!("wrote {}", out.display());
    Ok(results)
}
