//! The decode engine: prefill, greedy decoding with thought-level / token-level compression,
//! AnLLM and vanilla, for one or many sequences at once.
//!
//! Every sequence carries its own bookkeeping (slot → position, slot → whole-sequence index, the
//! current thought start, the compressed blocks); a step plans each sequence's input block and
//! mask, runs **one** batched forward over a ragged [`KvCache`] (shorter blocks are padded and the
//! padding slots evicted again right after), then evicts each sequence's compressed thought.
use std::ops::Range;
use std::time::Instant;

use lt_mask::{BlockKind, Layout, MaskFlags, ThoughtBlock};
use lt_model::{AttnMask, KvCache, Logits, Model};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::local::{fill_dense, intervals, local_mask, row_count, Indicator, Row};
use crate::InferError;

/// Which generation method drives compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LightThinker: a generated trigger (`<|splitter|>`) → force `[S, O_0..O_{C-1}, K]`, evict the thought and S.
    LightThinker,
    /// AnLLM: the model generates the anchor (`<|o_0|>`); nothing forced, the sentence is evicted.
    Anllm,
    /// No compression at all (plain greedy decoding with a growing cache).
    Vanilla,
}

/// When compression happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// On the generated trigger token (the reference's `output.level = "sentence"`).
    Sentence,
    /// Every `step`-th generated token (the reference's `output.level = "token"`).
    Token {
        /// Compression period in generated tokens.
        step: usize,
    },
}

/// How the per-step masks are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMethod {
    /// The reference: a mask built directly for the step (spec §2.6).
    Local,
    /// Self-check: rows of the whole-sequence training mask (`lt_mask::global_mask`) restricted to
    /// the cached slots. Gives the same outputs as `Local` (the reference's version is broken).
    Global,
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model predicted the EOS id.
    Eos,
    /// `max_new_tokens` loop iterations ran.
    MaxNewTokens,
    /// The reference's buffer capacity (`max_new_tokens + 1100`) would overflow.
    Capacity,
}

/// Everything the engine needs to know about a generation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenConfig {
    /// LightThinker, AnLLM or vanilla.
    pub method: Method,
    /// Thought level (trigger token) or token level (every `step`).
    pub level: Level,
    /// Cache-token ids `<|o_0|>..<|o_{C-1}|>` (C = length).
    pub comp_ids: Vec<i64>,
    /// The trigger: `<|splitter|>` (LightThinker) or the anchor `<|o_0|>` (AnLLM).
    pub trigger_id: i64,
    /// `<|continue|>`.
    pub continue_id: i64,
    /// The only stop id.
    pub eos_id: i64,
    /// Loop bound (model-generated tokens; a compression step counts once).
    pub max_new_tokens: usize,
    /// `see_current`, `bi_directional`, `diagonal` (+ `prefill_compress` for compressed prompts).
    pub flags: MaskFlags,
    /// Non-reference: new tokens get position = current cache length (the reference crashes).
    pub rolling_rope: bool,
    /// Local (reference) or global (self-check) masks.
    pub update: UpdateMethod,
    /// The reference's capacity break: stop when `cache_len + q > capacity`. `None` = never.
    pub capacity: Option<usize>,
    /// Record a per-forward trace (positions, masks, evictions) like the goldens' extras.
    pub trace: bool,
}

impl GenConfig {
    /// Number of cache tokens C.
    pub fn n_comp(&self) -> usize {
        self.comp_ids.len()
    }
}

/// One prompt, already tokenized. With prompt compression, `ids` is the augmented prompt with
/// cache tokens and `spans` lists each compressed sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromptInput {
    /// Ids fed at prefill.
    pub ids: Vec<i64>,
    /// The "prompt record" (what `prompt` / `input_len` report): `ids` without cache tokens.
    pub record_ids: Vec<i64>,
    /// Compressed prompt spans (empty = the paper setting).
    pub spans: Vec<PromptSpan>,
}

impl PromptInput {
    /// A plain (uncompressed) prompt.
    pub fn plain(ids: Vec<i64>) -> Self {
        PromptInput {
            record_ids: ids.clone(),
            ids,
            spans: Vec::new(),
        }
    }
}

/// A compressed prompt sentence in prompt coordinates: text `[ts, te)`, its cache tokens `[cs, ce)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSpan {
    /// The sentence's tokens.
    pub text: Range<usize>,
    /// Its cache tokens.
    pub cache: Range<usize>,
}

/// One model forward call as seen by one sequence (the goldens' `trace` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    /// KV length before the call.
    pub cache_len: usize,
    /// The fed block.
    pub input_ids: Vec<i64>,
    /// Its positions (None for a plain prefill).
    pub position_ids: Option<Vec<i64>>,
    /// Visible intervals per fed row (None for a plain causal prefill).
    pub mask: Option<Vec<Row>>,
    /// Slots removed after the call.
    pub evict: Option<(usize, usize)>,
    /// Argmax of the last row.
    pub pred: i64,
}

