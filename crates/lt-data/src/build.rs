//! The four training-mode sequences (normal, aug, aug-wo-pc, recover) plus prompt-recover and hybrid,
//! bit-exact with the reference's `MyDataset` + `MyDataCollator`.
use std::collections::HashSet;
use std::str::FromStr;

use lt_mask::{BlockKind, Layout, MaskFlags, RecoverKey, RecoverSpec, ThoughtBlock};
use serde::{Deserialize, Serialize};

use crate::config::{CompressConfig, Level, CONTINUE, RECOVER, SPLITTER};
use crate::error::{DataError, Result};
use crate::sample::TrainSample;
use crate::tokenizer::LtTokenizer;

/// The label value of ignored positions.
pub const IGNORE: i64 = -100;

/// Training mode (the reference's `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Vanilla SFT: `gt_output`, plain causal attention.
    Normal,
    /// Prompt and thoughts compressed.
    Aug,
    /// Thoughts compressed, prompt kept (the paper's method).
    AugWoPc,
    /// `aug` plus a reconstruction of the leading thoughts.
    Recover,
}

impl FromStr for Mode {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "normal" => Ok(Mode::Normal),
            "aug" => Ok(Mode::Aug),
            "aug-wo-pc" | "aug_wo_pc" => Ok(Mode::AugWoPc),
            "recover" => Ok(Mode::Recover),
            _ => Err(DataError::Invalid(format!(
                "mode must be normal, aug, aug-wo-pc or recover, got `{s}`"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Normal => "normal",
            Mode::Aug => "aug",
            Mode::AugWoPc => "aug-wo-pc",
            Mode::Recover => "recover",
        })
    }
}

/// Which dataset variant a row was built from (the goldens' `aux.source_variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceVariant {
    /// Normal mode.
    Normal,
    /// Prompt-compressed sequence (`aug`, `recover` row 0).
    Aug,
    /// Prompt kept.
    AugWoPc,
    /// Prompt + prompt reconstruction (hybrid row 1).
    RecoverPrompt,
}

/// Everything that selects how samples are built (the reference's training arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Training mode.
    pub mode: Mode,
    /// Add the prompt-recover row (only for `aug` and `recover`).
    pub hybrid: bool,
    /// Truncation length P.
    pub max_length: usize,
    /// Label the prompt too.
    pub train_on_input: bool,
    /// Mask flags (needed for the recover position offset and the recover/diagonal check).
    pub flags: MaskFlags,
    /// Text inserted before the cache tokens of every output compression ("" = none).
    pub output_compress_instruction: String,
    /// BOS string prepended to the prompt (`<|im_start|>` / `<|begin_of_text|>`).
    pub bos_token: String,
    /// EOS string appended to the output (`<|im_end|>` / `<|eot_id|>`); its id also pads inputs.
    pub eos_token: String,
}

impl BuildOptions {
    /// The mask flags the reference collator really applies: `aug-wo-pc` forces `prefill_compress=false`.
    pub fn effective_flags(&self) -> MaskFlags {
        let mut f = self.flags;
        if self.mode == Mode::AugWoPc {
            f.prefill_compress = false;
        }
        f
    }

    /// The reference `train.sh` settings for a model family (`aug-wo-pc`, P = 4096, all flags false).
    pub fn reference(model_type: &str) -> Self {
        let (bos, eos) = if model_type == "llama" {
            ("<|begin_of_text|>", "<|eot_id|>")
        } else {
            ("<|im_start|>", "<|im_end|>")
        };
        BuildOptions {
            mode: Mode::AugWoPc,
            hybrid: false,
            max_length: 4096,
            train_on_input: false,
            flags: MaskFlags::default(),
            output_compress_instruction: String::new(),
            bos_token: bos.into(),
            eos_token: eos.into(),
        }
    }
}

