//! `lt-eval`: judging LightThinker inference records and computing the paper's metrics.
//!
//! * [`extract_answer`]: the last balanced `\boxed{}` (or `"error"`).
//! * [`build_references`]: alias / error lists per question from `data/eval/<dataset>.json`, as the
//!   reference's `evaluation/init.py` builds them.
//! * [`Judge`]: the reference's strict cascade, an opt-in normaliser, and interactive judging whose
//!   decisions are saved and reused.
//! * [`sample_metrics`] / [`summarize`]: Acc, Time, Peak, Dep, output length, compressions — exact from
//!   the record's trace when present, else the reference's formulas with the intended boundary token.
//! * [`report_block`], [`csv_line`], [`table1_markdown`], and SVG/PNG plots in [`plot`].
//!
//! ```
//! use lt_eval::{summarize, CompressSettings, Method, MetricOptions, Record};
//! let rec = Record { idx: 0, output_ids: Some(vec![7, 7, 7]), input_len: Some(5), infer_time: 3.6,
//!                    dep: Some(20.0), max_token: Some(8), n_compress: Some(0),
//!                    ..Default::default() };
//! let s = summarize(&[rec], &MetricOptions::new(Method::AnchorThought, CompressSettings::sentence(9)), &[false]).unwrap();
//! assert_eq!((s.n, s.acc, s.dep, s.peak), (1, 0.0, 20.0, 8.0));
//! assert!((s.time_h - 0.001).abs() < 1e-12);
//! ```
#![warn(missing_docs)]

mod error;
mod extract;
mod judge;
mod metrics;
pub mod plot;
mod record;
mod reference;
mod report;
mod tokens;

use std::io::{BufRead, Write};
use std::path::Path;

pub use error::{EvalError, Result};
pub use extract::{boxed_contents, extract_answer, NO_ANSWER};
pub use judge::{
    canonical, judge_normalized, judge_strict, option_letter, Decisions, Judge, JudgeMode,
    Judgments, Verdict,
};
pub use metrics::{
    dep_kvcache, dep_kvcache_reference, dep_vanilla, kv_curve, pow2_histogram, round2,
    sample_metrics, summarize, Anchor, Compat, HistBin, Method, MetricOptions, SampleMetrics,
    Summary,
};
pub use record::{merge_shards, read_records, read_shards, Merged, Record};
pub use reference::{build_references, build_references_from_str, Dataset, RefItem};
pub use report::{csv_line, report_block, table1_cell, table1_markdown};
pub use tokens::{CompressSettings, Level, TokenCounter, BASE_SPECIALS, SPLITTER};

/// The answer to judge for a record: re-extracted from `output` (intended), or the record's stored
/// `model_answer` (reference-compatible; falls back to extraction when absent).
pub fn answer_of(rec: &Record, compat: Compat) -> String {
    match (compat, &rec.model_answer) {
        (Compat::Reference, Some(a)) => a.clone(),
        _ => extract_answer(&rec.output),
    }
}

/// Judge every record; `human` enables interactive judging of undecided answers.
pub fn judge_records(
    judge: &mut Judge,
    records: &[Record],
    compat: Compat,
    mut human: Option<(&mut dyn BufRead, &mut dyn Write)>,
) -> Result<Vec<bool>> {
    records
        .iter()
        .map(|r| {
            let ans = answer_of(r, compat);
            let h = human
                .as_mut()
                .map(|(i, o)| (&mut **i as &mut dyn BufRead, &mut **o as &mut dyn Write));
            judge.judge(r.idx, &ans, (&r.output, &r.prompt), h)
        })
        .collect()
}

/// Write a file atomically: a temporary file in the same directory, synced, then a rename; the
/// temporary file is removed when that fails. (`lt-data` has the same helper; this crate depends
/// on no other `lt-*` crate.)
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EvalError::io(path, e)
    })
}
