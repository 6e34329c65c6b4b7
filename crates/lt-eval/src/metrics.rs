//! Per-sample and per-method metrics: Acc, Time, Peak, Dep, output length, compressions.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::record::Record;
use crate::tokens::{CompressSettings, Level, TokenCounter, SPLITTER};

/// The evaluation method classes of the reference (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    /// Vanilla full-KV decoding (`normal`).
    #[serde(rename = "normal")]
    Normal,
    /// Fixed-budget KV eviction, H2O / SepLLM (`kvcache`).
    #[serde(rename = "kvcache")]
    KvCache,
    /// Compression at a generated boundary token: LightThinker thought level, AnLLM (`anchor-thought`).
    #[serde(rename = "anchor-thought")]
    AnchorThought,
    /// Compression every `step` generated tokens: LightThinker token level (`anchor-token`).
    #[serde(rename = "anchor-token")]
    AnchorToken,
}

impl Method {
    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Method::Normal => "normal",
            Method::KvCache => "kvcache",
            Method::AnchorThought => "anchor-thought",
            Method::AnchorToken => "anchor-token",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "normal" => Ok(Method::Normal),
            "kvcache" | "h2o" | "sep" => Ok(Method::KvCache),
            "anchor-thought" => Ok(Method::AnchorThought),
            "anchor-token" => Ok(Method::AnchorToken),
            _ => Err(EvalError::Invalid(format!(
                "unknown method `{s}` (expected normal, kvcache, anchor-thought or anchor-token)"
            ))),
        }
    }
}

/// Which compression scheme produced `anchor-*` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// LightThinker: boundary `<|splitter|>`, C cache tokens + `<|continue|>` kept per compression.
    #[default]
    LightThinker,
    /// AnLLM: the model-emitted anchor `<|o_0|>` is the boundary and the only kept token (offset 0).
    Anllm,
}

impl Anchor {
    /// Guess from the config and the records: AnLLM when C = 1 and the outputs contain `<|o_0|>` but
    /// never `<|splitter|>`; LightThinker otherwise.
    pub fn detect(settings: &CompressSettings, records: &[Record]) -> Self {
        let o0 = settings
            .cache_tokens
            .first()
            .map(String::as_str)
            .unwrap_or("<|o_0|>");
        let has_split = records.iter().any(|r| r.output.contains(SPLITTER));
        let has_o0 = records.iter().any(|r| r.output.contains(o0));
        if settings.n_token == 1 && has_o0 && !has_split {
            Anchor::Anllm
        } else {
            Anchor::LightThinker
        }
    }
}

/// Whether to compute the intended metrics or reproduce the reference `eval_file.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compat {
    /// The evident intent: recorded ids/lengths and the exact trace when present, the real boundary
    /// token (`<|splitter|>` / `<|o_0|>`), C per config, offset 0 for AnLLM, exact Σ min(P+i, M) for
    /// fixed budgets, re-extracted answers.
    #[default]
    Intended,
    /// The reference as released: re-tokenized text, the last cache token as "splitter" (a boundary hit
    /// is an error, because the reference crashes on its undefined `compress_cnt`), offset 1, the
    /// kvcache closed form, the record's `model_answer`.
    Reference,
}

/// Everything [`sample_metrics`] needs besides the record.
#[derive(Debug, Clone)]
pub struct MetricOptions<'a> {
    /// The method class.
    pub method: Method,
    /// The compression config (C, level, step, token names).
    pub settings: CompressSettings,
    /// `--cache-size` (kvcache budget M).
    pub cache_size: usize,
    /// LightThinker or AnLLM (anchor methods only).
    pub anchor: Anchor,
    /// Intended or reference-compatible computation.
    pub compat: Compat,
    /// Tokenizer for re-tokenizing `prompt` / `output` when the record lacks ids / lengths.
    pub tokenizer: Option<&'a TokenCounter>,
    /// The boundary token id (`<|splitter|>` / `<|o_0|>`) when known without a tokenizer (e.g. from
    /// lt-infer); `None`: looked up in `tokenizer`.
    pub boundary_id: Option<u32>,
}

impl<'a> MetricOptions<'a> {
    /// Options for `method` with LightThinker defaults, C from `settings`, no tokenizer.
    pub fn new(method: Method, settings: CompressSettings) -> Self {
        Self {
            method,
            settings,
            cache_size: 1024,
            anchor: Anchor::LightThinker,
            compat: Compat::Intended,
            tokenizer: None,
            boundary_id: None,
        }
    }
}

