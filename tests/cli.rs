//! End-to-end tests of the `lightthinker` binary: the CLI contracts of the issues, checked against the
//! reference goldens the crates also use, and the error behaviour (one line, non-zero exit, no panic).
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lightthinker"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn lightthinker");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstderr:\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    BufReader::new(r)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn help_lists_the_seven_subcommands() {
    let out = run_ok(bin().arg("--help"));
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["train", "infer", "eval", "data", "mask", "model", "demo"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(sub)),
            "`{sub}` missing from --help:\n{text}"
        );
    }
}

#[test]
fn mask_build_reproduces_every_reference_builder_golden() {
    let dir = tempfile::tempdir().unwrap();
    let input = root().join("crates/lt-mask/tests/fixtures/mask_builders.jsonl.gz");
    let output = dir.path().join("masks.jsonl");
    run_ok(
        bin()
            .args(["mask", "build", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output),
    );
    let golden: Vec<Value> = read_jsonl(&input)
        .into_iter()
        .filter(|v| v.get("header").is_none())
        .collect();
    let ours = read_jsonl(&output);
    assert_eq!(golden.len(), 225);
    assert_eq!(ours.len(), golden.len());
    let mut errors = 0;
    for (g, o) in golden.iter().zip(&ours) {
        assert_eq!(g["case_id"], o["case_id"]);
        if g["error"].is_null() {
            assert!(
                o["error"].is_null(),
                "{}: unexpected error {}",
                g["case_id"],
                o["error"]
            );
            assert_eq!(g["shape"], o["shape"], "{}", g["case_id"]);
            assert_eq!(g["mask"], o["mask"], "{}", g["case_id"]);
            assert_eq!(g["offset"], o["offset"], "{}", g["case_id"]);
        } else {
            errors += 1;
            assert!(
                o["error"].is_string(),
                "{}: the reference raised",
                g["case_id"]
            );
        }
    }
    assert_eq!(errors, 5);
}

#[test]
fn model_logits_match_transformers_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("crates/lt-model/tests/fixtures/qwen2_lt");
    let output = dir.path().join("logits.jsonl");
    run_ok(
        bin()
            .args(["model", "logits", "--model-path"])
            .arg(fx.join("model"))
            .arg("--input")
            .arg(fx.join("requests.jsonl"))
            .arg("--output")
            .arg(&output),
    );
    let expected = read_jsonl(&fx.join("expected.jsonl"));
    let ours = read_jsonl(&output);
    assert_eq!(expected.len(), ours.len());
    for (e, o) in expected.iter().zip(&ours) {
        assert_eq!(e["name"], o["name"]);
        let tol = 5e-5 * e["max_abs_logit"].as_f64().unwrap();
        let (el, ol) = (
            e["logits"].as_array().unwrap(),
            o["logits"].as_array().unwrap(),
        );
        assert_eq!(el.len(), ol.len());
        let mut worst = 0f64;
        for (er, or) in el.iter().zip(ol) {
            for (a, b) in er.as_array().unwrap().iter().zip(or.as_array().unwrap()) {
                worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
            }
        }
        assert!(worst <= tol, "{}: max |diff| {worst} > {tol}", e["name"]);
    }
}

