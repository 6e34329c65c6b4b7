//! Hand-computed metrics on small synthetic record files.
use lt_eval::*;

const T: u32 = 5; // ordinary token
const S: u32 = 1; // boundary (<|splitter|> / <|o_0|>)
const E: u32 = 9; // final stop token

fn rec(idx: i64, p: usize, ids: Vec<u32>, time: f64) -> Record {
    Record {
        idx,
        output: String::new(),
        input_len: Some(p),
        output_ids: Some(ids),
        infer_time: time,
        ..Default::default()
    }
}

fn opts(method: Method, c: usize, anchor: Anchor) -> MetricOptions<'static> {
    let mut o = MetricOptions::new(method, CompressSettings::sentence(c));
    o.anchor = anchor;
    o.boundary_id = Some(S);
    o
}

#[test]
fn thought_level_lightthinker() {
    // thoughts of 3 and 2 tokens (splitter included), then 2 tokens + EOS; P = 10, C = 2
    let r = rec(0, 10, vec![T, T, S, T, S, T, T, E], 1.0);
    let m = sample_metrics(&r, &opts(Method::AnchorThought, 2, Anchor::LightThinker)).unwrap();
    assert_eq!(m.dep, (11 + 12 + 13 + 14 + 15 + 17 + 18 + 19) as f64);
    assert_eq!(m.peak, 18.0);
    assert_eq!(
        (m.compress, m.output_len, m.segments.clone()),
        (2, 6, vec![3, 2])
    );
    // the spec's executed trace: p=6, C=2, thoughts 3/2/1 (+S), then 2 tokens and EOS -> max_token 17
    let r = rec(0, 6, vec![T, T, T, S, T, T, S, T, S, T, T, E], 1.0);
    let m = sample_metrics(&r, &opts(Method::AnchorThought, 2, Anchor::LightThinker)).unwrap();
    assert_eq!(m.peak, 17.0);
    assert_eq!(m.compress, 3);
}

#[test]
fn thought_level_anllm() {
    // the spec's AnLLM trace: p=6, sentences 3/2/1 each closed by the anchor, then 2 tokens -> max_token 11
    let r = rec(0, 6, vec![T, T, T, S, T, T, S, T, S, T, T, E], 1.0);
    let m = sample_metrics(&r, &opts(Method::AnchorThought, 1, Anchor::Anllm)).unwrap();
    assert_eq!(m.peak, 11.0);
    // Dep: P + segment + (number of anchors kept)
    let dep: usize = [7, 8, 9, 10].iter().sum::<usize>()
        + [8, 9, 10].iter().sum::<usize>()
        + [9, 10].iter().sum::<usize>()
        + [10, 11, 12].iter().sum::<usize>();
    assert_eq!(m.dep, dep as f64);
    assert_eq!(m.output_len, 9);
}

#[test]
fn token_level() {
    let mut o = opts(Method::AnchorToken, 2, Anchor::LightThinker);
    o.settings.level = Level::Token;
    o.settings.step = 3;
    let r = rec(0, 5, vec![T; 7], 1.0);
    let m = sample_metrics(&r, &o).unwrap();
    assert_eq!(m.dep, (6 + 7 + 8 + 9 + 10 + 11 + 12) as f64);
    assert_eq!(
        (m.compress, m.segments.clone(), m.output_len),
        (2, vec![3, 3], 7)
    );
}

#[test]
fn vanilla_and_kvcache_closed_forms() {
    let r = rec(0, 10, vec![T; 20], 1.0);
    let m = sample_metrics(&r, &opts(Method::Normal, 9, Anchor::LightThinker)).unwrap();
    assert_eq!(m.dep, (10 * 20 + 20 * 21 / 2) as f64); // P·O + O(O+1)/2
    let mut o = opts(Method::KvCache, 9, Anchor::LightThinker);
    o.cache_size = 25;
    let m = sample_metrics(&r, &o).unwrap();
    assert_eq!(m.dep, ((11..=25).sum::<usize>() + 5 * 25) as f64); // Σ min(P+i, M)
    assert_eq!(m.peak, 25.0);
    o.compat = Compat::Reference; // the reference closed form, off by one
    o.tokenizer = None;
    // reference mode re-tokenizes: without a tokenizer it is a typed error
    assert!(matches!(
        sample_metrics(&r, &o),
        Err(EvalError::NeedTokenizer { .. })
    ));
}

#[test]
fn exact_fields_win_over_formulas() {
    let mut r = rec(0, 10, vec![T, S, T, E], 2.0);
    r.dep = Some(123.0);
    r.max_token = Some(77);
    r.n_compress = Some(5);
    let m = sample_metrics(&r, &opts(Method::AnchorThought, 2, Anchor::LightThinker)).unwrap();
    assert_eq!((m.dep, m.peak, m.compress), (123.0, 77.0, 5));
    assert!(m.exact_dep);
    r.dep = None;
    r.kv_trace = Some(vec![11, 12, 10]);
    let m = sample_metrics(&r, &opts(Method::AnchorThought, 2, Anchor::LightThinker)).unwrap();
    assert_eq!((m.dep, m.peak), (33.0, 12.0));
}

#[test]
fn shards_summary_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let line = |idx: i64, t: f64| {
        serde_json::json!({"idx": idx, "model_answer": "x", "output": format!("so \\boxed{{{idx}}}"), "prompt": "p",
            "input_len": 10, "output_ids": [5, 5, 5, 5], "infer_time": t, "max_token": 13})
        .to_string()
    };
    let a = dir.path().join("1-2.jsonl");
    let b = dir.path().join("2-2.jsonl");
    std::fs::write(&a, format!("{}\n{}\n", line(0, 1800.0), line(1, 1800.0))).unwrap();
    std::fs::write(&b, format!("{}\n\n{}\n", line(1, 5.0), line(3, 3600.0))).unwrap();
    let merged = read_shards(&[&a, &b], Some(4)).unwrap();
    assert_eq!(
        (merged.missing.clone(), merged.duplicates.clone()),
        (vec![2], vec![1])
    );
    let refs: Vec<RefItem> = (0..4)
        .map(|i| RefItem::plain(i, "q".into(), (i % 2).to_string()))
        .collect();
    let mut judge = Judge::new(Dataset::Gsm8k, refs, JudgeMode::Strict);
    let correct = judge_records(&mut judge, &merged.records, Compat::Intended, None).unwrap();
    assert_eq!(correct, vec![true, true, false]); // answers 0, 1, 3 vs gold 0, 1, 1
    let s = summarize(
        &merged.records,
        &opts(Method::Normal, 9, Anchor::LightThinker),
        &correct,
    )
    .unwrap();
    assert_eq!((s.n, s.correct, s.acc), (3, 2, 66.67));
    assert!((s.time_h - 2.0).abs() < 1e-12 && (s.mean_time_s - 2400.0).abs() < 1e-9);
    assert_eq!((s.peak, s.dep, s.output_len), (13.0, 50.0, 4.0));
    // a bad line is reported with its file and line
    std::fs::write(&b, "{\"idx\": 1}\n").unwrap();
    let e = read_shards(&[&b], None).unwrap_err().to_string();
    assert!(e.contains("2-2.jsonl:1") && e.contains("output"), "{e}");
}
