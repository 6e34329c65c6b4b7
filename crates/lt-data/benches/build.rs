//! Throughput of building Bespoke-Stratos-sized training data (synthetic: ~3k tokens per sample,
//! reference settings aug-wo-pc / P = 4096) and of collating a micro-batch with its masks.
//!
//! Needs `.cache/qwen2.5-tokenizer/tokenizer.json` (`bash scripts/setup.sh`).
//! `LT_DATA_BENCH_FULL=1` additionally times one pass over 16,710 samples (the reference epoch).
use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lt_data::{collate, BuildOptions, Builder, CompressConfig, LtTokenizer, PadTo, TrainSample};
use lt_mask::MaskFlags;

const WORDS: &[&str] = &[
    "the",
    "number",
    "of",
    "ways",
    "to",
    "choose",
    "two",
    "distinct",
    "integers",
    "is",
    "so",
    "we",
    "need",
    "check",
    "whether",
    "sum",
    "equals",
    "Let",
    "me",
    "verify",
    "this",
    "again",
    "carefully",
    "since",
    "product",
    "must",
    "be",
    "divisible",
    "by",
    "three",
    "hence",
    "answer",
    "follows",
    "from",
    "equation",
    "x^2",
    "+",
    "3x",
    "=",
    "10",
    "42",
    "wait",
    "maybe",
    "I",
    "made",
    "a",
    "mistake",
    "here",
];

fn synthetic(i: usize) -> TrainSample {
    let mut rng = 0x9E3779B97F4A7C15u64 ^ (i as u64).wrapping_mul(0xBF58476D1CE4E5B9);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sentence = |n: usize| {
        (0..n)
            .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
            + "."
    };
    let question = format!(
        "Return your final response within \\boxed{{}}. {}",
        sentence(40)
    );
    let mut thoughts = vec!["<|begin_of_thought|>".to_string()];
    for _ in 0..22 {
        thoughts.push(format!("{} {}", sentence(45), sentence(40)));
    }
    thoughts.push("<|end_of_thought|>".into());
    thoughts.push("<|begin_of_solution|>".into());
    thoughts.push(sentence(60));
    thoughts.push("<|end_of_solution|>".into());
    TrainSample {
        question: question.clone(),
        system_prompt: lt_data::system_prompt(),
        system_list: lt_data::SYSTEM_PROMPT_LIST
            .iter()
            .map(|s| s.to_string())
            .collect(),
        question_list: vec![question],
        gt_output: thoughts.join("\n\n"),
        thoughts_list: thoughts,
        add_eos: None,
        meta_info: Default::default(),
    }
}

fn setup() -> (CompressConfig, LtTokenizer) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cfg = CompressConfig::from_file(root.join("configs/LightThinker/qwen/v1.json")).unwrap();
    let p = root.join(".cache/qwen2.5-tokenizer/tokenizer.json");
    assert!(
        p.is_file(),
        "{} missing: run `bash scripts/setup.sh`",
        p.display()
    );
    let mut tok = LtTokenizer::from_file(p).unwrap();
    tok.add_special_tokens(&cfg);
    (cfg, tok)
}

fn bench(c: &mut Criterion) {
    let (cfg, tok) = setup();
    let builder = Builder::new(&cfg, &tok, BuildOptions::reference("qwen")).unwrap();
    let samples: Vec<TrainSample> = (0..64).map(synthetic).collect();
    let rows: Vec<_> = builder
        .build_many(&samples)
        .into_iter()
        .map(|r| r.unwrap().remove(0))
        .collect();
    let mean = rows.iter().map(|r| r.len()).sum::<usize>() as f64 / rows.len() as f64;
    eprintln!("synthetic samples: mean {mean:.0} tokens");

    let mut g = c.benchmark_group("lt-data");
    g.sample_size(10);
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.bench_function("build_aug_wo_pc_P4096_x64_rayon", |b| {
        b.iter(|| builder.build_many(&samples))
    });
    g.bench_function("build_aug_wo_pc_P4096_x64_serial", |b| {
        b.iter(|| {
            samples
                .iter()
                .map(|s| builder.build(s).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.throughput(Throughput::Elements(5));
    let flags = MaskFlags::default();
    g.bench_function("collate_5_longest_with_masks", |b| {
        b.iter(|| collate(&rows[..5], &flags, PadTo::Longest, 151645).unwrap())
    });
    g.bench_function("collate_5_max_length_4096_with_masks", |b| {
        b.iter(|| collate(&rows[..5], &flags, PadTo::MaxLength(4096), 151645).unwrap())
    });
    g.finish();

    if std::env::var_os("LT_DATA_BENCH_FULL").is_some() {
        let n = 16_710;
        let t = Instant::now();
        let mut built = 0usize;
        for start in (0..n).step_by(512) {
            let chunk: Vec<TrainSample> = (start..(start + 512).min(n)).map(synthetic).collect();
            built += builder
                .build_many(&chunk)
                .into_iter()
                .filter(|r| r.is_ok())
                .count();
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "full pass: {built} samples in {s:.1} s = {:.0} samples/s",
            built as f64 / s
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
