//! The `lightthinker infer` pipeline: tokenizer + special tokens, prompts from the config
//! template, the reference's evaluation files, sharding, generation (batched), records, resume.
use std::path::{Path, PathBuf};
use std::time::Instant;

use lt_data::{CompressConfig, LtTokenizer};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model};
use serde::de::{MapAccess, Visitor};
use serde::Deserialize;

use crate::engine::{
    GenConfig, Generation, Generator, Level, Method, Progress, PromptInput, PromptSpan,
    UpdateMethod,
};
use crate::quick::{compare_answer, extract_answer, Dataset, QuickItem};
use crate::record::{shard_range, Record, RecordWriter};
use crate::InferError;

/// The Bespoke-Stratos system prompt as the reference's 11-sentence list
/// (`Reader.get_system_prompt_list`); joined with single spaces it is the system prompt.
pub use lt_data::SYSTEM_PROMPT_LIST as SYSTEM_LIST;

pub use lt_data::{system_prompt, BOXED_INSTRUCTION};

/// One evaluation item of a reference `data/eval/<dataset>.json` file.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    /// Index in the flattened list.
    pub idx: usize,
    /// The `question` field.
    pub question: String,
    /// The `answer` field as stored (GPQA: converted to a string).
    pub answer: serde_json::Value,
    /// `question_list` (sentences for prompt compression), when present.
    pub question_list: Option<Vec<String>>,
    /// Choices for the quick check, when present.
    pub choices: Option<Vec<String>>,
}

impl EvalItem {
    /// The user turn: the boxed instruction, a space, the question.
    pub fn user_prompt(&self) -> String {
        format!("{BOXED_INSTRUCTION} {}", self.question)
    }
    /// Sentences for prompt compression (`Reader.get_prompt_list`).
    pub fn prompt_list(&self, ds: Dataset) -> Option<Vec<String>> {
        let mut v = vec![BOXED_INSTRUCTION.to_string()];
        match ds {
            Dataset::Gsm8k => v.push(self.question.clone()),
            _ => v.extend(self.question_list.clone()?),
        }
        Some(v)
    }
    /// What the quick check needs.
    pub fn quick(&self) -> QuickItem {
        QuickItem {
            answer: value_to_string(&self.answer),
            choices: self.choices.clone(),
        }
    }
}

fn value_to_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON object of lists, kept in file order (the reference concatenates the lists in key order).
struct OrderedLists(Vec<(String, Vec<serde_json::Value>)>);

impl<'de> Deserialize<'de> for OrderedLists {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedLists;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object whose values are lists of items")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedLists, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Vec<serde_json::Value>>()? {
                    out.push((k, v));
                }
                Ok(OrderedLists(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Read a reference evaluation file (`{"<group>": [items...], ...}`, flattened in file order).
pub fn read_eval_file(path: impl AsRef<Path>, ds: Dataset) -> Result<Vec<EvalItem>, InferError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| InferError::io(path, e))?;
    let lists: OrderedLists = serde_json::from_str(&text).map_err(|e| InferError::EvalData {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (key, items) in lists.0 {
        for (j, item) in items.into_iter().enumerate() {
            let err = |msg: String| InferError::EvalData {
                path: path.to_path_buf(),
                msg: format!("item `{key}`[{j}]: {msg}"),
            };
            let question = item
                .get("question")
                .and_then(|q| q.as_str())
                .ok_or_else(|| err("missing string field `question`".into()))?
                .to_string();
            let mut answer = item
                .get("answer")
                .cloned()
                .ok_or_else(|| err("missing field `answer`".into()))?;
            if ds == Dataset::Gpqa {
                answer = serde_json::Value::String(value_to_string(&answer));
            }
            let strings = |v: &serde_json::Value, field: &str| -> Result<Vec<String>, InferError> {
                v.as_array()
                    .ok_or_else(|| err(format!("field `{field}` is not a list")))?
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| err(format!("field `{field}` holds a non-string")))
                    })
                    .collect()
            };
            let question_list = item
                .get("question_list")
                .map(|v| strings(v, "question_list"))
                .transpose()?;
            let choices = match ds {
                Dataset::Bbh => item
                    .pointer("/meta_data/structured/choices")
                    .map(|v| strings(v, "meta_data.structured.choices"))
                    .transpose()?,
                Dataset::Mmlu | Dataset::Gpqa => item
                    .get("choices_list")
                    .map(|v| strings(v, "choices_list"))
                    .transpose()?,
                Dataset::Gsm8k => None,
            };
            out.push(EvalItem {
                idx: out.len(),
                question,
                answer,
                question_list,
                choices,
            });
        }
    }
    Ok(out)
}