/// The result of generating one sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt record ids.
    pub prompt_ids: Vec<i64>,
    /// Every model-generated token (incl. triggers) plus the final stop token (never fed).
    pub output_ids: Vec<i64>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Number of compressions.
    pub n_compress: usize,
    /// Peak KV length in tokens (the reference's `max_token`).
    pub max_token: usize,
    /// Peak KV bytes of this sequence (`max_token` × bytes per cached token).
    pub peak_kv_bytes: usize,
    /// Dep: sum over the output tokens of the keys each one attends to when fed (the final,
    /// unfed token counts the cache it would see).
    pub dep: u64,
    /// KV length after each loop iteration (one entry per fed output token).
    pub kv_trace: Vec<usize>,
    /// Number of forward calls that fed this sequence.
    pub n_forward: usize,
    /// Wall-clock seconds from the start of the batch to this sequence's end.
    pub time_s: f64,
    /// Per-forward trace when [`GenConfig::trace`] is set.
    pub trace: Option<Vec<TraceStep>>,
}

/// The input block of one sequence for one forward.
#[derive(Debug, Clone)]
struct Planned {
    cache_len: usize,
    ids: Vec<i64>,
    positions: Vec<i64>,
    rows: Vec<Row>,
    /// All rows are plain causal over cache ++ block (fused path possible).
    causal: bool,
    /// Evictions after the forward, applied in order (descending ranges).
    evict: Vec<Range<usize>>,
}

/// Per-sequence decoding state.
#[derive(Debug)]
struct Seq {
    slot_pos: Vec<i64>,
    slot_whole: Vec<usize>,
    whole_len: usize,
    next_pos: i64,
    local_start: usize,
    local_start_whole: usize,
    blocks: Vec<ThoughtBlock>,
    pred: i64,
    counter: usize,
    prompt_ids: Vec<i64>,
    output: Vec<i64>,
    n_compress: usize,
    max_token: usize,
    dep: u64,
    kv_trace: Vec<usize>,
    n_forward: usize,
    stop: Option<StopReason>,
    trace: Vec<TraceStep>,
    script: Option<Vec<i64>>,
    time_s: f64,
}

impl Seq {
    fn new(script: Option<Vec<i64>>) -> Self {
        Seq {
            slot_pos: Vec::new(),
            slot_whole: Vec::new(),
            whole_len: 0,
            next_pos: 0,
            local_start: 0,
            local_start_whole: 0,
            blocks: Vec::new(),
            pred: -1,
            counter: 0,
            prompt_ids: Vec::new(),
            output: Vec::new(),
            n_compress: 0,
            max_token: 0,
            dep: 0,
            kv_trace: Vec::new(),
            n_forward: 0,
            stop: None,
            trace: Vec::new(),
            script,
            time_s: 0.0,
        }
    }

    fn global_flags(cfg: &GenConfig) -> MaskFlags {
        MaskFlags {
            exclude_continue: false,
            ..cfg.flags
        }
    }

    /// Rows of the whole-sequence mask for the last `q` fed tokens, restricted to the cached slots.
    fn global_rows(&self, cfg: &GenConfig, q: usize) -> Result<Vec<Row>, InferError> {
        let layout = Layout {
            len: self.whole_len,
            blocks: self.blocks.clone(),
        };
        let gm = lt_mask::global_mask(&layout, &Self::global_flags(cfg), None)
            .map_err(|e| InferError::Mask(e.to_string()))?;
        let cols = self.slot_whole.len();
        let mut dense = vec![false; cols];
        let mut rows = Vec::with_capacity(q);
        for r in 0..q {
            let wr = self.whole_len - q + r;
            for (s, &w) in self.slot_whole.iter().enumerate() {
                dense[s] = gm.is_visible(wr, w);
            }
            rows.push(intervals(&dense));
        }
        Ok(rows)
    }

    fn plan_prefill(
        &mut self,
        cfg: &GenConfig,
        prompt: &PromptInput,
    ) -> Result<Planned, InferError> {
        let p = prompt.ids.len();
        if p == 0 {
            return Err(InferError::EmptyPrompt);
        }
        self.prompt_ids = prompt.record_ids.clone();
        let positions: Vec<i64> = (0..p as i64).collect();
        self.next_pos = p as i64;
        self.slot_pos = positions.clone();
        self.slot_whole = (0..p).collect();
        self.whole_len = p;
        for s in &prompt.spans {
            self.blocks.push(ThoughtBlock {
                start: s.text.start,
                end: s.text.end,
                l_inst: s.cache.start - s.text.end,
                n_comp: s.cache.len(),
                n_continue: 0,
                kind: BlockKind::Prompt,
            });
        }
        let compressed = !prompt.spans.is_empty() && cfg.flags.prefill_compress;
        let (rows, causal) = match cfg.update {
            UpdateMethod::Global if !prompt.spans.is_empty() => (self.global_rows(cfg, p)?, false),
            _ if compressed => (prefill_mask(p, &prompt.spans, &cfg.flags), false),
            _ => ((0..p).map(|r| vec![(0, r as u32 + 1)]).collect(), true),
        };
        self.max_token = p;
        let mut evict: Vec<Range<usize>> = prompt.spans.iter().map(|s| s.text.clone()).collect();
        evict.sort_by_key(|r| std::cmp::Reverse(r.start));
        Ok(Planned {
            cache_len: 0,
            ids: prompt.ids.clone(),
            positions,
            rows,
            causal,
            evict,
        })
    }