/// Metrics of one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMetrics {
    /// The record's idx.
    pub idx: i64,
    /// Wall-clock seconds.
    pub time_s: f64,
    /// Prompt tokens P.
    pub prompt_len: usize,
    /// Generated tokens (for `anchor-thought`, boundary tokens excluded, as in the reference).
    pub output_len: usize,
    /// Peak live KV length in tokens (kvcache: the budget).
    pub peak: f64,
    /// Dependency: Σ over generated tokens of the number of tokens each can attend to.
    pub dep: f64,
    /// Number of compressions.
    pub compress: usize,
    /// Lengths of the compressed segments (thoughts), boundary token included.
    pub segments: Vec<usize>,
    /// Whether Dep came from the record's trace (`dep` / `kv_trace`) rather than a formula.
    pub exact_dep: bool,
}

enum Boundary {
    None,
    Id(u32),
    Every(usize),
}

struct Walk {
    curve: Vec<usize>,
    segments: Vec<usize>,
    peak: usize,
}

/// Walk the output ids: the KV length each token sees (P + current segment incl. itself + kept),
/// segment lengths, and the fallback peak (boundary candidates ctx + P + kept + forced; end ctx + P + kept).
fn walk(ids: &[u32], p: usize, b: &Boundary, kept: usize, forced: usize) -> Walk {
    let (mut ctx, mut k, mut s) = (0usize, 0usize, 0usize);
    let mut curve = Vec::with_capacity(ids.len());
    let mut segments = Vec::new();
    let mut peak = p;
    for &id in ids {
        ctx += 1;
        curve.push(p + ctx + s);
        let hit = match *b {
            Boundary::None => false,
            Boundary::Id(x) => id == x,
            Boundary::Every(n) => ctx == n,
        };
        if hit {
            peak = peak.max(ctx + p + s + forced);
            k += 1;
            segments.push(ctx);
            ctx = 0;
            s = k * kept;
        }
    }
    peak = peak.max(ctx + p + s);
    Walk {
        curve,
        segments,
        peak,
    }
}

fn count_sub(hay: &str, needle: &str) -> usize {
    if needle.is_empty() {
        0
    } else {
        hay.matches(needle).count()
    }
}

/// The Dep closed form of the reference for a fixed budget M: `(M+P)(M−P−1)/2 + (O+P−M)·M`
/// (off by one against Σ min(P+i, M), and wrong when P+O < M).
pub fn dep_kvcache_reference(p: usize, o: usize, m: usize) -> f64 {
    let (p, o, m) = (p as f64, o as f64, m as f64);
    (m + p) * (m - p - 1.0) / 2.0 + (o + p - m) * m
}

/// Exact Dep for a fixed budget M: Σ_{i=1..O} min(P+i, M).
pub fn dep_kvcache(p: usize, o: usize, m: usize) -> f64 {
    // tokens with P+i < M: i < M-P
    let grow = m.saturating_sub(p).min(o); // i = 1..=grow have P+i <= M
    let g = grow as u128;
    let s = g * p as u128 + g * (g + 1) / 2 + (o - grow) as u128 * m as u128;
    s as f64
}

/// Vanilla Dep: P·O + O(O+1)/2 = Σ_{i=1..O}(P+i).
pub fn dep_vanilla(p: usize, o: usize) -> f64 {
    let (p, o) = (p as u128, o as u128);
    (p * o + o * (o + 1) / 2) as f64
}

fn need_tok<'t>(
    opts: &MetricOptions<'t>,
    idx: i64,
    what: &'static str,
    field: &'static str,
) -> Result<&'t TokenCounter> {
    opts.tokenizer
        .ok_or(EvalError::NeedTokenizer { idx, what, field })
}