/// Everything `lightthinker infer` needs (the reference's arguments, typed).
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// HF checkpoint directory.
    pub model_path: PathBuf,
    /// Base tokenizer (file or directory).
    pub tokenizer_path: PathBuf,
    /// Compression config JSON.
    pub compress_config: PathBuf,
    /// `qwen` or `llama`.
    pub model_type: String,
    /// BOS string prepended to the prompt text.
    pub bos_token: String,
    /// The stop token string.
    pub eos_token: String,
    /// Loop bound.
    pub max_new_tokens: usize,
    /// LightThinker, AnLLM or vanilla.
    pub method: Method,
    /// Mask flags (`exclude_continue` is ignored, as in the reference).
    pub flags: MaskFlags,
    /// Non-reference rolling RoPE.
    pub rolling_rope: bool,
    /// Compress the prompt at prefill.
    pub compress_prompt: bool,
    /// Local or global masks.
    pub update: UpdateMethod,
    /// Sharding: number of shards.
    pub split_size: Option<usize>,
    /// Sharding: 1-based shard index.
    pub index: Option<usize>,
    /// The dataset (decides the reader and the quick check).
    pub dataset: Dataset,
    /// The evaluation file.
    pub data: PathBuf,
    /// The output JSONL.
    pub output: PathBuf,
    /// Model dtype.
    pub kind: Kind,
    /// Device.
    pub device: Device,
    /// Sequences generated together.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Record the per-forward trace (not written to records; for debugging).
    pub trace: bool,
    /// Override of the system prompt (`None` = the reference's Bespoke-Stratos prompt; with
    /// prompt compression a non-empty override is one sentence).
    pub system_prompt: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Records written by this run.
    pub written: usize,
    /// Items skipped because the output file already had them.
    pub skipped: usize,
    /// Output tokens generated.
    pub tokens: usize,
    /// Compressions.
    pub compressions: usize,
    /// Wall-clock seconds of generation.
    pub seconds: f64,
}

/// Tokenizer with the LightThinker tokens, the config, and the resolved special ids.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// The tokenizer (specials added).
    pub tok: LtTokenizer,
    /// The compression config.
    pub cfg: CompressConfig,
    /// Id of the BOS string (prompt compression starts with it).
    pub bos_id: Option<i64>,
    /// The stop id.
    pub eos_id: i64,
    /// `<|splitter|>`.
    pub splitter_id: i64,
    /// `<|continue|>`.
    pub continue_id: i64,
    /// `<|o_0|>`..
    pub comp_ids: Vec<i64>,
}

impl Vocab {
    /// Load the tokenizer and config and add the special tokens in the reference's order.
    pub fn load(tokenizer: &Path, config: &Path, bos: &str, eos: &str) -> Result<Self, InferError> {
        let cfg = CompressConfig::from_file(config)?;
        let mut tok = LtTokenizer::from_file(tokenizer)?;
        tok.add_special_tokens(&cfg);
        let id = |s: &str| -> Result<i64, InferError> {
            tok.token_id(s)
                .map(i64::from)
                .ok_or_else(|| InferError::Config(format!("token `{s}` is not in the vocabulary")))
        };
        let comp_ids = cfg
            .output_cache_tokens()
            .iter()
            .map(|s| id(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Vocab {
            bos_id: tok.token_id(bos).map(i64::from),
            eos_id: id(eos)?,
            splitter_id: id(lt_data::SPLITTER)?,
            continue_id: id(lt_data::CONTINUE)?,
            comp_ids,
            tok,
            cfg,
        })
    }

    fn encode(&self, s: &str) -> Vec<i64> {
        self.tok.encode(s).into_iter().map(i64::from).collect()
    }

    /// Decode ids keeping special tokens.
    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tok.decode(&ids)
    }

