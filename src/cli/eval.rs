//! `lightthinker eval`: judge inference records and report Acc, Time, Peak, Dep (a thin layer over
//! `lt-eval`). The argument names are the reference `evaluation/eval_file.py`'s (with `-` instead of
//! `_`; the underscore spellings are accepted too), plus `--data` and `--judge`.
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::DatasetArg;
use lt_eval::{
    build_references, judge_records, kv_curve, plot, read_shards, report_block, sample_metrics,
    table1_markdown, write_atomic, Anchor, Compat, CompressSettings, Dataset, Judge, JudgeMode,
    Method, MetricOptions, RefItem, Summary, TokenCounter,
};

/// `--method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Vanilla full-KV decoding.
    Normal,
    /// Fixed-budget KV eviction (H2O, SepLLM); Peak = --cache-size.
    Kvcache,
    /// Compression at a generated boundary (LightThinker thought level, AnLLM).
    AnchorThought,
    /// Compression every `step` tokens (LightThinker token level).
    AnchorToken,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Normal => Method::Normal,
            MethodArg::Kvcache => Method::KvCache,
            MethodArg::AnchorThought => Method::AnchorThought,
            MethodArg::AnchorToken => Method::AnchorToken,
        }
    }
}

/// `--model-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelTypeArg {
    /// Qwen2.5 (C = 9 by default).
    Qwen,
    /// Llama 3.1 (C = 7 by default).
    Llama,
}

/// `--judge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JudgeArg {
    /// Exact alias / error lists, then the numeric check (the reference's rules).
    Strict,
    /// Strict, then normalisation of undecided answers.
    Normalized,
}

/// `--compat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompatArg {
    /// Recorded ids and traces, the intended boundary token and constants.
    Intended,
    /// Reproduce the released eval_file.py (re-tokenized text, its "splitter", its closed forms).
    Reference,
}

/// `--anchor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnchorArg {
    /// AnLLM when C = 1 and the outputs contain `<|o_0|>` but no `<|splitter|>`.
    Auto,
    /// Boundary `<|splitter|>`, C + 1 tokens kept per compression.
    Lightthinker,
    /// Boundary and kept token `<|o_0|>` (offset 0).
    Anllm,
}

/// Arguments of `lightthinker eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Method class of the records.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Base tokenizer (`tokenizer.json` or its directory); needed when records lack `output_ids` /
    /// `input_len` (the reference's re-tokenizing formula mode).
    #[arg(long, alias = "tokenizer_path")]
    pub tokenizer_path: Option<PathBuf>,
    /// Compression config (`configs/LightThinker/<model>/v1.json`): C, level, step, token names.
    #[arg(long, alias = "comp_config")]
    pub comp_config: Option<PathBuf>,
    /// Model family (chat specials; default C when no config is given).
    #[arg(long, alias = "model_type", value_enum, default_value = "qwen")]
    pub model_type: ModelTypeArg,
    /// Dataset of the records.
    #[arg(long, value_enum)]
    pub dataset: DatasetArg,
    /// Eval data file (`data/eval/<dataset>.json`) for the alias/error lists. Without it, the
    /// records' `gt_answer` is used.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Record files (shards), merged; missing and duplicated idx are reported.
    #[arg(long, num_args = 1.., required = true)]
    pub files: Vec<PathBuf>,
    /// KV budget of `kvcache` runs (their Peak, and M in Dep).
    #[arg(long, alias = "cache_size", default_value_t = 1024)]
    pub cache_size: usize,
    /// BOS string (accepted for compatibility; counts use the tokenizer's own handling).
    #[arg(long, alias = "bos_token")]
    pub bos_token: Option<String>,
    /// EOS string (accepted for compatibility).
    #[arg(long, alias = "eos_token")]
    pub eos_token: Option<String>,
    /// Ask a human (y/n/e) about answers the automatic judge cannot decide; decisions are saved.
    #[arg(long)]
    pub interaction: bool,
    /// Automatic judge.
    #[arg(long, value_enum, default_value = "strict")]
    pub judge: JudgeArg,
    /// Write the summary as JSON (`n, correct, acc, time_h, mean_time_s, peak, dep, output_len,
    /// compress`, per-sample means, plus details).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Saved human decisions (read, and written with --interaction). Default:
    /// `<dir of the first file>/judgments-<dataset>.json`.
    #[arg(long)]
    pub judgments: Option<PathBuf>,
    /// Intended metrics, or reproduce the released reference evaluation.
    #[arg(long, value_enum, default_value = "intended")]
    pub compat: CompatArg,
    /// LightThinker or AnLLM accounting for anchor methods.
    #[arg(long, value_enum, default_value = "auto")]
    pub anchor: AnchorArg,
    /// Name of this run in tables and plots (default: the method).
    #[arg(long)]
    pub label: Option<String>,
    /// Other runs' summaries (`LABEL=summary.json`, written by --json) to compare side by side.
    #[arg(long, value_name = "LABEL=FILE")]
    pub compare: Vec<String>,
    /// Write the Table 1 style markdown comparison (this run + --compare) here.
    #[arg(long)]
    pub table: Option<PathBuf>,
    /// Write plots (SVG with labels, PNG without text) into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// The sample whose KV length over generation is stored in the JSON and plotted
    /// (default: the first record when --plot-dir is given).
    #[arg(long)]
    pub plot_sample: Option<i64>,
    /// Write per-sample metrics and verdicts as JSONL here.
    #[arg(long)]
    pub per_sample: Option<PathBuf>,
}