    fn finish(&mut self, stop: StopReason, push_pred: bool, t0: Instant) {
        if push_pred {
            self.output.push(self.pred);
        }
        // The final token would see the whole cache plus itself.
        self.dep += self.slot_pos.len() as u64 + 1;
        self.stop = Some(stop);
        self.time_s = t0.elapsed().as_secs_f64();
    }

    /// Plan the next loop iteration, or finish the sequence.
    fn plan(&mut self, cfg: &GenConfig, t0: Instant) -> Result<Option<Planned>, InferError> {
        if self.stop.is_some() {
            return Ok(None);
        }
        if self.pred == cfg.eos_id {
            self.finish(StopReason::Eos, true, t0);
            return Ok(None);
        }
        if self.counter >= cfg.max_new_tokens {
            self.finish(StopReason::MaxNewTokens, true, t0);
            return Ok(None);
        }
        let pred = self.pred;
        self.output.push(pred);
        let l = self.slot_pos.len();
        let c = cfg.n_comp();
        let trigger = match (cfg.method, cfg.level) {
            (Method::Vanilla, _) => false,
            (_, Level::Sentence) => pred == cfg.trigger_id,
            (_, Level::Token { step }) => step > 0 && (self.counter + 1).is_multiple_of(step),
        };
        let mut ids = vec![pred];
        let mut ind = None;
        let mut evict = Vec::new();
        let mut block = None;
        if trigger {
            let ls = self.local_start;
            let lw = self.local_start_whole;
            let w = self.whole_len; // whole index of `pred`
            match (cfg.method, cfg.level) {
                (Method::Anllm, Level::Sentence) => {
                    ind = Some(Indicator {
                        text_start: ls,
                        text_end: l,
                        comp_start: l,
                        comp_end: l + 1,
                        n_continue: 0,
                    });
                    evict.push(ls..l);
                    block = Some((lw, w, 1, 0));
                }
                (Method::Anllm, Level::Token { .. }) => {
                    ids.extend_from_slice(&cfg.comp_ids);
                    ind = Some(Indicator {
                        text_start: ls,
                        text_end: l + 1,
                        comp_start: l + 1,
                        comp_end: l + 1 + c,
                        n_continue: 0,
                    });
                    evict.push(ls..l + 1);
                    block = Some((lw, w + 1, c, 0));
                }
                _ => {
                    ids.extend_from_slice(&cfg.comp_ids);
                    ids.push(cfg.continue_id);
                    ind = Some(Indicator {
                        text_start: ls,
                        text_end: l + 1,
                        comp_start: l + 1,
                        comp_end: l + 1 + c,
                        n_continue: 1,
                    });
                    evict.push(ls..l + 1);
                    block = Some((lw, w + 1, c, 1));
                }
            }
        }
        let q = ids.len();
        if let Some(cap) = cfg.capacity {
            if cap < l + q {
                // No duplicated last token (reference bug §7.12): `pred` is already in the output.
                self.finish(StopReason::Capacity, false, t0);
                return Ok(None);
            }
        }
        let positions: Vec<i64> = if cfg.rolling_rope {
            (l as i64..(l + q) as i64).collect()
        } else {
            (self.next_pos..self.next_pos + q as i64).collect()
        };
        self.next_pos += q as i64;
        self.slot_pos.extend_from_slice(&positions);
        self.slot_whole.extend(self.whole_len..self.whole_len + q);
        self.whole_len += q;
        if let Some((start, end, n_comp, n_continue)) = block {
            self.blocks.push(ThoughtBlock {
                start,
                end,
                l_inst: 0,
                n_comp,
                n_continue,
                kind: BlockKind::Output,
            });
        }
        let rows = match cfg.update {
            UpdateMethod::Local => local_mask(l, q, ind.as_ref(), &cfg.flags),
            UpdateMethod::Global => self.global_rows(cfg, q)?,
        };
        let causal = ind.is_none() && q == 1 && rows[0] == [(0, l as u32 + 1)];
        self.max_token = self.max_token.max(l + q);
        self.dep += row_count(&rows[0]) as u64;
        Ok(Some(Planned {
            cache_len: l,
            ids,
            positions,
            rows,
            causal,
            evict,
        }))
    }

    /// Apply the planned evictions to the bookkeeping and take the next prediction.
    fn commit(&mut self, cfg: &GenConfig, planned: Planned, argmax: i64, prefill: bool) {
        let compressed = !planned.evict.is_empty();
        for r in &planned.evict {
            self.slot_pos.drain(r.clone());
            self.slot_whole.drain(r.clone());
        }
        if compressed || prefill {
            self.local_start = self.slot_pos.len();
            self.local_start_whole = self.whole_len;
        }
        if compressed && !prefill {
            self.n_compress += 1;
        }
        let pred = match &self.script {
            Some(s) => {
                let k = if prefill { 0 } else { self.counter + 1 };
                s.get(k).copied().unwrap_or(cfg.eos_id)
            }
            None => argmax,
        };
        if cfg.trace {
            let plain_prefill = prefill && planned.causal;
            self.trace.push(TraceStep {
                cache_len: planned.cache_len,
                input_ids: planned.ids.clone(),
                position_ids: (!plain_prefill).then(|| planned.positions.clone()),
                mask: (!plain_prefill).then(|| planned.rows.clone()),
                evict: planned
                    .evict
                    .first()
                    .filter(|_| !prefill)
                    .map(|r| (r.start, r.end)),
                pred,
            });
        }
        if !prefill {
            self.counter += 1;
            self.kv_trace.push(self.slot_pos.len());
        }
        self.n_forward += 1;
        self.pred = pred;
    }