    /// The generation config for `method` and the flags.
    pub fn gen_config(&self, o: &InferOptions) -> GenConfig {
        let level = match self.cfg.output_level() {
            lt_data::Level::Token => Level::Token {
                step: self.cfg.output.step.max(1),
            },
            lt_data::Level::Sentence => Level::Sentence,
        };
        let (trigger_id, extra) = match o.method {
            Method::Anllm => (self.comp_ids.first().copied().unwrap_or(-1), 1000),
            _ => (self.splitter_id, 1100),
        };
        GenConfig {
            method: o.method,
            level,
            comp_ids: self.comp_ids.clone(),
            trigger_id,
            continue_id: self.continue_id,
            eos_id: self.eos_id,
            max_new_tokens: o.max_new_tokens,
            flags: MaskFlags {
                exclude_continue: false,
                ..o.flags
            },
            rolling_rope: o.rolling_rope,
            update: o.update,
            capacity: Some(o.max_new_tokens + extra),
            trace: o.trace,
        }
    }

    /// The prompt of an item: BOS string + filled template, tokenized as one string; with
    /// `compress_prompt`, the augmented prompt (spec §2.4(b), sentence level, `save_template`).
    pub fn prompt(
        &self,
        item: &EvalItem,
        ds: Dataset,
        bos: &str,
        compress: bool,
    ) -> Result<PromptInput, InferError> {
        self.prompt_with_system(item, ds, bos, compress, None)
    }

    /// [`Vocab::prompt`] with an optional system-prompt override.
    pub fn prompt_with_system(
        &self,
        item: &EvalItem,
        ds: Dataset,
        bos: &str,
        compress: bool,
        system: Option<&str>,
    ) -> Result<PromptInput, InferError> {
        if !compress {
            let sys = system.map_or_else(system_prompt, str::to_string);
            let text = format!("{bos}{}", self.cfg.fill_template(&sys, &item.user_prompt()));
            return Ok(PromptInput::plain(self.encode(&text)));
        }
        if self.cfg.prompt_level() != lt_data::Level::Sentence || !self.cfg.prompt.save_template {
            return Err(InferError::Config(
                "prompt compression is implemented for prompt.level = sentence with save_template = true".into(),
            ));
        }
        let list = item
            .prompt_list(ds)
            .ok_or_else(|| InferError::Config(format!("item {}: no `question_list`", item.idx)))?;
        let bos_id = self
            .bos_id
            .ok_or_else(|| InferError::Config(format!("BOS `{bos}` is not one token")))?;
        let prompt_comp: Vec<i64> = self
            .cfg
            .prompt_cache_tokens()
            .iter()
            .map(|s| {
                self.tok
                    .token_id(s)
                    .map(i64::from)
                    .ok_or_else(|| InferError::Config(format!("no token `{s}`")))
            })
            .collect::<Result<_, _>>()?;
        let mut p = PromptInput::default();
        let push_plain = |p: &mut PromptInput, ids: Vec<i64>| {
            p.record_ids.extend_from_slice(&ids);
            p.ids.extend(ids);
        };
        let push_sentences = |p: &mut PromptInput, sents: &[String]| {
            for s in sents {
                let ids = self.encode(s);
                let ts = p.ids.len();
                push_plain(p, ids);
                let te = p.ids.len();
                p.ids.extend_from_slice(&prompt_comp);
                p.spans.push(PromptSpan {
                    text: ts..te,
                    cache: te..p.ids.len(),
                });
            }
        };
        push_plain(&mut p, vec![bos_id]);
        push_plain(&mut p, self.encode(&self.cfg.template.prefix));
        let sys: Vec<String> = match system {
            None => SYSTEM_LIST.iter().map(|s| s.to_string()).collect(),
            Some("") => Vec::new(),
            Some(s) => vec![s.to_string()],
        };
        push_sentences(&mut p, &sys);
        push_plain(&mut p, self.encode(&self.cfg.template.middle));
        push_sentences(&mut p, &list);
        push_plain(&mut p, self.encode(&self.cfg.template.suffix));
        Ok(p)
    }

    /// Turn a generation into the output record.
    pub fn record(&self, item: &EvalItem, ds: Dataset, g: &Generation) -> Record {
        let output = self.decode(&g.output_ids);
        let model_answer = extract_answer(&output);
        let (acc_state, comp_pattern) = compare_answer(ds, &model_answer, &item.quick());
        Record {
            idx: item.idx,
            model_answer,
            gt_answer: item.answer.clone(),
            acc_state,
            prompt: self.decode(&g.prompt_ids),
            output,
            input_len: g.prompt_ids.len(),
            output_len: g.output_ids.len(),
            infer_time: g.time_s,
            comp_pattern,
            max_token: g.max_token,
            output_ids: g.output_ids.clone(),
            n_compress: g.n_compress,
            peak_kv_bytes: g.peak_kv_bytes,
            dep: g.dep,
            stop: serde_json::to_value(g.stop)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            kv_trace: g.kv_trace.clone(),
        }
    }
}