/// One built (unpadded) row: ids, labels, positions and the structure `lt-mask` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltRow {
    /// Token ids (length T ≤ P).
    pub input_ids: Vec<i64>,
    /// Labels, [`IGNORE`] where unsupervised.
    pub labels: Vec<i64>,
    /// Position ids (`None` in normal mode: the model uses 0..T-1).
    pub position_ids: Option<Vec<i64>>,
    /// Compressed blocks; `None` in normal mode (plain causal). For recover rows `layout.len` is the aug length.
    pub layout: Option<Layout>,
    /// The appended reconstruction of a recover row with at least one item.
    pub recover: Option<RecoverSpec>,
    /// The sample was cut at `max_length`.
    pub truncated: bool,
    /// `None` for a single-row sample; `Some(0)` main row / `Some(1)` prompt-recover row in hybrid mode.
    pub hybrid_row: Option<usize>,
    /// The dataset variant the row comes from.
    pub source: SourceVariant,
}

impl BuiltRow {
    /// Unpadded length T.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
    /// Number of supervised labels.
    pub fn n_labelled(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE).count()
    }
    /// The row's attention mask, padded to `pad_to` (`None`: T×T). Normal rows get the plain causal mask.
    pub fn mask(&self, flags: &MaskFlags, pad_to: Option<usize>) -> Result<lt_mask::IntervalMask> {
        let m = |e: lt_mask::MaskError| DataError::Mask(e.to_string());
        match (&self.layout, &self.recover) {
            (Some(layout), Some(rec)) => lt_mask::recover_mask(layout, rec, flags, pad_to)
                .map(|(mask, _)| mask)
                .map_err(m),
            (Some(layout), None) => lt_mask::global_mask(layout, flags, pad_to).map_err(m),
            (None, _) => lt_mask::global_mask(
                &Layout {
                    len: self.len(),
                    blocks: Vec::new(),
                },
                flags,
                pad_to,
            )
            .map_err(m),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegKind {
    Save,
    Abandoned,
    Compressed(BlockKind),
}

#[derive(Debug, Clone)]
struct Seg {
    ids: Vec<u32>,
    kind: SegKind,
}

impl Seg {
    fn save(ids: Vec<u32>) -> Self {
        Seg {
            ids,
            kind: SegKind::Save,
        }
    }
    fn abandoned(ids: Vec<u32>) -> Self {
        Seg {
            ids,
            kind: SegKind::Abandoned,
        }
    }
    fn compressed(ids: Vec<u32>, kind: BlockKind) -> Self {
        Seg {
            ids,
            kind: SegKind::Compressed(kind),
        }
    }
}

/// Result of the reference's aug tokenization algorithm.
#[derive(Debug, Clone)]
struct Assembled {
    ids: Vec<u32>,
    labels: Vec<i64>,
    blocks: Vec<ThoughtBlock>,
    truncated: bool,
}

/// Builds rows for one configuration. Cheap to share across threads (`&Builder` is `Sync`).
///
/// ```no_run
/// # fn main() -> Result<(), lt_data::DataError> {
/// use lt_data::{BuildOptions, Builder, CompressConfig, LtTokenizer};
/// let cfg = CompressConfig::from_file("configs/LightThinker/qwen/v1.json")?;
/// let mut tok = LtTokenizer::from_file(".cache/qwen2.5-tokenizer/tokenizer.json")?;
/// tok.add_special_tokens(&cfg);
/// let builder = Builder::new(&cfg, &tok, BuildOptions::reference("qwen"))?;
/// let samples = lt_data::read_train_jsonl_strict("train.jsonl")?;
/// let rows = builder.build(&samples[0])?;
/// assert_eq!(rows.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Builder<'a> {
    cfg: &'a CompressConfig,
    tok: &'a LtTokenizer,
    opts: BuildOptions,
    bos_id: u32,
    eos_id: u32,
    continue_id: u32,
    recover_id: u32,
    prompt_cache_ids: Vec<u32>,
    /// Encoded `instruction + cache tokens + <|continue|>` of output compressions.
    output_comp_ids: Vec<u32>,
    drop_set: HashSet<u32>,
}

impl<'a> Builder<'a> {
    /// Prepare a builder. The tokenizer must already hold the config's special tokens
    /// ([`LtTokenizer::add_special_tokens`]).
    pub fn new(cfg: &'a CompressConfig, tok: &'a LtTokenizer, opts: BuildOptions) -> Result<Self> {
        cfg.validate()?;
        if opts.max_length == 0 {
            return Err(DataError::Invalid("max_length must be >= 1".into()));
        }
        let id = |s: &str| {
            tok.token_id(s).ok_or_else(|| {
                DataError::Tokenizer(format!(
                    "token {s:?} is not in the vocabulary (did you call add_special_tokens?)"
                ))
            })
        };
        let bos_id = id(&opts.bos_token)?;
        let eos_id = id(&opts.eos_token)?;
        let continue_id = id(CONTINUE)?;
        let recover_id = id(RECOVER)?;
        id(SPLITTER)?;
        let prompt_cache_ids = cfg
            .prompt_cache_tokens()
            .iter()
            .map(|s| id(s))
            .collect::<Result<Vec<_>>>()?;
        let output_cache_ids = cfg
            .output_cache_tokens()
            .iter()
            .map(|s| id(s))
            .collect::<Result<Vec<_>>>()?;
        let mut drop_set: HashSet<u32> = [continue_id, recover_id].into_iter().collect();
        drop_set.extend(prompt_cache_ids.iter().copied());
        drop_set.extend(output_cache_ids.iter().copied());
        let comp_text = format!(
            "{}{}{}",
            opts.output_compress_instruction,
            cfg.output_cache_tokens().concat(),
            CONTINUE
        );
        let output_comp_ids = tok.try_encode(&comp_text)?;
        Ok(Builder {
            cfg,
            tok,
            opts,
            bos_id,
            eos_id,
            continue_id,
            recover_id,
            prompt_cache_ids,
            output_comp_ids,
            drop_set,
        })
    }

    /// The options this builder uses.
    pub fn options(&self) -> &BuildOptions {
        &self.opts
    }

    /// The EOS id (also the input padding id).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The BOS id.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    fn enc(&self, s: &str) -> Result<Vec<u32>> {
        self.tok.try_encode(s)
    }

    /// Build the row(s) of one sample: one row, or two in hybrid `aug`/`recover`.
    pub fn build(&self, s: &TrainSample) -> Result<Vec<BuiltRow>> {
        let p = self.opts.max_length;
        match self.opts.mode {
            Mode::Normal => Ok(vec![self.build_normal(s)?]),
            Mode::AugWoPc => {
                let prompt = format!(
                    "{}{}",
                    self.opts.bos_token,
                    self.cfg.fill_template(&s.system_prompt, &s.question)
                );
                let turns = vec![
                    vec![Seg::save(self.enc(&prompt)?)],
                    self.output_segments(s)?,
                ];
                let a = self.assemble(&turns, p)?;
                Ok(vec![row_from(a, SourceVariant::AugWoPc, None)])
            }
            Mode::Aug | Mode::Recover => {
                let prompt_turn = self.prompt_segments(s)?;
                let turns = vec![prompt_turn.clone(), self.output_segments(s)?];
                let aug = self.assemble(&turns, p)?;
                let hybrid = self.opts.hybrid.then_some(0);
                let main = if self.opts.mode == Mode::Recover {
                    self.recover_row(aug, hybrid)?
                } else {
                    row_from(aug, SourceVariant::Aug, hybrid)
                };
                let mut rows = vec![main];
                if self.opts.hybrid {
                    rows.push(self.prompt_recover_row(prompt_turn)?);
                }
                Ok(rows)
            }
        }
    }

    fn build_normal(&self, s: &TrainSample) -> Result<BuiltRow> {
        let p = self.opts.max_length;
        let user = self.enc(&format!(
            "{}{}",
            self.opts.bos_token,
            self.cfg.fill_template(&s.system_prompt, &s.question)
        ))?;
        let out = self.enc(&format!("{}{}", s.gt_output, self.opts.eos_token))?;
        let mut ids: Vec<i64> = user.iter().chain(out.iter()).map(|&x| x as i64).collect();
        let mut labels: Vec<i64> = if self.opts.train_on_input {
            user.iter().map(|&x| x as i64).collect()
        } else {
            vec![IGNORE; user.len()]
        };
        labels.extend(out.iter().map(|&x| x as i64));
        let truncated = ids.len() > p;
        ids.truncate(p);
        labels.truncate(p);
        Ok(BuiltRow {
            input_ids: ids,
            labels,
            position_ids: None,
            layout: None,
            recover: None,
            truncated,
            hybrid_row: None,
            source: SourceVariant::Normal,
        })
    }

    /// §3.1 output segments (sentence or token level).
    fn output_segments(&self, s: &TrainSample) -> Result<Vec<Seg>> {
        let mut segs = Vec::new();
        let comp = || Seg::compressed(self.output_comp_ids.clone(), BlockKind::Output);
        match self.cfg.output_level() {
            Level::Sentence => {
                for t in &s.thoughts_list {
                    segs.push(Seg::abandoned(self.enc(&format!("{t}\n{SPLITTER}"))?));
                    segs.push(comp());
                }
                if s.add_eos() {
                    segs.push(Seg::save(self.enc(&self.opts.eos_token)?));
                }
            }
            Level::Token => {
                let text = if s.add_eos() {
                    format!("{}{}", s.gt_output, self.opts.eos_token)
                } else {
                    s.gt_output.clone()
                };
                let ids = self.enc(&text)?;
                for chunk in ids.chunks(self.cfg.output.step) {
                    let full = chunk.len() == self.cfg.output.step;
                    segs.push(Seg::abandoned(chunk.to_vec()));
                    if full {
                        segs.push(comp());
                    }
                }
            }
        }
        Ok(segs)
    }

    /// §3.1 `insert_comp_for_prompt`.
    fn prompt_segments(&self, s: &TrainSample) -> Result<Vec<Seg>> {
        let c = self.cfg;
        let t = &c.template;
        let bos = &self.opts.bos_token;
        let cache = || Seg::compressed(self.prompt_cache_ids.clone(), BlockKind::Prompt);
        let mut segs = Vec::new();
        let suffix_ids = if c.prompt.save_template {
            self.enc(&t.suffix)?
        } else if self.opts.train_on_input {
            Vec::new()
        } else {
            vec![self.continue_id]
        };
        let step = c.prompt.step;
        match (c.prompt_level(), c.prompt.save_template) {
            (Level::Token, false) => {
                let mut ids = vec![self.bos_id];
                ids.extend(self.enc(&c.fill_template(&s.system_prompt, &s.question))?);
                for chunk in ids.chunks(step) {
                    segs.push(Seg::abandoned(chunk.to_vec()));
                    segs.push(cache());
                }
                if !suffix_ids.is_empty() {
                    segs.push(Seg::save(suffix_ids));
                }
            }
            (Level::Token, true) => {
                segs.push(Seg::save(self.enc(&format!("{bos}{}", t.prefix))?));
                for chunk in self.enc(&s.system_prompt)?.chunks(step) {
                    segs.push(Seg::abandoned(chunk.to_vec()));
                    segs.push(cache());
                }
                segs.push(Seg::save(self.enc(&t.middle)?));
                for chunk in self.enc(&s.question)?.chunks(step) {
                    segs.push(Seg::abandoned(chunk.to_vec()));
                    segs.push(cache());
                }
                segs.push(Seg::save(suffix_ids));
            }
            (Level::Sentence, true) => {
                segs.push(Seg::save(self.enc(&format!("{bos}{}", t.prefix))?));
                for sent in &s.system_list {
                    segs.push(Seg::abandoned(self.enc(sent)?));
                    segs.push(cache());
                }
                segs.push(Seg::save(self.enc(&t.middle)?));
                for sent in &s.question_list {
                    segs.push(Seg::abandoned(self.enc(sent)?));
                    segs.push(cache());
                }
                segs.push(Seg::save(suffix_ids));
            }
            (Level::Sentence, false) => {
                // The reference edits the lists in place (prefix into the first system sentence, middle
                // after the last one, suffix after the last question sentence); no BOS, no suffix segment.
                if s.system_list.is_empty() || s.question_list.is_empty() {
                    return Err(DataError::Build(format!(
                        "prompt.save_template=false at sentence level needs non-empty system_list and question_list (got {} and {} elements; the reference raises IndexError)",
                        s.system_list.len(),
                        s.question_list.len()
                    )));
                }
                let mut sys = s.system_list.clone();
                let mut q = s.question_list.clone();
                sys[0] = format!("{}{}", t.prefix, sys[0]);
                let last = sys.len() - 1;
                sys[last].push_str(&t.middle);
                let last = q.len() - 1;
                q[last].push_str(&t.suffix);
                for sent in sys.iter().chain(q.iter()) {
                    segs.push(Seg::abandoned(self.enc(sent)?));
                    segs.push(cache());
                }
            }
        }
        Ok(segs)
    }

    /// §3.1 aug tokenization algorithm.
    fn assemble(&self, turns: &[Vec<Seg>], p: usize) -> Result<Assembled> {
        let toi = self.opts.train_on_input;
        // Labels per segment.
        let mut labels: Vec<Vec<Vec<i64>>> = turns
            .iter()
            .enumerate()
            .map(|(ti, segs)| {
                segs.iter()
                    .map(|seg| {
                        if !toi && ti % 2 == 0 {
                            vec![IGNORE; seg.ids.len()]
                        } else {
                            seg.ids
                                .iter()
                                .map(|&x| {
                                    if self.drop_set.contains(&x) {
                                        IGNORE
                                    } else {
                                        x as i64
                                    }
                                })
                                .collect()
                        }
                    })
                    .collect()
            })
            .collect();
        let total: usize = turns.iter().flatten().map(|s| s.ids.len()).sum();
        let mut ids = Vec::with_capacity(total.min(p));
        let mut out_labels = Vec::with_capacity(total.min(p));
        let mut blocks = Vec::new();
        'outer: for (ti, segs) in turns.iter().enumerate() {
            if ids.len() >= p {
                break;
            }
            for (si, seg) in segs.iter().enumerate() {
                if ids.len() >= p {
                    break 'outer;
                }
                if seg.kind == SegKind::Abandoned {
                    if let Some(next) = segs.get(si + 1) {
                        let SegKind::Compressed(kind) = next.kind else {
                            return Err(DataError::Build(
                                "an abandoned segment must be followed by a compressed one".into(),
                            ));
                        };
                        let (c, n) = match kind {
                            BlockKind::Prompt => (self.cfg.prompt.n_token, 0),
                            BlockKind::Output => (self.cfg.output_n_token(), 1),
                        };
                        let l = next.ids.len().checked_sub(c + n).ok_or_else(|| {
                            DataError::Build(format!(
                                "compressed segment of {} tokens is shorter than n_comp + n_continue = {}",
                                next.ids.len(),
                                c + n
                            ))
                        })?;
                        for x in labels[ti][si + 1].iter_mut().take(l) {
                            *x = IGNORE;
                        }
                        blocks.push(ThoughtBlock {
                            start: ids.len(),
                            end: ids.len() + seg.ids.len(),
                            l_inst: l,
                            n_comp: c,
                            n_continue: n,
                            kind,
                        });
                    }
                }
                for (k, &x) in seg.ids.iter().enumerate() {
                    if ids.len() >= p {
                        break;
                    }
                    ids.push(x);
                    out_labels.push(labels[ti][si][k]);
                }
            }
        }
        Ok(Assembled {
            truncated: ids.len() < total,
            ids,
            labels: out_labels,
            blocks,
        })
    }

    fn recover_row(&self, aug: Assembled, hybrid_row: Option<usize>) -> Result<BuiltRow> {
        let p = self.opts.max_length as i64;
        let t_a = aug.ids.len();
        // §3.1 step 5: recover items.
        let mut items: Vec<&ThoughtBlock> = Vec::new();
        let mut budget = p - t_a as i64 - 2;
        if budget > 0 {
            for b in aug.blocks.iter().filter(|b| b.kind == BlockKind::Output) {
                budget -= (b.end - b.start) as i64;
                if budget < 0 {
                    break;
                }
                items.push(b);
            }
        }
        if items.is_empty() {
            return Ok(row_from(aug, SourceVariant::Aug, hybrid_row));
        }
        if self.opts.flags.diagonal {
            return Err(DataError::Build(
                "mode recover does not support diagonal=true for samples with recover items (the reference's recover mask builder asserts)".into(),
            ));
        }
        let keys: Vec<RecoverKey> = items
            .iter()
            .map(|b| RecoverKey {
                end: b.end,
                l_inst: b.l_inst,
                n_comp: b.n_comp,
                n_continue: b.n_continue,
            })
            .collect();
        let mut ids: Vec<i64> = aug.ids.iter().map(|&x| x as i64).collect();
        let mut labels = aug.labels.clone();
        ids.push(self.recover_id as i64);
        labels.push(IGNORE);
        for b in &items {
            ids.extend(aug.ids[b.start..b.end].iter().map(|&x| x as i64));
            labels.extend_from_slice(&aug.labels[b.start..b.end]);
        }
        ids.push(self.eos_id as i64);
        labels.push(self.eos_id as i64);
        let added_len = ids.len() - t_a;
        let offset =
            recover_offset(&aug.blocks, t_a, &keys, &self.opts.flags).ok_or_else(|| {
                DataError::Build("the recover block's last row sees no aug column".into())
            })?;
        let mut pos: Vec<i64> = (0..t_a as i64).collect();
        pos.extend((0..added_len).map(|i| (offset + i) as i64));
        Ok(BuiltRow {
            input_ids: ids,
            labels,
            position_ids: Some(pos),
            layout: Some(Layout {
                len: t_a,
                blocks: aug.blocks,
            }),
            recover: Some(RecoverSpec { added_len, keys }),
            truncated: aug.truncated,
            hybrid_row,
            source: SourceVariant::Aug,
        })
    }

    /// §3.6: the prompt turn plus `[<|recover|>] + abandoned prompt pieces + [EOS]`.
    fn prompt_recover_row(&self, prompt_turn: Vec<Seg>) -> Result<BuiltRow> {
        let mut target = vec![self.recover_id];
        for seg in &prompt_turn {
            if seg.kind == SegKind::Abandoned {
                target.extend_from_slice(&seg.ids);
            }
        }
        target.push(self.eos_id);
        let turns = vec![prompt_turn, vec![Seg::save(target)]];
        let a = self.assemble(&turns, self.opts.max_length)?;
        Ok(row_from(a, SourceVariant::RecoverPrompt, Some(1)))
    }
}