/// Compute the metrics of one record.
pub fn sample_metrics(rec: &Record, opts: &MetricOptions<'_>) -> Result<SampleMetrics> {
    let idx = rec.idx;
    let c = opts.settings.n_token;
    let reference = opts.compat == Compat::Reference;
    // token ids of the output and the prompt length
    let ids: Vec<u32> = match (&rec.output_ids, reference) {
        (Some(ids), false) => ids.clone(),
        _ => need_tok(opts, idx, "output length", "output_ids")?.encode(&rec.output)?,
    };
    let p = match (rec.input_len, reference) {
        (Some(p), false) => p,
        _ => need_tok(opts, idx, "prompt length", "input_len")?
            .encode(&rec.prompt)?
            .len(),
    };
    let o = ids.len();
    let tok_id = |s: &str| -> Result<u32> {
        opts.tokenizer.and_then(|t| t.token_id(s)).ok_or_else(|| {
            EvalError::Tokenizer(format!(
                "token `{s}` is unknown (needed to find compression boundaries)"
            ))
        })
    };
    let anllm = opts.anchor == Anchor::Anllm;
    let method = opts.method;
    let token_level = method == Method::AnchorToken
        || (method == Method::AnchorThought && opts.settings.level == Level::Token);
    let (boundary, boundary_str, kept, forced) = match method {
        Method::Normal | Method::KvCache => (Boundary::None, None, 0, 0),
        _ if token_level => {
            let kept = if anllm { c } else { c + 1 };
            (Boundary::Every(opts.settings.step), None, kept, kept)
        }
        _ => {
            let name = if reference {
                opts.settings
                    .cache_tokens
                    .last()
                    .cloned()
                    .unwrap_or_default()
            } else if anllm {
                opts.settings
                    .cache_tokens
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "<|o_0|>".into())
            } else {
                SPLITTER.to_string()
            };
            let id = match (opts.boundary_id, reference) {
                (Some(id), false) => Ok(id),
                _ => tok_id(&name),
            };
            let exact = rec.dep.is_some() || rec.kv_trace.as_ref().is_some_and(|t| !t.is_empty());
            let b = match id {
                Ok(id) => Boundary::Id(id),
                // exact records: Dep/peak come from the trace, compressions from the record
                Err(e) if !reference && exact && rec.n_compress.is_some() => {
                    tracing::debug!("{e}; using the record's trace and n_compress");
                    Boundary::None
                }
                Err(e) => return Err(e),
            };
            let (kept, forced) = if anllm { (1, 0) } else { (c + 1, c + 1) };
            (b, Some(name), kept, forced)
        }
    };
    let w = walk(&ids, p, &boundary, kept, forced);
    if reference && !w.segments.is_empty() {
        return Err(EvalError::ReferenceCrash {
            idx,
            why: "a compression boundary was found and `Evaluator.compress_cnt` is never set (AttributeError)".into(),
        });
    }
    let n_boundaries = w.segments.len();
    // compressions
    let compress = match method {
        Method::Normal | Method::KvCache => 0,
        Method::AnchorToken if reference => o / opts.settings.step.max(1),
        _ if reference => count_sub(&rec.output, boundary_str.as_deref().unwrap_or_default()),
        _ => rec.n_compress.unwrap_or(n_boundaries),
    };
    // output length
    let output_len = match method {
        Method::AnchorThought if reference => o.saturating_sub(compress),
        Method::AnchorThought => {
            o.saturating_sub(n_boundaries.max(if matches!(boundary, Boundary::None) {
                compress
            } else {
                0
            }))
        }
        _ => o,
    };
    // peak
    let peak = match method {
        Method::KvCache => opts.cache_size as f64,
        Method::Normal if reference => (p + o) as f64,
        _ if reference => rec.max_token.map_or(w.peak, |m| m) as f64,
        _ => {
            if let Some(t) = rec.kv_trace.as_ref().filter(|t| !t.is_empty()) {
                t.iter().copied().max().unwrap_or(0) as f64
            } else if let Some(m) = rec.max_token {
                m as f64
            } else if method == Method::Normal {
                // the final stop token is never fed
                (p + o.saturating_sub(1)) as f64
            } else {
                walk(&ids[..o.saturating_sub(1)], p, &boundary, kept, forced).peak as f64
            }
        }
    };
    // dep
    let (dep, exact_dep) = match (rec.dep, &rec.kv_trace, reference) {
        (Some(d), _, false) => (d, true),
        (None, Some(t), false) if !t.is_empty() => (t.iter().map(|&x| x as f64).sum(), true),
        _ => (
            match method {
                Method::Normal => dep_vanilla(p, o),
                Method::KvCache if reference => dep_kvcache_reference(p, o, opts.cache_size),
                Method::KvCache => dep_kvcache(p, o, opts.cache_size),
                _ => w.curve.iter().map(|&x| x as f64).sum(),
            },
            false,
        ),
    };
    Ok(SampleMetrics {
        idx,
        time_s: rec.infer_time,
        prompt_len: p,
        output_len,
        peak,
        dep,
        compress,
        segments: w.segments,
        exact_dep,
    })
}

