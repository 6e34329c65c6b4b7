//! The shared inference goldens (reference driver, tiny hand-designed Qwen2, f32 CPU): every record
//! field except `infer_time` identical, `output_ids` and the per-forward trace equal to the extras;
//! batch N ≡ batch 1; local ≡ global; resume after an interrupted write.
use std::path::{Path, PathBuf};

use lt_infer::quick::Dataset;
use lt_infer::record::read_records;
use lt_infer::run::{self, InferOptions, Vocab};
use lt_infer::{Generator, Method, UpdateMethod};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("run.json")).unwrap()).unwrap()
}

fn b(v: &Value, k: &str) -> bool {
    v["args"][k].as_str().unwrap() == "true"
}

/// The fixture's arguments as options (paths relative to the fixture folder).
fn options(name: &str, output: &Path) -> InferOptions {
    let rj = run_json(name);
    let dir = fixture(name);
    let a = &rj["args"];
    InferOptions {
        model_path: dir.join(a["model_path"].as_str().unwrap()),
        tokenizer_path: dir.join(a["tokenizer_path"].as_str().unwrap()),
        compress_config: dir.join(a["compress_config"].as_str().unwrap()),
        model_type: a["model_type"].as_str().unwrap().into(),
        bos_token: a["bos_token"].as_str().unwrap().into(),
        eos_token: a["eos_token"].as_str().unwrap().into(),
        max_new_tokens: a["max_new_tokens"].as_u64().unwrap() as usize,
        method: Method::LightThinker,
        flags: MaskFlags {
            see_current: b(&rj, "see_current"),
            bi_directional: b(&rj, "bi_directional"),
            diagonal: b(&rj, "diagonal"),
            exclude_continue: false,
            prefill_compress: b(&rj, "prefill_compress"),
        },
        rolling_rope: b(&rj, "rolling_rope"),
        compress_prompt: b(&rj, "compress_prompt"),
        update: UpdateMethod::Local,
        split_size: a["split_size"].as_u64().map(|v| v as usize),
        index: a["index"].as_u64().map(|v| v as usize),
        dataset: Dataset::Gsm8k,
        data: dir.join("data/eval/gsm8k.json"),
        output: output.to_path_buf(),
        kind: Kind::Float,
        device: Device::Cpu,
        batch_size: 1,
        progress: false,
        trace: false,
        system_prompt: None,
    }
}

fn expected_lines(name: &str, file: &str) -> Vec<Value> {
    std::fs::read_to_string(fixture(name).join("expected").join(file))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const REF_KEYS: [&str; 11] = [
    "idx",
    "model_answer",
    "gt_answer",
    "acc_state",
    "output",
    "prompt",
    "input_len",
    "output_len",
    "infer_time",
    "comp_pattern",
    "max_token",
];

/// Compare a written output file with the golden records and extras.
fn check_against_golden(name: &str, out: &Path) {
    let expected = expected_lines(name, "gsm8k_records.jsonl");
    let extras = expected_lines(name, "extras.jsonl");
    let text = std::fs::read_to_string(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{name}: record count");
    for ((line, exp), ext) in lines.iter().zip(&expected).zip(&extras) {
        // key order: the reference's keys first, in its order
        let positions: Vec<usize> = REF_KEYS
            .iter()
            .map(|k| line.find(&format!("\"{k}\": ")).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{name}: key order in {line}"
        );
        let got: Value = serde_json::from_str(line).unwrap();
        for k in REF_KEYS.iter().filter(|k| **k != "infer_time") {
            assert_eq!(got[k], exp[k], "{name} idx {}: field {k}", exp["idx"]);
        }
        assert_eq!(
            got["output_ids"], ext["output_ids"],
            "{name} idx {}: output_ids",
            exp["idx"]
        );
        assert_eq!(
            got["n_compress"], ext["n_compressions"],
            "{name}: n_compress"
        );
        assert_eq!(got["stop"], ext["stop"], "{name}: stop");
        let kv = got["kv_trace"].as_array().unwrap();
        assert_eq!(kv.len() + 1, got["output_len"].as_u64().unwrap() as usize);
        let peak_kv = kv.iter().map(|v| v.as_u64().unwrap()).max().unwrap();
        assert!(peak_kv <= got["max_token"].as_u64().unwrap());
    }
}

#[test]
fn golden_lt_default_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let s = run::run(&options("lt_default", &out)).unwrap();
    assert_eq!(s.written, 3);
    check_against_golden("lt_default", &out);
}

#[test]
fn golden_vanilla_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let mut o = options("vanilla", &out);
    o.method = Method::Vanilla; // no splitter is ever emitted, so vanilla is the same run
    run::run(&o).unwrap();
    check_against_golden("vanilla", &out);
    for r in read_records(&out).unwrap() {
        assert_eq!(r.n_compress, 0);
        assert_eq!(r.max_token, r.input_len + r.output_len - 1);
        // vanilla Dep = P·O + O(O+1)/2 over the O output tokens (the last one counted as if fed)
        let (p, o) = (r.input_len as u64, r.output_len as u64);
        assert_eq!(r.dep, p * o + o * (o + 1) / 2);
    }
}