/// Progress bar: tokens/s, compressions, live KV size.
struct Bar {
    pb: indicatif::ProgressBar,
    t0: Instant,
    tokens: usize,
    comps: usize,
    slot_bytes: usize,
}

impl Progress for Bar {
    fn step(&mut self, new_tokens: usize, compressions: usize, kv_tokens: usize, _finished: usize) {
        self.tokens += new_tokens;
        self.comps += compressions;
        let tps = self.tokens as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        self.pb.set_message(format!(
            "{tps:.1} tok/s | {} compressions | KV {} tok ({:.1} MiB)",
            self.comps,
            kv_tokens,
            (kv_tokens * self.slot_bytes) as f64 / (1 << 20) as f64
        ));
    }
}

/// Run one dataset end to end: read, shard, skip what the output already has, generate in
/// batches of `batch_size`, append records durably in idx order.
pub fn run(opts: &InferOptions) -> Result<RunSummary, InferError> {
    let vocab = Vocab::load(
        &opts.tokenizer_path,
        &opts.compress_config,
        &opts.bos_token,
        &opts.eos_token,
    )?;
    tracing::info!(model = %opts.model_path.display(), "loading model");
    let model = Model::load_for_inference(&opts.model_path, opts.device, opts.kind)?;
    run_with(opts, &vocab, &model)
}

/// [`run`] with an already loaded vocabulary and model.
pub fn run_with(
    opts: &InferOptions,
    vocab: &Vocab,
    model: &Model,
) -> Result<RunSummary, InferError> {
    if opts.method == Method::Anllm && vocab.comp_ids.len() != 1 {
        tracing::warn!(
            n = vocab.comp_ids.len(),
            "AnLLM expects n_token = 1; using <|o_0|> as the anchor"
        );
    }
    let items = read_eval_file(&opts.data, opts.dataset)?;
    let range = shard_range(items.len(), opts.split_size, opts.index)?;
    let mut writer = RecordWriter::open(&opts.output)?;
    let pending: Vec<&EvalItem> = items[range.clone()]
        .iter()
        .filter(|it| !writer.is_done(it.idx))
        .collect();
    let skipped = range.len() - pending.len();
    if skipped > 0 {
        tracing::info!(skipped, path = %opts.output.display(), "resuming: items already in the output");
    }
    let gen = Generator::new(model, vocab.gen_config(opts));
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(pending.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut bar = Bar {
        pb: pb.clone(),
        t0: Instant::now(),
        tokens: 0,
        comps: 0,
        slot_bytes: gen.slot_bytes(),
    };
    let mut summary = RunSummary {
        skipped,
        ..Default::default()
    };
    let t0 = Instant::now();
    for chunk in pending.chunks(opts.batch_size.max(1)) {
        let prompts = chunk
            .iter()
            .map(|it| {
                vocab.prompt_with_system(
                    it,
                    opts.dataset,
                    &opts.bos_token,
                    opts.compress_prompt,
                    opts.system_prompt.as_deref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gens = gen.generate_batch(&prompts, &mut bar)?;
        for (it, g) in chunk.iter().zip(&gens) {
            let rec = vocab.record(it, opts.dataset, g);
            writer.append(&rec)?;
            summary.written += 1;
            summary.tokens += g.output_ids.len();
            summary.compressions += g.n_compress;
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// The reference's output path:
/// `{root}/inference_results/{output_tag}/{dataset}/{ckpt}/{index}-{split_size}{model_short_tag}.jsonl`
/// (`None-None` without sharding).
pub fn reference_output_path(
    root: &Path,
    output_tag: &str,
    ds: Dataset,
    ckpt: &str,
    split_size: Option<usize>,
    index: Option<usize>,
    model_short_tag: &str,
) -> PathBuf {
    let opt = |v: Option<usize>| v.map_or_else(|| "None".to_string(), |v| v.to_string());
    root.join("inference_results")
        .join(output_tag)
        .join(ds.name())
        .join(ckpt)
        .join(format!(
            "{}-{}{}.jsonl",
            opt(index),
            opt(split_size),
            model_short_tag
        ))
}