/// KV length seen by each generated token of a record (the curve whose sum is Dep): the record's
/// `kv_trace` when present, else the method's formula over the output ids.
pub fn kv_curve(rec: &Record, opts: &MetricOptions<'_>) -> Result<Vec<usize>> {
    if let Some(t) = rec.kv_trace.as_ref().filter(|t| !t.is_empty()) {
        return Ok(t.clone());
    }
    let sm_opts = MetricOptions {
        compat: Compat::Intended,
        ..opts.clone()
    };
    let ids: Vec<u32> = match &rec.output_ids {
        Some(ids) => ids.clone(),
        None => need_tok(&sm_opts, rec.idx, "KV curve", "output_ids")?.encode(&rec.output)?,
    };
    let p = match rec.input_len {
        Some(p) => p,
        None => need_tok(&sm_opts, rec.idx, "KV curve", "input_len")?
            .encode(&rec.prompt)?
            .len(),
    };
    let c = opts.settings.n_token;
    Ok(match opts.method {
        Method::Normal => (1..=ids.len()).map(|i| p + i).collect(),
        Method::KvCache => (1..=ids.len())
            .map(|i| (p + i).min(opts.cache_size))
            .collect(),
        m => {
            let anllm = opts.anchor == Anchor::Anllm;
            let token_level = m == Method::AnchorToken || opts.settings.level == Level::Token;
            let (b, kept, forced) = if token_level {
                let k = if anllm { c } else { c + 1 };
                (Boundary::Every(opts.settings.step), k, k)
            } else {
                let name = if anllm {
                    opts.settings
                        .cache_tokens
                        .first()
                        .cloned()
                        .unwrap_or_default()
                } else {
                    SPLITTER.into()
                };
                let id = opts
                    .boundary_id
                    .or_else(|| opts.tokenizer.and_then(|t| t.token_id(&name)))
                    .ok_or_else(|| {
                        EvalError::Tokenizer(format!(
                            "token `{name}` is unknown (needed for the KV curve)"
                        ))
                    })?;
                if anllm {
                    (Boundary::Id(id), 1, 0)
                } else {
                    (Boundary::Id(id), c + 1, c + 1)
                }
            };
            walk(&ids, p, &b, kept, forced).curve
        }
    })
}

/// One histogram bin `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistBin {
    /// Inclusive lower edge.
    pub lo: usize,
    /// Exclusive upper edge.
    pub hi: usize,
    /// Number of values in the bin.
    pub count: usize,
}

/// Power-of-two histogram of lengths: bins `[1,2), [2,4), [4,8), ...` (empty trailing bins dropped;
/// 0 goes to `[0,1)`).
pub fn pow2_histogram(values: impl IntoIterator<Item = usize>) -> Vec<HistBin> {
    let mut counts: Vec<usize> = Vec::new();
    for v in values {
        let b = if v == 0 {
            0
        } else {
            (usize::BITS - v.leading_zeros()) as usize
        };
        if counts.len() <= b {
            counts.resize(b + 1, 0);
        }
        counts[b] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(b, count)| {
            let (lo, hi) = if b == 0 {
                (0, 1)
            } else {
                (1 << (b - 1), 1 << b)
            };
            HistBin { lo, hi, count }
        })
        .collect()
}

/// The metrics of one method on one dataset (the `--json` output).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of judged samples.
    pub n: usize,
    /// Number judged correct.
    pub correct: usize,
    /// Accuracy in percent, rounded to 2 decimals (as the reference prints it).
    pub acc: f64,
    /// Σ per-sample seconds / 3600 (GPU-hours at batch size 1, the paper's Time).
    pub time_h: f64,
    /// Mean seconds per sample.
    pub mean_time_s: f64,
    /// Mean peak KV length (tokens).
    pub peak: f64,
    /// Mean Dep per sample (the paper shows it in millions).
    pub dep: f64,
    /// Mean generated tokens.
    pub output_len: f64,
    /// Mean compressions per sample.
    pub compress: f64,
    /// Mean prompt tokens.
    #[serde(default)]
    pub prompt_len: f64,
    /// Mean prompt + output tokens.
    #[serde(default)]
    pub total_len: f64,
    /// Mean thought (segment) length, 0 without compressions.
    #[serde(default)]
    pub mean_thought_len: f64,
    /// Histogram of thought lengths.
    #[serde(default)]
    pub thought_len_hist: Vec<HistBin>,
    /// Samples whose Dep came from the record's trace.
    #[serde(default)]
    pub n_exact_dep: usize,
    /// The method.
    #[serde(default)]
    pub method: Option<Method>,
    /// The dataset, when known.
    #[serde(default)]
    pub dataset: Option<crate::Dataset>,
    /// Idx without a record (shard merge).
    #[serde(default)]
    pub missing: Vec<i64>,
    /// Idx found in several shards.
    #[serde(default)]
    pub duplicates: Vec<i64>,
    /// KV length over generation of one chosen sample (for plots): (idx, lengths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_curve: Option<(i64, Vec<usize>)>,
}

