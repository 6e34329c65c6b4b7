//! Bit-exact parity with the reference pipeline goldens (25 samples × 48 settings, real Qwen2.5 vocabulary).
//!
//! Needs the converted Qwen2.5 tokenizer at `.cache/qwen2.5-tokenizer/tokenizer.json` (made by
//! `scripts/setup.sh`, which `make test` runs).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lt_data::{
    BuildOptions, Builder, BuiltRow, CompressConfig, LtTokenizer, Mode, TrainSample, IGNORE,
};
use lt_mask::{BlockKind, MaskFlags};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base_tokenizer() -> &'static LtTokenizer {
    static TOK: OnceLock<LtTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.cache/qwen2.5-tokenizer/tokenizer.json");
        assert!(
            p.is_file(),
            "{} is missing: run `bash scripts/setup.sh` (or `make setup`) first",
            p.display()
        );
        LtTokenizer::from_file(&p).expect("load the Qwen2.5 tokenizer")
    })
}

fn samples() -> &'static HashMap<String, TrainSample> {
    static S: OnceLock<HashMap<String, TrainSample>> = OnceLock::new();
    S.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("samples.jsonl")).unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let id = v["sample_id"].as_str().unwrap().to_string();
                (id, TrainSample::from_value(v["sample"].clone()).unwrap())
            })
            .collect()
    })
}

struct Setting {
    name: String,
    header: Value,
    records: Vec<Value>,
}

fn settings() -> &'static Vec<Setting> {
    static S: OnceLock<Vec<Setting>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fixtures().join("pipeline");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 48, "expected the 48 public pipeline settings");
        names
            .into_iter()
            .map(|p| {
                let lines = lt_data::io::read_lines(&p).unwrap();
                let mut vals = lines
                    .into_iter()
                    .map(|(_, l)| serde_json::from_str::<Value>(&l).unwrap());
                let header = vals.next().unwrap();
                Setting {
                    name: p.file_name().unwrap().to_string_lossy().into_owned(),
                    header,
                    records: vals.collect(),
                }
            })
            .collect()
    })
}

fn options(s: &Value) -> BuildOptions {
    let b = |k: &str| s[k].as_bool().unwrap();
    BuildOptions {
        mode: s["mode"].as_str().unwrap().parse().unwrap(),
        hybrid: b("hybrid"),
        max_length: s["max_length"].as_u64().unwrap() as usize,
        train_on_input: b("train_on_input"),
        flags: MaskFlags {
            see_current: b("see_current"),
            bi_directional: b("bi_directional"),
            diagonal: b("diagonal"),
            exclude_continue: b("exclude_continue"),
            prefill_compress: b("prefill_compress"),
        },
        output_compress_instruction: s["output_compress_instruction"]
            .as_str()
            .unwrap()
            .to_string(),
        bos_token: s["bos_token"].as_str().unwrap().to_string(),
        eos_token: s["eos_token"].as_str().unwrap().to_string(),
    }
}

