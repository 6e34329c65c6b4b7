//! Parity with the golden records of the reference driver and the numbers of the reference's
//! `eval_file.py` (recomputed by `scripts/lt_eval_fixtures.py` with the HF tokenizer).
use std::path::{Path, PathBuf};

use lt_eval::*;
use serde_json::Value;

fn fx(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn settings() -> CompressSettings {
    CompressSettings::from_file(fx("lt_default/compress_config.json")).unwrap()
}

fn tok() -> TokenCounter {
    TokenCounter::from_file(fx("tokenizer"), &settings()).unwrap()
}

fn expected(run: &str, key: &str) -> Value {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fx(&format!("{run}/expected.json"))).unwrap(),
    )
    .unwrap();
    v[key].clone()
}

fn extras(run: &str) -> Vec<Value> {
    std::fs::read_to_string(fx(&format!("{run}/extras.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records with the lt-infer fields (`output_ids`, `kv_trace`, `n_compress`) filled from the extras.
fn records_with_ids(run: &str, trace: bool) -> Vec<Record> {
    let mut recs = read_records(fx(&format!("{run}/records.jsonl"))).unwrap();
    for (r, e) in recs.iter_mut().zip(extras(run)) {
        assert_eq!(r.idx, e["idx"].as_i64().unwrap());
        r.output_ids = Some(serde_json::from_value(e["output_ids"].clone()).unwrap());
        r.n_compress = Some(e["n_compressions"].as_u64().unwrap() as usize);
        if trace {
            r.kv_trace = Some(serde_json::from_value(e["kv_trace"].clone()).unwrap());
        }
    }
    recs
}

fn check(samples: &[SampleMetrics], s: &Summary, exp: &Value) {
    let rows = exp["samples"].as_array().unwrap();
    assert_eq!(samples.len(), rows.len());
    for (m, e) in samples.iter().zip(rows) {
        assert_eq!(m.idx, e["idx"].as_i64().unwrap());
        assert_eq!(
            m.prompt_len as f64,
            e["prompt_len"].as_f64().unwrap(),
            "idx {}",
            m.idx
        );
        assert_eq!(m.peak, e["peak"].as_f64().unwrap(), "peak idx {}", m.idx);
        assert_eq!(m.dep, e["dep"].as_f64().unwrap(), "dep idx {}", m.idx);
        assert_eq!(
            m.output_len as f64,
            e["output_len"].as_f64().unwrap(),
            "output_len idx {}",
            m.idx
        );
        assert_eq!(
            m.compress as f64,
            e["compress"].as_f64().unwrap(),
            "compress idx {}",
            m.idx
        );
        if let Some(segs) = e.get("segments") {
            let segs: Vec<usize> = serde_json::from_value(segs.clone()).unwrap();
            assert_eq!(m.segments, segs);
        }
    }
    for k in [
        "n",
        "correct",
        "acc",
        "peak",
        "dep",
        "output_len",
        "compress",
        "prompt_len",
    ] {
        let got = serde_json::to_value(s).unwrap()[k].as_f64().unwrap();
        assert!(
            (got - exp[k].as_f64().unwrap()).abs() < 1e-9,
            "{k}: {got} vs {}",
            exp[k]
        );
    }
    assert!((s.time_h - exp["time_h"].as_f64().unwrap()).abs() < 1e-12);
}

fn run(
    records: &[Record],
    opts: &MetricOptions<'_>,
    dataset_file: &Path,
) -> (Vec<SampleMetrics>, Summary) {
    let refs = build_references(dataset_file, Dataset::Gsm8k).unwrap();
    let mut judge = Judge::new(Dataset::Gsm8k, refs, JudgeMode::Strict);
    let correct = judge_records(&mut judge, records, opts.compat, None).unwrap();
    let samples: Vec<_> = records
        .iter()
        .map(|r| sample_metrics(r, opts).unwrap())
        .collect();
    let s = summarize(records, opts, &correct).unwrap();
    (samples, s)
}

#[test]
fn reference_formula_mode_reproduces_eval_file() {
    let t = tok();
    // vanilla records, method normal
    let recs = read_records(fx("vanilla/records.jsonl")).unwrap();
    let mut o = MetricOptions::new(Method::Normal, settings());
    o.tokenizer = Some(&t);
    o.compat = Compat::Reference;
    let (m, s) = run(&recs, &o, &fx("vanilla/gsm8k.json"));
    check(&m, &s, &expected("vanilla", "normal"));
    // kvcache with the reference's closed form
    o.method = Method::KvCache;
    o.cache_size = 300;
    let (m, s) = run(&recs, &o, &fx("vanilla/gsm8k.json"));
    check(&m, &s, &expected("vanilla", "kvcache_300"));
    // LightThinker records evaluated as released: the "splitter" <|o_1|> never occurs
    let recs = read_records(fx("lt_default/records.jsonl")).unwrap();
    o.method = Method::AnchorThought;
    let (m, s) = run(&recs, &o, &fx("lt_default/gsm8k.json"));
    check(&m, &s, &expected("lt_default", "anchor_thought_reference"));
    assert_eq!(s.compress, 0.0);
}

#[test]
fn reference_mode_reports_the_reference_crash() {
    let t = tok();
    let recs = read_records(fx("lt_default/records.jsonl")).unwrap();
    let mut o = MetricOptions::new(Method::AnchorToken, settings());
    o.tokenizer = Some(&t);
    o.compat = Compat::Reference;
    let e = sample_metrics(&recs[0], &o).unwrap_err();
    assert!(matches!(e, EvalError::ReferenceCrash { idx: 0, .. }), "{e}");
}

#[test]
fn intended_formula_mode_from_text() {
    let t = tok();
    let recs = read_records(fx("lt_default/records.jsonl")).unwrap();
    let mut o = MetricOptions::new(Method::AnchorThought, settings());
    o.tokenizer = Some(&t);
    let (m, s) = run(&recs, &o, &fx("lt_default/gsm8k.json"));
    check(&m, &s, &expected("lt_default", "anchor_thought_intended"));
    // the compression count found in the text equals the driver's
    for (m, e) in m.iter().zip(extras("lt_default")) {
        assert_eq!(m.compress as u64, e["n_compressions"].as_u64().unwrap());
        assert!(!m.exact_dep);
    }
}

#[test]
fn formula_walk_matches_the_real_cache_trace() {
    for (run_name, method) in [
        ("lt_default", Method::AnchorThought),
        ("vanilla", Method::Normal),
    ] {
        let t = tok();
        let exact = records_with_ids(run_name, true);
        let formula = records_with_ids(run_name, false);
        let mut o = MetricOptions::new(method, settings());
        o.tokenizer = Some(&t);
        for (re, rf) in exact.iter().zip(&formula) {
            let me = sample_metrics(re, &o).unwrap();
            let trace = re.kv_trace.as_ref().unwrap();
            assert!(me.exact_dep);
            assert_eq!(me.dep, trace.iter().sum::<usize>() as f64);
            let mf = sample_metrics(rf, &o).unwrap();
            assert!(!mf.exact_dep);
            // the formula also charges the final (never fed) stop token: P + current segment + kept
            let last = kv_curve(rf, &o).unwrap();
            assert_eq!(
                &last[..trace.len()],
                &trace[..],
                "{run_name} idx {}",
                re.idx
            );
            assert_eq!(mf.dep, me.dep + *last.last().unwrap() as f64);
            // the peak simulation (record without max_token) reproduces the driver's max_token
            let mut nomax = rf.clone();
            nomax.max_token = None;
            let ms = sample_metrics(&nomax, &o).unwrap();
            assert_eq!(
                Some(ms.peak as usize),
                re.max_token,
                "{run_name} idx {}",
                re.idx
            );
            assert_eq!(me.compress, re.n_compress.unwrap());
            assert_eq!(
                me.output_len,
                re.output_ids.as_ref().unwrap().len() - me.compress
            );
        }
    }
}

#[test]
fn vanilla_closed_form_on_golden_ids() {
    let recs = records_with_ids("vanilla", false);
    let o = MetricOptions::new(Method::Normal, settings()); // no tokenizer needed
    for r in &recs {
        let m = sample_metrics(r, &o).unwrap();
        let (p, n) = (r.input_len.unwrap(), r.output_ids.as_ref().unwrap().len());
        assert_eq!(m.dep, (p * n + n * (n + 1) / 2) as f64);
        assert_eq!(m.peak as usize, r.max_token.unwrap()); // recorded max_token = P + O - 1
    }
    // the reference numbers for normal equal ours on recorded ids (this tokenizer round-trips)
    let s = summarize(&recs, &o, &vec![false; recs.len()]).unwrap();
    assert_eq!(
        s.dep,
        expected("vanilla", "normal")["dep"].as_f64().unwrap()
    );
}

#[test]
fn golden_answers_are_all_extraction_failures() {
    let recs = read_records(fx("lt_default/records.jsonl")).unwrap();
    for r in &recs {
        assert_eq!(extract_answer(&r.output), NO_ANSWER);
        assert_eq!(r.model_answer.as_deref(), Some(NO_ANSWER));
    }
    let refs = build_references(fx("lt_default/gsm8k.json"), Dataset::Gsm8k).unwrap();
    assert_eq!(refs.len(), 3);
    assert_eq!(refs[2].alias, vec!["38", "\\text{38}"]);
}

#[test]
fn missing_tokenizer_is_a_typed_error() {
    let recs = read_records(fx("lt_default/records.jsonl")).unwrap();
    let o = MetricOptions::new(Method::AnchorThought, settings());
    let e = sample_metrics(&recs[0], &o).unwrap_err();
    assert!(matches!(e, EvalError::NeedTokenizer { .. }), "{e}");
}