fn refs_from_records(
    records: &[lt_eval::Record],
    dataset: Dataset,
) -> anyhow::Result<Vec<RefItem>> {
    let n = records.iter().map(|r| r.idx + 1).max().unwrap_or(0).max(0) as usize;
    let mut refs: Vec<RefItem> = (0..n)
        .map(|i| RefItem::plain(i, String::new(), String::new()))
        .collect();
    for r in records {
        let gt = r
            .gt_answer
            .clone()
            .with_context(|| format!("record idx {}: no `gt_answer` and no --data file", r.idx))?;
        let mut item = RefItem::plain(r.idx as usize, String::new(), gt);
        item.extend_for(dataset);
        refs[r.idx as usize] = item;
    }
    Ok(refs)
}

fn load_compare(spec: &str) -> anyhow::Result<(String, Summary)> {
    let (label, file) = spec
        .split_once('=')
        .with_context(|| format!("--compare `{spec}`: expected LABEL=FILE"))?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let s: Summary =
        serde_json::from_str(&text).with_context(|| format!("{file}: not a summary JSON"))?;
    Ok((label.to_string(), s))
}

/// Run `lightthinker eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let method: Method = args.method.into();
    let dataset: Dataset = args.dataset.into();
    let compat = match args.compat {
        CompatArg::Intended => Compat::Intended,
        CompatArg::Reference => Compat::Reference,
    };
    let mut settings = match &args.comp_config {
        Some(p) => CompressSettings::from_file(p)?,
        None => CompressSettings::sentence(match args.model_type {
            ModelTypeArg::Qwen => 9,
            ModelTypeArg::Llama => 7,
        }),
    };
    if settings.model.is_none() {
        settings.model = Some(
            match args.model_type {
                ModelTypeArg::Qwen => "qwen",
                ModelTypeArg::Llama => "llama",
            }
            .into(),
        );
    }
    let tokenizer = match &args.tokenizer_path {
        Some(p) => Some(TokenCounter::from_file(p, &settings)?),
        None => None,
    };
    tracing::debug!(bos = ?args.bos_token, eos = ?args.eos_token, "special strings (informational)");

    let refs_file = match &args.data {
        Some(p) => Some(build_references(p, dataset)?),
        None => None,
    };
    let merged = read_shards(&args.files, refs_file.as_ref().map(Vec::len))?;
    let records = &merged.records;
    if records.is_empty() {
        bail!("no records in {:?}", args.files);
    }
    let refs = match refs_file {
        Some(r) => r,
        None => refs_from_records(records, dataset)?,
    };
    let mode = match args.judge {
        JudgeArg::Strict => JudgeMode::Strict,
        JudgeArg::Normalized => JudgeMode::Normalized,
    };
    let store = args.judgments.clone().unwrap_or_else(|| {
        let dir = args.files[0].parent().unwrap_or(Path::new("."));
        dir.join(format!("judgments-{}.json", dataset.name()))
    });
    let mut judge = Judge::new(dataset, refs, mode);
    if args.interaction || store.exists() {
        judge = judge.with_store(&store)?;
    }
    let correct = if args.interaction {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut out = std::io::stdout();
        judge_records(&mut judge, records, compat, Some((&mut input, &mut out)))?
    } else {
        judge_records(&mut judge, records, compat, None)?
    };

    let anchor = match args.anchor {
        AnchorArg::Auto => Anchor::detect(&settings, records),
        AnchorArg::Lightthinker => Anchor::LightThinker,
        AnchorArg::Anllm => Anchor::Anllm,
    };
    let opts = MetricOptions {
        method,
        settings,
        cache_size: args.cache_size,
        anchor,
        compat,
        tokenizer: tokenizer.as_ref(),
        boundary_id: None,
    };
    let samples = records
        .iter()
        .map(|r| sample_metrics(r, &opts))
        .collect::<lt_eval::Result<Vec<_>>>()?;
    let mut summary = Summary::from_samples(method, &samples, &correct)?;
    summary.dataset = Some(dataset);
    summary.missing = merged.missing.clone();
    summary.duplicates = merged.duplicates.clone();
    let plot_idx = args
        .plot_sample
        .or(args.plot_dir.as_ref().map(|_| records[0].idx));
    if let Some(idx) = plot_idx {
        let rec = records
            .iter()
            .find(|r| r.idx == idx)
            .with_context(|| format!("--plot-sample {idx}: no such record"))?;
        summary.kv_curve = Some((idx, kv_curve(rec, &opts)?));
    }

    print!("{}", report_block(&summary));
    if !summary.missing.is_empty() || !summary.duplicates.is_empty() {
        println!(
            "shards: {} missing idx {:?}, duplicated idx {:?}",
            summary.missing.len(),
            summary.missing,
            summary.duplicates
        );
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&summary)?;
        write_atomic(p, text.as_bytes())?;
    }
    if let Some(p) = &args.per_sample {
        let mut buf = Vec::new();
        for (s, c) in samples.iter().zip(&correct) {
            let mut v = serde_json::to_value(s)?;
            v["correct"] = serde_json::Value::Bool(*c);
            writeln!(buf, "{v}")?;
        }
        write_atomic(p, &buf)?;
    }

    let label = args
        .label
        .clone()
        .unwrap_or_else(|| method.name().to_string());
    let mut entries = args
        .compare
        .iter()
        .map(|s| load_compare(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    entries.push((label, summary));
    if !args.compare.is_empty() || args.table.is_some() {
        let table = table1_markdown(&entries);
        if let Some(p) = &args.table {
            write_atomic(p, table.as_bytes())?;
        }
        if !args.compare.is_empty() {
            println!("\n{table}");
        }
    }
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let curves: Vec<(String, Vec<usize>)> = entries
            .iter()
            .filter_map(|(n, s)| {
                s.kv_curve
                    .as_ref()
                    .map(|(i, c)| (format!("{n} (idx {i})"), c.clone()))
            })
            .collect();
        let title = format!("KV length over generation ({dataset})");
        write_atomic(
            &dir.join("kv_curve.svg"),
            plot::kv_curves_svg(&title, &curves).as_bytes(),
        )?;
        write_atomic(&dir.join("kv_curve.png"), &plot::kv_curves_png(&curves))?;
        let peak: Vec<(String, f64)> = entries.iter().map(|(n, s)| (n.clone(), s.peak)).collect();
        let dep: Vec<(String, f64)> = entries.iter().map(|(n, s)| (n.clone(), s.dep)).collect();
        write_atomic(
            &dir.join("peak.svg"),
            plot::bars_svg("Peak (mean tokens)", "tokens", &peak).as_bytes(),
        )?;
        write_atomic(&dir.join("peak.png"), &plot::bars_png(&peak))?;
        write_atomic(
            &dir.join("dep.svg"),
            plot::bars_svg("Dep (mean per sample)", "Dep", &dep).as_bytes(),
        )?;
        write_atomic(&dir.join("dep.png"), &plot::bars_png(&dep))?;
    }
    Ok(())
}