    fn into_generation(self, slot_bytes: usize, trace: bool) -> Generation {
        Generation {
            prompt_ids: self.prompt_ids,
            output_ids: self.output,
            stop: self.stop.unwrap_or(StopReason::Eos),
            n_compress: self.n_compress,
            max_token: self.max_token,
            peak_kv_bytes: self.max_token * slot_bytes,
            dep: self.dep,
            kv_trace: self.kv_trace,
            n_forward: self.n_forward,
            time_s: self.time_s,
            trace: trace.then_some(self.trace),
        }
    }
}

/// The prefill mask of a compressed prompt (`prefill_compress = true`, spec §2.4(b)).
pub fn prefill_mask(p: usize, spans: &[PromptSpan], flags: &MaskFlags) -> Vec<Row> {
    let mut rows = Vec::with_capacity(p);
    let mut dense = vec![false; p];
    for r in 0..p {
        dense.iter_mut().enumerate().for_each(|(j, v)| *v = j <= r);
        for s in spans {
            if r >= s.cache.end {
                dense[s.text.clone()].iter_mut().for_each(|v| *v = false);
            }
            if s.cache.contains(&r) {
                if flags.see_current {
                    dense[..s.text.start].iter_mut().for_each(|v| *v = false);
                }
                if flags.bi_directional {
                    dense[s.cache.clone()].iter_mut().for_each(|v| *v = true);
                }
                if flags.diagonal {
                    dense[s.cache.clone()].iter_mut().for_each(|v| *v = false);
                    dense[r] = true;
                }
            }
        }
        rows.push(intervals(&dense));
    }
    rows
}

/// Observer of generation progress: called after each batched forward.
pub trait Progress {
    /// `new_tokens`: output tokens fed by this step; `compressions`: compressions done in this
    /// step; `kv_tokens`: live KV slots over the batch after eviction; `finished`: sequences that
    /// ended in this step.
    fn step(&mut self, new_tokens: usize, compressions: usize, kv_tokens: usize, finished: usize);
}

impl Progress for () {
    fn step(&mut self, _: usize, _: usize, _: usize, _: usize) {}
}

/// Greedy generation with compression on a [`Model`].
///
/// ```no_run
/// # use lt_infer::{Generator, GenConfig, PromptInput};
/// # fn f(model: &lt_model::Model, cfg: GenConfig) -> Result<(), lt_infer::InferError> {
/// let gen = Generator::new(model, cfg);
/// let out = gen.generate(&PromptInput::plain(vec![1, 2, 3]))?;
/// println!("{} tokens, {} compressions, peak {}", out.output_ids.len(), out.n_compress, out.max_token);
/// # Ok(()) }
/// ```
pub struct Generator<'m> {
    model: &'m Model,
    cfg: GenConfig,
    forward_cost: f64,
}

/// Logits of every fed row of every forward (teacher-forced runs, for tests).
pub type StepLogits = Vec<Tensor>;

/// [`Generator::with_forward_cost`] on the CPU: a forward's fixed part (dispatch, one pass over
/// the weights) is worth ~4 token-rows on the tiny bench model and ~8 on the 0.5B shape.
const DEFAULT_FORWARD_COST_CPU: f64 = 8.0;
/// [`Generator::with_forward_cost`] on a GPU, where a batch row costs little next to a call.
const DEFAULT_FORWARD_COST_GPU: f64 = 512.0;

