//! `lightthinker mask`: build masks from reference-style records and draw them.
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use lt_mask::{
    global_mask, local_mask, recover_mask, BlockKind, IntervalMask, Layout, LocalIndicator,
    MaskError, MaskFlags, RecoverKey, RecoverSpec, ThoughtBlock,
};
use serde::{Deserialize, Serialize};

use super::parse_bool;

/// Subcommands of `lightthinker mask`.
#[derive(Debug, Subcommand)]
pub enum MaskCommand {
    /// Build masks from JSONL (plain or .gz) records shaped like the mask-builder goldens
    /// (`case_id`, `builder`, `args`) and write one result line per case.
    Build(BuildArgs),
    /// Draw a mask as SVG (with token labels) and PNG, and print it as ASCII.
    Render(RenderArgs),
}

/// Arguments of `mask build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Input JSONL (plain or gzip): header lines are skipped.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL: `{"case_id", "shape", "mask", "offset", "error"}` per case.
    #[arg(long)]
    pub output: PathBuf,
}

/// Arguments of `mask render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output prefix: writes PREFIX.svg and PREFIX.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Take the mask from a `mask build` input record (needs --case).
    #[arg(long, requires = "case")]
    pub input: Option<PathBuf>,
    /// `case_id` of the record in --input.
    #[arg(long)]
    pub case: Option<String>,
    /// Sequence length T (when not using --input).
    #[arg(long)]
    pub len: Option<usize>,
    /// A block `start,end,l_inst,n_comp,n_continue[,prompt|output]` (repeatable, in order).
    #[arg(long = "block")]
    pub blocks: Vec<String>,
    /// Pad to this many rows/columns (the reference's max_length).
    #[arg(long)]
    pub pad_to: Option<usize>,
    /// Recover mode: number of appended tokens (recovers every output block).
    #[arg(long)]
    pub recover_added: Option<usize>,
    /// Cache rows see only the current thought.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub see_current: bool,
    /// Cache tokens of a block see each other.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub bi_directional: bool,
    /// Cache tokens see only themselves inside their block.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub diagonal: bool,
    /// Hide the previous block's <|continue|>.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_continue: bool,
    /// Compress the prompt during prefill.
    #[arg(long, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub prefill_compress: bool,
    /// Draw one LightThinker inference step instead: `cache_len,local_start,n_comp`.
    #[arg(long, conflicts_with_all = ["input", "len"])]
    pub local: Option<String>,
    /// Token labels, whitespace separated (label i names token i).
    #[arg(long)]
    pub labels: Option<String>,
    /// Cell size in pixels.
    #[arg(long, default_value_t = 16)]
    pub cell: usize,
    /// Also print the mask as ASCII on stdout.
    #[arg(long, default_value_t = false)]
    pub ascii: bool,
}

/// Run a `lightthinker mask` subcommand.
pub fn run(cmd: MaskCommand) -> anyhow::Result<()> {
    match cmd {
        MaskCommand::Build(a) => build(&a),
        MaskCommand::Render(a) => render(&a),
    }
}

/// `args` of a mask-builder record (the reference's argument names).
#[derive(Debug, Deserialize)]
struct CaseArgs {
    input_len: usize,
    locate_index: Vec<[usize; 5]>,
    locate_indicator: Vec<BlockKind>,
    #[serde(default)]
    bi_directional: bool,
    #[serde(default)]
    see_current: bool,
    #[serde(default)]
    diagonal: bool,
    #[serde(default)]
    exclude_continue: bool,
    #[serde(default)]
    prefill_compress: bool,
    #[serde(default)]
    max_length: Option<usize>,
    #[serde(default)]
    added_len: Option<usize>,
    #[serde(default)]
    added_corresp_attention: Option<Vec<[usize; 4]>>,
}

#[derive(Debug, Deserialize)]
struct Case {
    case_id: String,
    builder: String,
    args: CaseArgs,
}

#[derive(Debug, Serialize)]
struct Outcome<'a> {
    case_id: &'a str,
    shape: Option<[usize; 2]>,
    mask: Option<lt_mask::GoldenIntervals<'a>>,
    offset: Option<usize>,
    error: Option<String>,
}