/// Tokenizer with the config's tokens added, checked against the header's added list.
fn tokenizer_for(cfg_name: &str, header: &Value) -> (CompressConfig, LtTokenizer) {
    let cfg =
        CompressConfig::from_file(fixtures().join(format!("configs/{cfg_name}.json"))).unwrap();
    let mut tok = base_tokenizer().clone();
    let added = tok.add_special_tokens(&cfg);
    let want: Vec<(String, u32)> = header["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let got: Vec<(String, u32)> = added.into_iter().map(|(t, i, _)| (t, i)).collect();
    assert_eq!(got, want, "added tokens for config {cfg_name}");
    assert_eq!(tok.len() as u64, header["tokenizer_len"].as_u64().unwrap());
    (cfg, tok)
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn padded(row: &BuiltRow, p: usize, pad: i64) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    lt_data::pad_row(row, p, pad).unwrap()
}

/// Visit every (setting, record, built row) triple; `f` returns mismatch descriptions.
fn check_all(mut f: impl FnMut(&Setting, &BuildOptions, &Value, &BuiltRow) -> Vec<String>) {
    let samples = samples();
    let mut failures = Vec::new();
    let mut n_rows = 0;
    let mut tok_cache: HashMap<String, (CompressConfig, LtTokenizer)> = HashMap::new();
    for st in settings() {
        let setting = &st.header["setting"];
        let cfg_name = setting["config_name"].as_str().unwrap().to_string();
        let (cfg, tok) = tok_cache
            .entry(cfg_name.clone())
            .or_insert_with(|| tokenizer_for(&cfg_name, &st.header));
        let opts = options(setting);
        let builder = Builder::new(cfg, tok, opts.clone()).unwrap();
        // Group records per sample (hybrid: two consecutive records).
        let mut i = 0;
        while i < st.records.len() {
            let sid = st.records[i]["sample_id"].as_str().unwrap();
            let group: Vec<&Value> = st.records[i..]
                .iter()
                .take_while(|r| r["sample_id"] == sid)
                .collect();
            i += group.len();
            let built = builder.build(&samples[sid]);
            let expect_error = !group[0]["error"].is_null();
            match built {
                Err(e) => {
                    if !expect_error {
                        failures.push(format!("{} {sid}: unexpected error {e}", st.name));
                    }
                }
                Ok(rows) => {
                    if expect_error {
                        failures.push(format!(
                            "{} {sid}: expected an error, built {} rows",
                            st.name,
                            rows.len()
                        ));
                        continue;
                    }
                    if rows.len() != group.len() {
                        failures.push(format!(
                            "{} {sid}: {} rows vs {} records",
                            st.name,
                            rows.len(),
                            group.len()
                        ));
                        continue;
                    }
                    for (row, rec) in rows.iter().zip(group) {
                        n_rows += 1;
                        for m in f(st, &opts, rec, row) {
                            failures
                                .push(format!("{} {sid} row {:?}: {m}", st.name, row.hybrid_row));
                        }
                    }
                }
            }
        }
    }
    assert!(n_rows > 1000, "too few rows checked: {n_rows}");
    assert!(
        failures.is_empty(),
        "{} mismatches (of {n_rows} rows), first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn pipeline_ids_labels_positions_layout_match_goldens() {
    check_all(|st, opts, rec, row| {
        let mut bad = Vec::new();
        let p = opts.max_length;
        let eos = st.header["eos"][1].as_i64().unwrap();
        let (ids, labels, pos) = padded(row, p, eos);
        if ids != ints(&rec["input_ids"]) {
            bad.push("input_ids".to_string());
        }
        if labels != ints(&rec["labels"]) {
            bad.push("labels".to_string());
        }
        if rec["hybrid_row"].as_u64().map(|x| x as usize) != row.hybrid_row {
            bad.push("hybrid_row".to_string());
        }
        let aux = &rec["aux"];
        if aux["unpadded_len"].as_u64() != Some(row.len() as u64) {
            bad.push(format!(
                "unpadded_len {} vs {}",
                aux["unpadded_len"],
                row.len()
            ));
        }
        if aux["n_labelled"].as_u64() != Some(row.n_labelled() as u64) {
            bad.push("n_labelled".to_string());
        }
        if opts.mode == Mode::Normal {
            if !rec["position_ids"].is_null() || row.position_ids.is_some() || row.layout.is_some()
            {
                bad.push("normal mode has positions/layout".to_string());
            }
            return bad;
        }
        if pos != ints(&rec["position_ids"]) {
            bad.push("position_ids".to_string());
        }
        let layout = row.layout.as_ref().unwrap();
        let locate: Vec<Vec<i64>> = layout
            .blocks
            .iter()
            .map(|b| {
                vec![
                    b.start as i64,
                    b.end as i64,
                    b.l_inst as i64,
                    b.n_comp as i64,
                    b.n_continue as i64,
                ]
            })
            .collect();
        let want: Vec<Vec<i64>> = aux["locate_index"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect();
        if locate != want {
            bad.push(format!("locate_index {locate:?} vs {want:?}"));
        }
        let kinds: Vec<&str> = layout
            .blocks
            .iter()
            .map(|b| match b.kind {
                BlockKind::Prompt => "compressed-prompt",
                BlockKind::Output => "compressed-output",
            })
            .collect();
        let want_kinds: Vec<&str> = aux["locate_indicator"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        if kinds != want_kinds {
            bad.push("locate_indicator".to_string());
        }
        if let Some(keys) = aux.get("recover_keys") {
            let got: Vec<Vec<i64>> = row
                .recover
                .as_ref()
                .map(|r| {
                    r.keys
                        .iter()
                        .map(|k| {
                            vec![
                                k.end as i64,
                                k.l_inst as i64,
                                k.n_comp as i64,
                                k.n_continue as i64,
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            let want: Vec<Vec<i64>> = keys.as_array().unwrap().iter().map(ints).collect();
            if got != want {
                bad.push(format!("recover_keys {got:?} vs {want:?}"));
            }
            if aux["aug_len"].as_u64() != Some(layout.len as u64) {
                bad.push("aug_len".to_string());
            }
            let off = row.recover.as_ref().map(|_| pos[layout.len] as u64);
            if aux["recover_offset"].as_u64() != off {
                bad.push(format!(
                    "recover_offset {:?} vs {}",
                    off, aux["recover_offset"]
                ));
            }
        }
        bad
    });
}

/// Flags the collator really uses (aug-wo-pc forces prefill_compress off).
fn effective(opts: &BuildOptions) -> MaskFlags {
    opts.effective_flags()
}

#[test]
fn pipeline_masks_match_goldens() {
    check_all(|_st, opts, rec, row| {
        let p = opts.max_length;
        if opts.mode == Mode::Normal {
            return if rec["mask"].is_null() {
                vec![]
            } else {
                vec!["mask should be null".into()]
            };
        }
        let mask = match row.mask(&effective(opts), Some(p)) {
            Ok(m) => m,
            Err(e) => return vec![format!("mask error {e}")],
        };
        let want = rec["mask"].as_array().unwrap();
        if mask.rows() != want.len() || mask.cols() != p {
            return vec![format!(
                "mask shape {}x{} vs {}x{p}",
                mask.rows(),
                mask.cols(),
                want.len()
            )];
        }
        for (r, w) in want.iter().enumerate() {
            let w: Vec<(u32, u32)> = w
                .as_array()
                .unwrap()
                .iter()
                .map(|iv| {
                    (
                        iv[0].as_u64().unwrap() as u32,
                        iv[1].as_u64().unwrap() as u32,
                    )
                })
                .collect();
            if mask.row(r) != w.as_slice() {
                return vec![format!("mask row {r}: {:?} vs {w:?}", mask.row(r))];
            }
        }
        vec![]
    });
}

#[test]
fn labels_never_supervise_cache_continue_or_recover() {
    check_all(|st, _opts, _rec, row| {
        let added: HashMap<String, i64> = st.header["added_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_i64().unwrap()))
            .collect();
        let banned: Vec<i64> = added
            .iter()
            .filter(|(t, _)| t.starts_with("<|o_") || *t == "<|continue|>" || *t == "<|recover|>")
            .map(|(_, &i)| i)
            .collect();
        row.labels
            .iter()
            .filter(|&&l| l != IGNORE && banned.contains(&l))
            .map(|l| format!("label {l} is a cache/continue/recover id"))
            .take(1)
            .collect()
    });
}

/// `Builder::build_records` (what `lightthinker data build` writes) reproduces whole golden files,
/// error records included.
#[test]
fn build_records_reproduce_golden_files() {
    let wanted = [
        "v1.rec-hybrid.L1024.toi0.sc0bi0dg0ex1.pc1.inst0.jsonl.gz",
        "v1.rec.L1024.toi0.sc0bi0dg1ex0.pc0.inst0.jsonl.gz",
        "nst.aug.L1024.toi0.sc0bi0dg0ex0.pc0.inst0.jsonl.gz",
        "v1.normal.L96.toi0.sc0bi0dg0ex0.pc0.inst0.jsonl.gz",
        "otok.awp.L256.toi0.sc0bi0dg0ex0.pc0.inst1.jsonl.gz",
    ];
    let text = std::fs::read_to_string(fixtures().join("samples.jsonl")).unwrap();
    let ordered: Vec<lt_data::Result<TrainSample>> =
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                Ok(TrainSample::from_value(
                    serde_json::from_str::<Value>(l).unwrap()["sample"].clone(),
                )
                .unwrap())
            })
            .collect();
    let mut checked = 0;
    for st in settings()
        .iter()
        .filter(|s| wanted.contains(&s.name.as_str()))
    {
        let setting = &st.header["setting"];
        let (cfg, tok) = tokenizer_for(setting["config_name"].as_str().unwrap(), &st.header);
        let opts = options(setting);
        let flags = opts.effective_flags();
        let builder = Builder::new(&cfg, &tok, opts).unwrap();
        let (recs, summary) = builder.build_records(&ordered, 0, &flags);
        assert_eq!(recs.len(), st.records.len(), "{}", st.name);
        assert_eq!(summary.samples, 25);
        for (r, g) in recs.iter().zip(&st.records) {
            let r = serde_json::to_value(r).unwrap();
            if g["error"].is_null() {
                for k in ["hybrid_row", "input_ids", "labels", "position_ids", "mask"] {
                    assert_eq!(r[k], g[k], "{} {} field {k}", st.name, g["sample_id"]);
                }
            } else {
                assert!(
                    r["error"].is_string(),
                    "{} {}: expected an error record",
                    st.name,
                    g["sample_id"]
                );
            }
        }
        let n_err = st.records.iter().filter(|g| !g["error"].is_null()).count();
        assert_eq!(summary.errors, n_err, "{}", st.name);
        checked += 1;
    }
    assert_eq!(checked, wanted.len());
}