/// The per-forward trace: cache lengths, fed ids, positions, masks, evictions, predictions.
#[test]
fn golden_trace_and_global_equivalence() {
    let name = "lt_default";
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(name, &dir.path().join("x.jsonl"));
    o.trace = true;
    let vocab = Vocab::load(
        &o.tokenizer_path,
        &o.compress_config,
        &o.bos_token,
        &o.eos_token,
    )
    .unwrap();
    let model = Model::load(&o.model_path, Device::Cpu, Kind::Float).unwrap();
    let items = run::read_eval_file(&o.data, Dataset::Gsm8k).unwrap();
    let extras = expected_lines(name, "extras.jsonl");
    let gen = Generator::new(&model, vocab.gen_config(&o));
    o.update = UpdateMethod::Global;
    let gen_global = Generator::new(&model, vocab.gen_config(&o));
    for (item, ext) in items.iter().zip(&extras) {
        let prompt = vocab
            .prompt(item, Dataset::Gsm8k, &o.bos_token, false)
            .unwrap();
        assert_eq!(
            serde_json::to_value(&prompt.ids).unwrap(),
            ext["prompt_ids"]
        );
        let g = gen.generate(&prompt).unwrap();
        let trace = g.trace.as_ref().unwrap();
        let exp = ext["trace"].as_array().unwrap();
        assert_eq!(trace.len(), exp.len(), "n_forward");
        assert_eq!(g.n_forward, ext["n_forward"].as_u64().unwrap() as usize);
        for (i, (t, e)) in trace.iter().zip(exp).enumerate() {
            assert_eq!(
                t.cache_len as u64,
                e["cache_len"].as_u64().unwrap(),
                "step {i} cache_len"
            );
            assert_eq!(
                serde_json::to_value(&t.input_ids).unwrap(),
                e["input_ids"],
                "step {i} ids"
            );
            assert_eq!(
                serde_json::to_value(&t.position_ids).unwrap(),
                e["position_ids"],
                "step {i} positions"
            );
            assert_eq!(
                serde_json::to_value(&t.mask).unwrap(),
                e["mask"],
                "step {i} mask"
            );
            let ev = t.evict.map(|(a, b)| vec![a, b]);
            assert_eq!(
                serde_json::to_value(ev).unwrap(),
                e["evict"],
                "step {i} evict"
            );
            assert_eq!(t.pred as u64, e["pred"].as_u64().unwrap(), "step {i} pred");
        }
        // global (self-check) masks give the same trace and outputs
        let gg = gen_global.generate(&prompt).unwrap();
        assert_eq!(gg.output_ids, g.output_ids);
        assert_eq!(gg.trace, g.trace);
        assert_eq!(gg.dep, g.dep);
    }
}

/// N sequences in one batch (ragged caches, per-row compression) give the batch-1 records.
#[test]
fn batch_equals_single() {
    for (name, method, bs) in [
        ("lt_default", Method::LightThinker, 3),
        ("vanilla", Method::Vanilla, 5),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let mut o = options(name, &out);
        o.method = method;
        o.batch_size = bs;
        run::run(&o).unwrap();
        check_against_golden(name, &out);
    }
}

/// An interrupted run (torn last line, missing records) resumes: every idx exactly once.
#[test]
fn resume_after_interrupted_write() {
    let name = "lt_default";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res/out.jsonl");
    run::run(&options(name, &out)).unwrap();
    let full = std::fs::read_to_string(&out).unwrap();
    let first_two: String = full.lines().take(1).map(|l| format!("{l}\n")).collect();
    let third = full.lines().nth(1).unwrap();
    // the "kill": one complete record, then half of the next one
    std::fs::write(&out, format!("{first_two}{}", &third[..third.len() / 2])).unwrap();
    let s = run::run(&options(name, &out)).unwrap();
    assert_eq!((s.skipped, s.written), (1, 2));
    check_against_golden(name, &out);
    // a second rerun is a no-op
    let s = run::run(&options(name, &out)).unwrap();
    assert_eq!((s.skipped, s.written), (3, 0));
    check_against_golden(name, &out);
}

/// Child half of [`resume_after_kill_9`]: runs the vanilla fixture into `$LT_INFER_CHILD_OUT`.
#[test]
#[ignore = "spawned by resume_after_kill_9"]
fn resume_child() {
    let Ok(out) = std::env::var("LT_INFER_CHILD_OUT") else {
        return;
    };
    let mut o = options("vanilla", Path::new(&out));
    o.method = Method::Vanilla;
    run::run(&o).unwrap();
}

/// `kill -9` the generating process at several moments, rerun: the file ends with every idx
/// exactly once and equals the golden records.
#[test]
fn resume_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.jsonl");
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "resume_child",
                "--test-threads",
                "1",
            ])
            .env("LT_INFER_CHILD_OUT", &out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut kills = 0;
    for delay_ms in [150u64, 300, 450, 600, 750, 900] {
        let mut child = spawn();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        let n = std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        eprintln!("after {delay_ms} ms: {n} records");
    }
    let status = spawn().wait().unwrap();
    assert!(status.success());
    assert!(kills > 0, "no run was killed");
    check_against_golden("vanilla", &out);
}