impl CaseArgs {
    fn layout(&self) -> anyhow::Result<Layout> {
        if self.locate_index.len() != self.locate_indicator.len() {
            bail!(
                "locate_index has {} entries but locate_indicator {}",
                self.locate_index.len(),
                self.locate_indicator.len()
            );
        }
        let blocks = self
            .locate_index
            .iter()
            .zip(&self.locate_indicator)
            .map(|(t, &kind)| ThoughtBlock {
                start: t[0],
                end: t[1],
                l_inst: t[2],
                n_comp: t[3],
                n_continue: t[4],
                kind,
            })
            .collect();
        Ok(Layout {
            len: self.input_len,
            blocks,
        })
    }
    fn flags(&self) -> MaskFlags {
        MaskFlags {
            see_current: self.see_current,
            bi_directional: self.bi_directional,
            diagonal: self.diagonal,
            exclude_continue: self.exclude_continue,
            prefill_compress: self.prefill_compress,
        }
    }
}

/// Build one case: the mask and (recover) its offset, or the typed error.
fn build_case(case: &Case) -> anyhow::Result<Result<(IntervalMask, Option<usize>), MaskError>> {
    let layout = case.args.layout()?;
    let flags = case.args.flags();
    Ok(match case.builder.as_str() {
        "create_attention_for_aug_data" => {
            global_mask(&layout, &flags, case.args.max_length).map(|m| (m, None))
        }
        "create_attention_for_recover_data" => {
            let keys = case
                .args
                .added_corresp_attention
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|k| RecoverKey {
                    end: k[0],
                    l_inst: k[1],
                    n_comp: k[2],
                    n_continue: k[3],
                })
                .collect();
            let spec = RecoverSpec {
                added_len: case
                    .args
                    .added_len
                    .context("recover case without args.added_len")?,
                keys,
            };
            recover_mask(&layout, &spec, &flags, case.args.max_length).map(|(m, o)| (m, Some(o)))
        }
        other => bail!("unknown builder `{other}`"),
    })
}

fn open_maybe_gz(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::new(f))
    })
}

/// Read the cases of a build input (skipping headers and blank lines), with line numbers.
fn read_cases(path: &Path) -> anyhow::Result<Vec<(usize, Case)>> {
    let mut cases = Vec::new();
    for (i, line) in open_maybe_gz(path)?.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}: invalid JSON", path.display(), i + 1))?;
        if v.get("header").and_then(|h| h.as_bool()) == Some(true) {
            continue;
        }
        let case: Case = serde_json::from_value(v)
            .with_context(|| format!("{}: line {}: not a mask case", path.display(), i + 1))?;
        cases.push((i + 1, case));
    }
    Ok(cases)
}

fn build(a: &BuildArgs) -> anyhow::Result<()> {
    let cases = read_cases(&a.input)?;
    let mut out = Vec::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    for (line, case) in &cases {
        let res = build_case(case)
            .with_context(|| format!("{}: line {line} ({})", a.input.display(), case.case_id))?;
        let rec = match &res {
            Ok((m, offset)) => {
                ok += 1;
                Outcome {
                    case_id: &case.case_id,
                    shape: Some([m.rows(), m.cols()]),
                    mask: Some(m.golden_intervals()),
                    offset: *offset,
                    error: None,
                }
            }
            Err(e) => {
                failed += 1;
                tracing::debug!("{}: {e}", case.case_id);
                Outcome {
                    case_id: &case.case_id,
                    shape: None,
                    mask: None,
                    offset: None,
                    error: Some(e.to_string()),
                }
            }
        };
        serde_json::to_writer(&mut out, &rec)?;
        out.write_all(b"\n")?;
    }
    lt_data::io::write_atomic(&a.output, &out)?;
    tracing::info!(
        "{} cases: {ok} built, {failed} errors -> {}",
        cases.len(),
        a.output.display()
    );
    Ok(())
}