impl CompressConfig {
    /// Output cache tokens per compression (the prompt's when `share`).
    pub fn output_n_token(&self) -> usize {
        if self.share {
            self.prompt.n_token
        } else {
            self.output.n_token
        }
    }
}

fn row_from(a: Assembled, source: SourceVariant, hybrid_row: Option<usize>) -> BuiltRow {
    let len = a.ids.len();
    BuiltRow {
        input_ids: a.ids.into_iter().map(i64::from).collect(),
        labels: a.labels,
        position_ids: Some((0..len as i64).collect()),
        layout: Some(Layout {
            len,
            blocks: a.blocks,
        }),
        recover: None,
        truncated: a.truncated,
        hybrid_row,
        source,
    }
}

/// §4.2 step 4 without building the mask: `1 +` the largest column `< t_a` that the last row of the
/// recover mask sees. The last row lies after every block (recover items imply no truncation), so only
/// the rules that hide columns from later rows apply: (a) thoughts+instructions, (a') previous continues
/// under `exclude_continue`, non-recovered output blocks, and the aug tail after the last block.
pub fn recover_offset(
    blocks: &[ThoughtBlock],
    t_a: usize,
    keys: &[RecoverKey],
    flags: &MaskFlags,
) -> Option<usize> {
    let mut visible = vec![true; t_a];
    let mut hide = |a: usize, b: usize| {
        let (a, b) = (a.min(t_a), b.min(t_a));
        if a < b {
            visible[a..b].iter_mut().for_each(|v| *v = false);
        }
    };
    for (k, b) in blocks.iter().enumerate() {
        hide(b.start, b.cache_start());
        if flags.exclude_continue && k > 0 {
            let prev = &blocks[k - 1];
            if prev.n_continue != 0 {
                hide(prev.cache_end(), prev.block_end());
            }
        }
    }
    for b in blocks.iter().filter(|b| b.kind == BlockKind::Output) {
        let recovered = keys.iter().any(|k| {
            k.end == b.end
                && k.l_inst == b.l_inst
                && k.n_comp == b.n_comp
                && k.n_continue == b.n_continue
        });
        if !recovered {
            hide(b.start, b.block_end());
        }
    }
    if let Some(last) = blocks.last() {
        if t_a > last.block_end() {
            hide(last.block_end(), t_a);
        }
    }
    visible.iter().rposition(|&v| v).map(|c| c + 1)
}