#[test]
fn infer_reproduces_the_reference_driver_records() {
    let dir = tempfile::tempdir().unwrap();
    let fx = root().join("crates/lt-infer/tests/fixtures/lt_default");
    let output = dir.path().join("gsm8k.jsonl");
    let mut cmd = bin();
    cmd.arg("infer")
        .arg("--model-path")
        .arg(fx.join("model"))
        .arg("--tokenizer-path")
        .arg(fx.join("tokenizer"))
        .arg("--compress-config")
        .arg(fx.join("config/compress_config.json"))
        .args([
            "--model-type",
            "qwen",
            "--bos-token",
            "<|im_start|>",
            "--eos-token",
            "<|im_end|>",
        ])
        .args(["--max-new-tokens", "300", "--method", "lightthinker"])
        .args([
            "--see-current",
            "false",
            "--bi-directional",
            "false",
            "--diagonal",
            "false",
        ])
        .args([
            "--rolling-rope",
            "false",
            "--compress-prompt",
            "false",
            "--prefill-compress",
            "false",
        ])
        .args([
            "--update-attention-method",
            "local",
            "--split-size",
            "1",
            "--index",
            "1",
        ])
        .args(["--dataset", "gsm8k", "--data"])
        .arg(fx.join("data/eval/gsm8k.json"))
        .arg("--output")
        .arg(&output);
    run_ok(&mut cmd);
    let expected = read_jsonl(&fx.join("expected/gsm8k_records.jsonl"));
    let ours = read_jsonl(&output);
    assert_eq!(expected.len(), ours.len());
    for (e, o) in expected.iter().zip(&ours) {
        for (k, v) in e.as_object().unwrap() {
            if k == "infer_time" {
                continue;
            }
            assert_eq!(&o[k], v, "idx {}: field `{k}`", e["idx"]);
        }
    }
}

/// Run a command that must fail: a non-zero exit and one `error: ` line on stderr, no panic.
fn one_error_line(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    err
}

#[test]
fn bad_input_is_one_error_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"case_id\": \"x\", \"builder\": \"create_attention_for_aug_data\"\nnot json\n",
    )
    .unwrap();
    let err = one_error_line(
        bin()
            .args(["mask", "build", "--input"])
            .arg(&bad)
            .arg("--output")
            .arg(dir.path().join("o.jsonl")),
    );
    assert!(err.contains("bad.jsonl"), "the error names the file: {err}");

    // an output under a regular file: the cause once, after the run's data and output
    let fx = root().join("crates/lt-infer/tests/fixtures/lt_default");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let err = one_error_line(
        bin()
            .args(["-q", "infer", "--model-path"])
            .arg(fx.join("model"))
            .arg("--tokenizer-path")
            .arg(fx.join("tokenizer"))
            .arg("--compress-config")
            .arg(fx.join("config/compress_config.json"))
            .args(["--model-type", "qwen", "--bos-token", "<|im_start|>"])
            .args(["--eos-token", "<|im_end|>", "--max-new-tokens", "4"])
            .args(["--method", "lightthinker", "--dataset", "gsm8k", "--data"])
            .arg(fx.join("data/eval/gsm8k.json"))
            .arg("--output")
            .arg(blocker.join("o.jsonl")),
    );
    assert!(err.starts_with("error: gsm8k: "), "{err}");
    assert!(err.contains("a-file"), "the error names the path: {err}");
    let cause = err.trim_end().rsplit(": ").next().unwrap();
    assert_eq!(err.matches(cause).count(), 1, "cause repeated: {err}");

    one_error_line(
        bin()
            .args(["model", "info"])
            .arg(dir.path().join("missing-model")),
    );
}

#[test]
fn demo_quick_writes_the_results_contract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    run_ok(bin().args(["-q", "demo", "--quick", "--out"]).arg(&out));
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for m in ["vanilla", "lightthinker"] {
        let r = &results["methods"][m];
        for k in ["n", "acc", "time_s", "peak", "dep", "compressions"] {
            assert!(
                r[k].is_number(),
                "results.methods.{m}.{k} missing: {results}"
            );
        }
        assert_eq!(r["n"], 16);
        assert!(out.join(m).join("metrics.jsonl").exists());
        assert!(out.join(format!("{m}.records.jsonl")).exists());
    }
    // vanilla never compresses; the LightThinker arm ran through the compression path
    assert_eq!(results["methods"]["vanilla"]["compressions"], 0.0);
    for f in [
        "results.md",
        "kv_length.svg",
        "kv_length.png",
        "training_mask.svg",
        "training_mask.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}