fn parse_block(s: &str) -> anyhow::Result<ThoughtBlock> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 5 && parts.len() != 6 {
        bail!("--block `{s}`: expected start,end,l_inst,n_comp,n_continue[,prompt|output]");
    }
    let n = |i: usize| -> anyhow::Result<usize> {
        parts[i]
            .parse()
            .with_context(|| format!("--block `{s}`: field {} is not a number", i + 1))
    };
    let kind = match parts.get(5).copied().unwrap_or("output") {
        "output" | "o" => BlockKind::Output,
        "prompt" | "p" => BlockKind::Prompt,
        k => bail!("--block `{s}`: kind `{k}` is not prompt or output"),
    };
    Ok(ThoughtBlock {
        start: n(0)?,
        end: n(1)?,
        l_inst: n(2)?,
        n_comp: n(3)?,
        n_continue: n(4)?,
        kind,
    })
}

fn render(a: &RenderArgs) -> anyhow::Result<()> {
    let flags = MaskFlags {
        see_current: a.see_current,
        bi_directional: a.bi_directional,
        diagonal: a.diagonal,
        exclude_continue: a.exclude_continue,
        prefill_compress: a.prefill_compress,
    };
    let (mask, title) = if let Some(local) = &a.local {
        let v: Vec<usize> = local
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--local `{local}`: expected cache_len,local_start,n_comp"))?;
        let [l, ls, c] = v[..] else {
            bail!("--local `{local}`: expected cache_len,local_start,n_comp");
        };
        let ind = LocalIndicator::lightthinker(ls, l, c);
        (
            local_mask(l, c + 2, Some(&ind), &flags)?,
            format!("local step L={l} local_start={ls} C={c} {flags:?}"),
        )
    } else if let Some(input) = &a.input {
        let want = a.case.as_deref().unwrap_or_default();
        let (_, case) = read_cases(input)?
            .into_iter()
            .find(|(_, c)| c.case_id == want)
            .with_context(|| format!("{}: no case `{want}`", input.display()))?;
        let (m, _) = build_case(&case)??;
        (m, format!("{} ({})", case.case_id, case.builder))
    } else {
        let len = a
            .len
            .context("give --len and --block, --input and --case, or --local")?;
        let blocks = a
            .blocks
            .iter()
            .map(|b| parse_block(b))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let layout = Layout { len, blocks };
        match a.recover_added {
            Some(added) => {
                let keys = layout
                    .blocks
                    .iter()
                    .filter(|b| b.kind == BlockKind::Output)
                    .map(RecoverKey::of)
                    .collect();
                let spec = RecoverSpec {
                    added_len: added,
                    keys,
                };
                let (m, off) = recover_mask(&layout, &spec, &flags, a.pad_to)?;
                (m, format!("recover mask, offset {off}, {flags:?}"))
            }
            None => (
                global_mask(&layout, &flags, a.pad_to)?,
                format!("global mask {flags:?}"),
            ),
        }
    };
    let labels: Option<Vec<String>> = a
        .labels
        .as_ref()
        .map(|l| l.split_whitespace().map(str::to_string).collect());
    let svg = lt_mask::render::to_svg(&mask, labels.as_deref(), a.cell, &title);
    let svg_path = a.out.with_extension("svg");
    let png_path = a.out.with_extension("png");
    lt_data::io::write_atomic(&svg_path, svg.as_bytes())?;
    let (w, h, px) = lt_mask::render::to_rgba(&mask, a.cell.min(64));
    lt_data::io::write_atomic(&png_path, &encode_png(w, h, &px)?)?;
    if a.ascii {
        print!("{}", mask.to_ascii());
    }
    tracing::info!(
        "{}x{} mask -> {} and {}",
        mask.rows(),
        mask.cols(),
        svg_path.display(),
        png_path.display()
    );
    Ok(())
}

/// Encode RGBA pixels as a PNG (lt-eval's encoder).
pub fn encode_png(w: usize, h: usize, rgba: &[u8]) -> anyhow::Result<Vec<u8>> {
    if w == 0 || h == 0 || w > u32::MAX as usize || h > u32::MAX as usize || rgba.len() != w * h * 4
    {
        bail!("cannot encode a {w}x{h} PNG from {} bytes", rgba.len());
    }
    Ok(lt_eval::plot::encode_png(w, h, 4, rgba))
}