impl<'m> Generator<'m> {
    /// A generator for `model` with `cfg`.
    pub fn new(model: &'m Model, cfg: GenConfig) -> Self {
        let forward_cost = std::env::var("LT_FORWARD_COST")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v >= 0.0)
            .unwrap_or(match model.device() {
                tch::Device::Cpu => DEFAULT_FORWARD_COST_CPU,
                _ => DEFAULT_FORWARD_COST_GPU,
            });
        Generator {
            model,
            cfg,
            forward_cost,
        }
    }

    /// The fixed cost of one forward call, in token-rows (what one more row of the batch costs
    /// is 1). It decides ragged batch steps: when some rows feed a long block (a prompt, a
    /// compression block) and others one token, padding every row to the longest block costs
    /// `cost + batch × longest`; running each long row alone (on a row lent by
    /// [`lt_model::KvCache::borrow_row`]) and the rest together costs `cost + block` per long
    /// row plus `cost + batch`; when most rows have finished, running only the active rows
    /// alone is the third plan. The cheapest runs; outputs are the same either way.
    /// Defaults: 8 on the CPU (compute-bound: padding is expensive), 512 on a GPU (launch- and
    /// weight-bound: extra calls are), or the environment variable `LT_FORWARD_COST` (`inf`
    /// always pads). `f64::INFINITY` always pads, `0.0` splits whenever that feeds fewer rows.
    pub fn with_forward_cost(mut self, token_rows: f64) -> Self {
        self.forward_cost = token_rows.max(0.0);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// Bytes of K+V per cached token of one sequence.
    pub fn slot_bytes(&self) -> usize {
        let c = self.model.config();
        c.num_hidden_layers
            * 2
            * c.kv_heads()
            * c.head_dim()
            * self.model.kind().elt_size_in_bytes()
    }

    /// Generate one sequence (batch 1).
    pub fn generate(&self, prompt: &PromptInput) -> Result<Generation, InferError> {
        let mut v = self.generate_batch(std::slice::from_ref(prompt), &mut ())?;
        Ok(v.remove(0))
    }

    /// Generate several sequences in one batch; each compresses and evicts on its own schedule
    /// and the outputs equal [`Generator::generate`] of each prompt.
    pub fn generate_batch(
        &self,
        prompts: &[PromptInput],
        progress: &mut dyn Progress,
    ) -> Result<Vec<Generation>, InferError> {
        Ok(self.drive(prompts, None, false, progress)?.0)
    }

    /// Teacher-forced run (batch 1): feed `script` as the model's predictions (the first entry is
    /// the token after the prefill; after the script the EOS id is "predicted") and return the
    /// logits of every fed row of every forward (`[q, vocab]` each; the prefill first).
    pub fn run_scripted(
        &self,
        prompt: &PromptInput,
        script: &[i64],
    ) -> Result<(Generation, StepLogits), InferError> {
        let (mut g, mut l) = self.drive(
            std::slice::from_ref(prompt),
            Some(&[script.to_vec()]),
            true,
            &mut (),
        )?;
        Ok((g.remove(0), l.remove(0)))
    }

    fn drive(
        &self,
        prompts: &[PromptInput],
        scripts: Option<&[Vec<i64>]>,
        keep_logits: bool,
        progress: &mut dyn Progress,
    ) -> Result<(Vec<Generation>, Vec<StepLogits>), InferError> {
        let t0 = Instant::now();
        let cfg = &self.cfg;
        if cfg.method != Method::Vanilla && cfg.comp_ids.is_empty() {
            return Err(InferError::Config("no cache tokens (C = 0)".into()));
        }
        let b = prompts.len();
        if b == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let _g = lt_model::InferenceMode::new();
        let mut seqs: Vec<Seq> = (0..b)
            .map(|i| Seq::new(scripts.and_then(|s| s.get(i).cloned())))
            .collect();
        let mut logits_out: Vec<StepLogits> = (0..b).map(|_| Vec::new()).collect();
        let max_p = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let cap = max_p + cfg.max_new_tokens.min(4096) + cfg.n_comp() + 4;
        let mut cache = self.model.new_cache(b, cap);

        let plans: Vec<Option<Planned>> = seqs
            .iter_mut()
            .zip(prompts)
            .map(|(s, p)| s.plan_prefill(cfg, p).map(Some))
            .collect::<Result<_, _>>()?;
        self.step_split(
            &mut cache,
            &mut seqs,
            plans,
            true,
            keep_logits,
            &mut logits_out,
        )?;
        loop {
            let plans: Vec<Option<Planned>> = seqs
                .iter_mut()
                .map(|s| s.plan(cfg, t0))
                .collect::<Result<_, _>>()?;
            let active = plans.iter().filter(|p| p.is_some()).count();
            let before: usize = seqs.iter().map(|s| s.n_compress).sum();
            let finished_before = seqs.iter().filter(|s| s.stop.is_some()).count();
            if active == 0 {
                progress.step(0, 0, 0, finished_before);
                break;
            }
            self.step_split(
                &mut cache,
                &mut seqs,
                plans,
                false,
                keep_logits,
                &mut logits_out,
            )?;
            let after: usize = seqs.iter().map(|s| s.n_compress).sum();
            let kv: usize = seqs
                .iter()
                .filter(|s| s.stop.is_none())
                .map(|s| s.slot_pos.len())
                .sum();
            progress.step(active, after - before, kv, 0);
        }
        let slot_bytes = self.slot_bytes();
        let gens = seqs
            .into_iter()
            .map(|s| s.into_generation(slot_bytes, cfg.trace))
            .collect();
        Ok((gens, logits_out))
    }

    /// Rows to run alone this step, on their own cache row. Three plans, in fed token-rows with
    /// `forward_cost` per forward call ([`Generator::with_forward_cost`]): one forward padding
    /// every row (finished ones too) to the longest block; each long block alone plus one padded
    /// forward of the one-token rows; every active row alone (when most rows have finished).
    /// The cheapest wins; ties pad.
    fn solo_rows(&self, plans: &[Option<Planned>]) -> Vec<usize> {
        let b = plans.len();
        let lens: Vec<usize> = plans
            .iter()
            .map(|p| p.as_ref().map_or(0, |p| p.ids.len()))
            .collect();
        let t = lens.iter().copied().max().unwrap_or(0);
        if b < 2 || t == 0 {
            return Vec::new();
        }
        let phi = self.forward_cost;
        let padded = phi + (b * t) as f64;
        let alone = |rows: &[usize]| rows.iter().map(|&r| phi + lens[r] as f64).sum::<f64>();
        let long: Vec<usize> = (0..b).filter(|&r| lens[r] > 1).collect();
        let rest = if lens.contains(&1) {
            phi + b as f64
        } else {
            0.0
        };
        let split_long = alone(&long) + rest;
        let active: Vec<usize> = (0..b).filter(|&r| lens[r] > 0).collect();
        let all_alone = alone(&active);
        if all_alone < padded && all_alone <= split_long {
            active
        } else if split_long < padded {
            long
        } else {
            Vec::new()
        }
    }

    /// One step of the batch: the rows [`Generator::solo_rows`] picks run alone on their own
    /// cache row, then the others in one batched [`Generator::step`].
    fn step_split(
        &self,
        cache: &mut KvCache,
        seqs: &mut [Seq],
        mut plans: Vec<Option<Planned>>,
        prefill: bool,
        keep_logits: bool,
        logits_out: &mut [StepLogits],
    ) -> Result<(), InferError> {
        for r in self.solo_rows(&plans) {
            let Some(p) = plans[r].take() else { continue };
            let mut one = cache
                .borrow_row(r, p.ids.len())
                .ok_or_else(|| InferError::Config(format!("no cache row {r}")))?;
            let res = self.step(
                &mut one,
                &mut seqs[r..=r],
                vec![Some(p)],
                prefill,
                keep_logits,
                &mut logits_out[r..=r],
            );
            cache.return_row(r, one);
            res?;
        }
        if plans.iter().any(Option::is_some) {
            self.step(cache, seqs, plans, prefill, keep_logits, logits_out)?;
        }
        Ok(())
    }

    /// One batched forward: pad blocks to the longest, build the `[B,1,T,K]` mask, run, evict.
    fn step(
        &self,
        cache: &mut KvCache,
        seqs: &mut [Seq],
        plans: Vec<Option<Planned>>,
        prefill: bool,
        keep_logits: bool,
        logits_out: &mut [StepLogits],
    ) -> Result<(), InferError> {
        let b = seqs.len();
        let t = plans
            .iter()
            .flatten()
            .map(|p| p.ids.len())
            .max()
            .unwrap_or(0);
        if t == 0 {
            return Ok(());
        }
        let lens: Vec<usize> = (0..b).map(|r| cache.row_len(r)).collect();
        for (r, p) in plans.iter().enumerate() {
            if let Some(p) = p {
                if p.cache_len != lens[r] {
                    return Err(InferError::CacheMismatch {
                        row: r,
                        expected: p.cache_len,
                        found: lens[r],
                    });
                }
            }
        }
        let kmax = lens.iter().max().copied().unwrap_or(0) + t;
        let pad = 0i64; // any valid id: padding slots are hidden and evicted
        let mut ids = vec![pad; b * t];
        let mut pos = vec![0i64; b * t];
        for (r, p) in plans.iter().enumerate() {
            if let Some(p) = p {
                ids[r * t..r * t + p.ids.len()].copy_from_slice(&p.ids);
                pos[r * t..r * t + p.ids.len()].copy_from_slice(&p.positions);
                // padding positions continue the row's own (they are evicted right away)
                let last = *p.positions.last().unwrap_or(&0);
                for (i, v) in pos[r * t + p.ids.len()..(r + 1) * t].iter_mut().enumerate() {
                    *v = last + 1 + i as i64;
                }
            }
        }
        let dev = self.model.device();
        // Every row sees all of its own slots: the model's causal path is exact, also for a ragged
        // batch of single-token steps (it hides each row's slots past its own length), and it keeps
        // the fused kernel and skips building a [B, 1, T, K] mask every step.
        let all_full =
            (b == 1 || t == 1) && plans.iter().all(|p| p.as_ref().is_some_and(|p| p.causal));
        let mask_t;
        let mask = if all_full {
            AttnMask::Causal
        } else {
            let mut dense = vec![false; b * t * kmax];
            for r in 0..b {
                let q = plans[r].as_ref().map_or(0, |p| p.ids.len());
                for i in 0..t {
                    let row = &mut dense[(r * t + i) * kmax..(r * t + i + 1) * kmax];
                    if i < q {
                        fill_dense(&plans[r].as_ref().expect("q > 0").rows[i], row);
                    } else {
                        row[lens[r] + i] = true;
                    }
                }
            }
            mask_t = Tensor::from_slice(&dense)
                .view([b as i64, 1, t as i64, kmax as i64])
                .to_device(dev);
            AttnMask::Bool(&mask_t)
        };
        let uniform_q = plans
            .iter()
            .all(|p| p.as_ref().is_some_and(|p| p.ids.len() == t));
        let mode = if keep_logits || !uniform_q {
            Logits::All
        } else {
            Logits::Last
        };
        // host ids / positions: the fused CPU step reads them in place
        let logits = self
            .model
            .forward_slices(&ids, &pos, b, mask, Some(cache), mode)?;
        // logits: [B, T, V] (All) or [B, V] / [B, 1, V] (Last)
        let logits = if logits.dim() == 2 {
            logits.unsqueeze(1)
        } else {
            logits
        };
        let am = argmax_rows(&logits)?;
        let tl = logits.size()[1] as usize;
        for (r, p) in plans.into_iter().enumerate() {
            let q = p.as_ref().map_or(0, |p| p.ids.len());
            // drop this row's padding slots (all of them for a finished row)
            if q < t {
                cache.evict_row(r, lens[r] + q..lens[r] + t);
            }
            let Some(p) = p else { continue };
            for ev in &p.evict {
                if b == 1 {
                    cache.evict(ev.clone());
                } else {
                    cache.evict_row(r, ev.clone());
                }
            }
            let idx = if tl == 1 { 0 } else { q - 1 };
            let pred = am[r * tl + idx];
            if keep_logits {
                logits_out[r].push(
                    logits
                        .get(r as i64)
                        .narrow(0, 0, q as i64)
                        .to_kind(Kind::Float)
                        .to_device(tch::Device::Cpu),
                );
            }
            seqs[r].commit(&self.cfg, p, pred, prefill);
            if cache.row_len(r) != seqs[r].slot_pos.len() {
                return Err(InferError::CacheMismatch {
                    row: r,
                    expected: seqs[r].slot_pos.len(),
                    found: cache.row_len(r),
                });
            }
        }
        Ok(())
    }
}