impl Summary {
    /// Aggregate per-sample metrics; `correct[i]` is the verdict of `samples[i]`.
    pub fn from_samples(
        method: Method,
        samples: &[SampleMetrics],
        correct: &[bool],
    ) -> Result<Self> {
        if samples.len() != correct.len() {
            return Err(EvalError::Invalid(format!(
                "{} samples but {} verdicts",
                samples.len(),
                correct.len()
            )));
        }
        let n = samples.len();
        let k = correct.iter().filter(|&&c| c).count();
        let mean = |f: &dyn Fn(&SampleMetrics) -> f64| {
            if n == 0 {
                0.0
            } else {
                samples.iter().map(f).sum::<f64>() / n as f64
            }
        };
        let total_time: f64 = samples.iter().map(|s| s.time_s).sum();
        let segs: Vec<usize> = samples
            .iter()
            .flat_map(|s| s.segments.iter().copied())
            .collect();
        Ok(Self {
            n,
            correct: k,
            acc: if n == 0 {
                0.0
            } else {
                round2(k as f64 / n as f64 * 100.0)
            },
            time_h: total_time / 3600.0,
            mean_time_s: if n == 0 { 0.0 } else { total_time / n as f64 },
            peak: mean(&|s| s.peak),
            dep: mean(&|s| s.dep),
            output_len: mean(&|s| s.output_len as f64),
            compress: mean(&|s| s.compress as f64),
            prompt_len: mean(&|s| s.prompt_len as f64),
            total_len: mean(&|s| (s.prompt_len + s.output_len) as f64),
            mean_thought_len: if segs.is_empty() {
                0.0
            } else {
                segs.iter().sum::<usize>() as f64 / segs.len() as f64
            },
            thought_len_hist: pow2_histogram(segs),
            n_exact_dep: samples.iter().filter(|s| s.exact_dep).count(),
            method: Some(method),
            ..Default::default()
        })
    }
}

/// Round to 2 decimals like Python's `round(x, 2)` (up to binary representation).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Metrics of several records of one method. `correct[i]` is the judged verdict of `records[i]` (use
/// [`crate::judge_records`] or the records' `acc_state`).
///
/// ```
/// use lt_eval::{summarize, CompressSettings, Method, MetricOptions, Record};
/// let rec = Record { idx: 0, output_ids: Some(vec![5; 4]), input_len: Some(10), infer_time: 1.8, ..Default::default() };
/// let opts = MetricOptions::new(Method::Normal, CompressSettings::sentence(9));
/// let s = summarize(&[rec], &opts, &[true]).unwrap();
/// assert_eq!(s.dep, 10.0 * 4.0 + 4.0 * 5.0 / 2.0); // P·O + O(O+1)/2
/// assert_eq!((s.acc, s.peak), (100.0, 13.0)); // P + O - 1: the final stop token is never fed
/// ```
pub fn summarize(
    records: &[Record],
    opts: &MetricOptions<'_>,
    correct: &[bool],
) -> Result<Summary> {
    let samples = records
        .iter()
        .map(|r| sample_metrics(r, opts))
        .collect::<Result<Vec<_>>>()?;
    Summary::from_samples(opts.method, &samples, correct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        for (p, o) in [(0, 0), (5, 1), (17, 40), (300, 1000)] {
            let s: usize = (1..=o).map(|i| p + i).sum();
            assert_eq!(dep_vanilla(p, o), s as f64);
            for m in [1, 10, 20, 57, 400, 2000] {
                let s: usize = (1..=o).map(|i| (p + i).min(m)).sum();
                assert_eq!(dep_kvcache(p, o, m), s as f64, "p {p} o {o} m {m}");
            }
        }
        // the reference's form: off by one when the budget is reached, negative-ish when it is not
        assert_eq!(
            dep_kvcache_reference(10, 100, 50),
            60.0 * 39.0 / 2.0 + 60.0 * 50.0
        );
        assert_eq!(
            dep_kvcache(10, 100, 50),
            (11..=50).sum::<usize>() as f64 + 60.0 * 50.0
        );
    }

    #[test]
    fn histogram() {
        let h = pow2_histogram([0, 1, 2, 3, 4, 9]);
        let c: Vec<_> = h.iter().map(|b| (b.lo, b.hi, b.count)).collect();
        assert_eq!(
            c,
            vec![(0, 1, 1), (1, 2, 1), (2, 4, 2), (4, 8, 1), (8, 16, 1)]
        );
    }
}
