//! Bit-for-bit parity with the reference mask builders: the 225 direct builder calls of
//! `mask_builders.jsonl.gz` and the mask of every (non-normal) pipeline golden record.
mod common;

use common::*;
use lt_mask::{global_mask, recover_mask, MaskError, RecoverKey, RecoverSpec};
use serde_json::Value;

fn keys(v: &Value) -> Vec<RecoverKey> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let k: Vec<usize> = serde_json::from_value(k.clone()).unwrap();
            RecoverKey {
                end: k[0],
                l_inst: k[1],
                n_comp: k[2],
                n_continue: k[3],
            }
        })
        .collect()
}

#[test]
fn mask_builders_golden() {
    let recs = read_jsonl_gz("mask_builders.jsonl.gz");
    let (mut n_aug, mut n_rec, mut n_err) = (0, 0, 0);
    for rec in recs.iter().filter(|r| r.get("header").is_none()) {
        let id = rec["case_id"].as_str().unwrap();
        let a = &rec["args"];
        let len = a["input_len"].as_u64().unwrap() as usize;
        let layout = layout(len, &a["locate_index"], &a["locate_indicator"]);
        let flags = flags(a);
        let pad = a["max_length"].as_u64().map(|p| p as usize);
        let (mask, offset) = match rec["builder"].as_str().unwrap() {
            "create_attention_for_aug_data" => {
                n_aug += 1;
                (global_mask(&layout, &flags, pad), None)
            }
            "create_attention_for_recover_data" => {
                n_rec += 1;
                let spec = RecoverSpec {
                    added_len: a["added_len"].as_u64().unwrap() as usize,
                    keys: keys(&a["added_corresp_attention"]),
                };
                match recover_mask(&layout, &spec, &flags, pad) {
                    Ok((m, o)) => (Ok(m), Some(o)),
                    Err(e) => (Err(e), None),
                }
            }
            b => panic!("{id}: builder {b}"),
        };
        if rec["error"].is_null() {
            let mask = mask.unwrap_or_else(|e| panic!("{id}: {e}"));
            let shape: Vec<usize> = serde_json::from_value(rec["shape"].clone()).unwrap();
            assert_eq!(vec![mask.rows(), mask.cols()], shape, "{id}: shape");
            let want = intervals(&rec["mask"]);
            for (r, w) in want.iter().enumerate() {
                assert_eq!(mask.row(r), w.as_slice(), "{id}: row {r}");
            }
            // the serde form is exactly the golden's
            assert_eq!(
                serde_json::to_value(mask.golden_intervals()).unwrap(),
                rec["mask"],
                "{id}"
            );
            if let Some(o) = offset {
                assert_eq!(o as u64, rec["offset"].as_u64().unwrap(), "{id}: offset");
            }
        } else {
            n_err += 1;
            assert_eq!(rec["error"]["type"], "AssertionError", "{id}");
            assert_eq!(mask, Err(MaskError::DiagonalInRecover), "{id}");
        }
    }
    assert_eq!((n_aug, n_rec, n_err), (135, 90, 5));
}

/// Decode the fixture's row compression (see scripts/lt_mask_extract_fixtures.py).
fn decode_rows(v: &Value) -> Vec<Vec<(u32, u32)>> {
    let mut rows: Vec<Vec<(u32, u32)>> = Vec::new();
    for item in v.as_array().unwrap() {
        if let Some(k) = item.as_i64() {
            for _ in 0..k.unsigned_abs() {
                let mut r = rows.last().unwrap().clone();
                if k < 0 {
                    r.last_mut().unwrap().1 += 1;
                }
                rows.push(r);
            }
        } else {
            rows.push(serde_json::from_value(item.clone()).unwrap());
        }
    }
    rows
}

#[test]
fn pipeline_golden_masks() {
    let recs = read_jsonl_gz("pipeline_masks.jsonl.gz");
    let mut masks = std::collections::HashMap::new();
    let (mut n_global, mut n_recover) = (0, 0);
    for rec in &recs {
        match rec["kind"].as_str().unwrap() {
            "mask" => {
                masks.insert(rec["id"].as_u64().unwrap(), decode_rows(&rec["rows"]));
            }
            "case" => {
                let id = rec["case_id"].as_str().unwrap();
                let len = rec["len"].as_u64().unwrap() as usize;
                let layout = layout(len, &rec["locate_index"], &rec["locate_indicator"]);
                let flags = flags(&rec["flags"]);
                let p = rec["max_length"].as_u64().unwrap() as usize;
                let want = &masks[&rec["mask_id"].as_u64().unwrap()];
                let got = if rec["recover"].is_null() {
                    n_global += 1;
                    global_mask(&layout, &flags, Some(p)).unwrap_or_else(|e| panic!("{id}: {e}"))
                } else {
                    n_recover += 1;
                    let r = &rec["recover"];
                    let spec = RecoverSpec {
                        added_len: r["added_len"].as_u64().unwrap() as usize,
                        keys: keys(&r["keys"]),
                    };
                    let (m, off) = recover_mask(&layout, &spec, &flags, Some(p))
                        .unwrap_or_else(|e| panic!("{id}: {e}"));
                    assert_eq!(off as u64, r["offset"].as_u64().unwrap(), "{id}: offset");
                    assert_eq!(
                        off as u64,
                        rec["position_ids"].as_u64().unwrap(),
                        "{id}: position of <|recover|>"
                    );
                    m
                };
                assert_eq!((got.rows(), got.cols()), (p, p), "{id}");
                for (r, w) in want.iter().enumerate() {
                    assert_eq!(got.row(r), w.as_slice(), "{id}: row {r}");
                }
            }
            k => panic!("kind {k}"),
        }
    }
    assert_eq!((n_global, n_recover), (931, 221));
}

#[test]
fn dense_port_agrees_with_goldens_too() {
    // guards the test oracle used by the property tests
    let recs = read_jsonl_gz("mask_builders.jsonl.gz");
    for rec in recs.iter().filter(|r| r.get("header").is_none()) {
        if !rec["error"].is_null() {
            continue;
        }
        let a = &rec["args"];
        let len = a["input_len"].as_u64().unwrap() as usize;
        let layout = layout(len, &a["locate_index"], &a["locate_indicator"]);
        let flags = flags(a);
        let pad = a["max_length"].as_u64().map(|p| p as usize);
        let dense = if rec["builder"] == "create_attention_for_aug_data" {
            dense_aug(&layout, &flags, pad)
        } else {
            let (d, o) = dense_recover(
                &layout,
                a["added_len"].as_u64().unwrap() as usize,
                &keys(&a["added_corresp_attention"]),
                &flags,
                pad,
            );
            assert_eq!(o as u64, rec["offset"].as_u64().unwrap());
            d
        };
        let want = lt_mask::IntervalMask::from_intervals(dense.n, intervals(&rec["mask"])).unwrap();
        assert_eq!(dense.a, want.to_dense(), "{}", rec["case_id"]);
    }
}