/// Greedy choice per position of `logits` (`[.., V]`, flattened): the first maximum, a NaN
/// counting as the largest value — torch's `argmax`. CPU f32 / bf16 logits are read in place
/// (a decode step's five libtorch calls cost more than the scan).
fn argmax_rows(logits: &Tensor) -> Result<Vec<i64>, InferError> {
    let v = logits.size().last().copied().unwrap_or(0) as usize;
    let n = logits.numel();
    if logits.device() == tch::Device::Cpu && logits.is_contiguous() && v > 0 {
        match logits.kind() {
            Kind::Float => {
                // SAFETY: a contiguous CPU f32 tensor of n elements, alive for this borrow
                let x = unsafe { std::slice::from_raw_parts(logits.data_ptr() as *const f32, n) };
                return Ok(x.chunks_exact(v).map(first_max_slice).collect());
            }
            Kind::BFloat16 => {
                // SAFETY: as above, bf16 as its 16 bits
                let x = unsafe { std::slice::from_raw_parts(logits.data_ptr() as *const u16, n) };
                return Ok(x
                    .chunks_exact(v)
                    .map(|r| first_max(r.iter().map(|&b| f32::from_bits((b as u32) << 16))))
                    .collect());
            }
            _ => {}
        }
    }
    let am = logits
        .argmax(-1, false)
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Int64);
    Ok(Vec::<i64>::try_from(am.flatten(0, -1))?)
}

/// Index of the first largest value (a NaN beats any number; the first NaN wins).
fn first_max(x: impl Iterator<Item = f32>) -> i64 {
    let (mut best, mut at) = (f32::NEG_INFINITY, 0usize);
    for (i, v) in x.enumerate() {
        if i == 0 || v > best || (v.is_nan() && !best.is_nan()) {
            best = v;
            at = i;
        }
    }
    at as i64
}

/// [`first_max`] of a slice, in two passes the compiler vectorises (16 lanes of running
/// maxima and NaN flags, then the first index holding the maximum): a decode step's scalar scan
/// of a 1k-vocabulary row cost ~1 µs, 8 rows ~8 % of a batched tiny-model step.
fn first_max_slice(x: &[f32]) -> i64 {
    const L: usize = 16;
    let (mut m, mut nan) = ([f32::NEG_INFINITY; L], [false; L]);
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for ((&v, ml), nl) in c.iter().zip(&mut m).zip(&mut nan) {
            *nl |= v.is_nan();
            *ml = if v > *ml { v } else { *ml };
        }
    }
    for &v in chunks.remainder() {
        nan[0] |= v.is_nan();
        m[0] = if v > m[0] { v } else { m[0] };
    }
    if nan.iter().any(|&n| n) {
        return x.iter().position(|v| v.is_nan()).unwrap_or(0) as i64;
    }
    let best = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // the first value equal to the maximum (all -inf, or empty: index 0, like the scan)
    x.iter().position(|&v| v == best).unwrap_or(0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use lt_model::ModelConfig;

    /// The in-place greedy choice is torch's argmax: first maximum on ties, NaN largest, for
    /// f32 and bf16, and the libtorch path for other dtypes agrees.
    #[test]
    fn argmax_rows_matches_torch() {
        let nan = f32::NAN;
        let rows: Vec<f32> = vec![
            1.0,
            3.0,
            3.0,
            2.0, // tie: first
            -5.0,
            -1.0,
            -1.0,
            -7.0, // negatives
            0.0,
            nan,
            4.0,
            nan, // NaN wins, first NaN
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            2.0,
            1.0,
            0.5,
            2.0,
        ];
        let t = Tensor::from_slice(&rows).view([5, 1, 4]);
        let want: Vec<i64> = Vec::try_from(t.argmax(-1, false).flatten(0, -1)).unwrap();
        assert_eq!(want, vec![1, 1, 1, 0, 0]);
        assert_eq!(argmax_rows(&t).unwrap(), want);
        assert_eq!(argmax_rows(&t.to_kind(Kind::BFloat16)).unwrap(), want);
        assert_eq!(argmax_rows(&t.to_kind(Kind::Double)).unwrap(), want);
        // a non-contiguous view goes through libtorch
        let tt = Tensor::from_slice(&rows).view([4, 5]).transpose(0, 1);
        let want: Vec<i64> = Vec::try_from(tt.argmax(-1, false)).unwrap();
        assert_eq!(argmax_rows(&tt).unwrap(), want);
    }

    /// The vectorised scan picks what the plain one does: lengths around the 16-lane chunks,
    /// ties (first wins), NaNs (first NaN wins), all `-inf`, signed zeros, empty.
    #[test]
    fn first_max_slice_matches_the_scan() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for len in (0..40).chain([1023, 1024, 1025]) {
            for trial in 0..30 {
                // few distinct values: many ties
                let mut x: Vec<f32> = (0..len).map(|_| (next() % 5) as f32 - 2.0).collect();
                match trial % 6 {
                    1 if len > 0 => x[next() % len] = f32::NAN,
                    2 if len > 1 => {
                        x[next() % len] = f32::NAN;
                        x[next() % len] = f32::NAN;
                    }
                    3 => x.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                    4 => x
                        .iter_mut()
                        .for_each(|v| *v = if next() % 2 == 0 { 0.0 } else { -0.0 }),
                    5 if len > 0 => x[next() % len] = f32::INFINITY,
                    _ => {}
                }
                let want = first_max(x.iter().copied());
                assert_eq!(first_max_slice(&x), want, "len {len} trial {trial}: {x:?}");
            }
        }
    }

    fn plan(len: usize) -> Option<Planned> {
        Some(Planned {
            cache_len: 0,
            ids: vec![1; len],
            positions: (0..len as i64).collect(),
            rows: Vec::new(),
            causal: true,
            evict: Vec::new(),
        })
    }

    /// The split decision follows the cost model: one compressing row among one-token rows
    /// runs alone on the CPU default, all rows compressing together (or a GPU cost) pad, a
    /// batch of one or of one-token steps never splits.
    #[test]
    fn solo_rows_follow_the_cost_model() {
        let m = Model::random(
            &ModelConfig::tiny_qwen2(64, 16, 1, 2, 1, 32),
            tch::Device::Cpu,
            Kind::Float,
            0,
        )
        .unwrap();
        let cfg = GenConfig {
            method: Method::LightThinker,
            level: Level::Token { step: 4 },
            comp_ids: vec![60, 61],
            trigger_id: 59,
            continue_id: 62,
            eos_id: 63,
            max_new_tokens: 8,
            flags: lt_mask::MaskFlags::default(),
            rolling_rope: false,
            update: UpdateMethod::Local,
            capacity: None,
            trace: false,
        };
        let cpu = Generator::new(&m, cfg.clone());
        let gpu = Generator::new(&m, cfg.clone()).with_forward_cost(DEFAULT_FORWARD_COST_GPU);
        let mixed: Vec<_> = [1, 10, 1, 1, 1, 1, 1, 1].map(plan).into_iter().collect();
        assert_eq!(cpu.solo_rows(&mixed), vec![1]); // 8+80 padded vs 18 + 16
        assert!(gpu.solo_rows(&mixed).is_empty());
        let together: Vec<_> = [10; 8].map(plan).into_iter().collect();
        assert!(cpu.solo_rows(&together).is_empty());
        let decode: Vec<_> = [1; 8].map(plan).into_iter().collect();
        assert!(cpu.solo_rows(&decode).is_empty());
        assert!(cpu.solo_rows(&[plan(10)]).is_empty());
        // a finished row (None) counts as padding; ragged prompts split when that is cheaper
        let prompts = vec![plan(100), plan(20), None, plan(30)];
        assert_eq!(cpu.solo_rows(&prompts), vec![0, 1, 3]); // 8+400 vs 3*8+150
        let even = vec![plan(100), plan(95)];
        assert!(cpu.solo_rows(&even).is_empty()); // 8+200 vs 16+195

        // most rows finished: the active ones run alone (8+8 padded vs 9)
        let mut tail = vec![None; 8];
        tail[5] = plan(1);
        assert_eq!(cpu.solo_rows(&tail), vec![5]);
        assert_eq!(gpu.solo_rows(&tail), vec![5]); // one call either way, fewer rows
        tail[2] = plan(1);
        assert!(cpu.solo_rows(&tail).is_empty()); // 16 vs 18

        // one active row compressing among finished ones: alone (8+80 vs 18)
        let mut tail = vec![None; 8];
        tail[3] = plan(10);
        assert_eq!(cpu.solo_rows(&tail), vec![3]);
    }
}
