//! Benchmarks: per-sample metric walk (formula mode) and answer extraction on long generations.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lt_eval::{extract_answer, sample_metrics, CompressSettings, Method, MetricOptions, Record};

fn bench(c: &mut Criterion) {
    // a 10k-token generation with a boundary every 50 tokens (id 1 = boundary)
    let ids: Vec<u32> = (0..10_240u32)
        .map(|i| if i % 50 == 49 { 1 } else { 5 })
        .collect();
    let rec = Record {
        idx: 0,
        output_ids: Some(ids),
        input_len: Some(300),
        infer_time: 1.0,
        ..Default::default()
    };
    let mut opts = MetricOptions::new(Method::AnchorThought, CompressSettings::sentence(9));
    opts.boundary_id = Some(1);
    c.bench_function("sample_metrics anchor-thought 10k tokens", |b| {
        b.iter(|| sample_metrics(black_box(&rec), &opts).unwrap())
    });
    let text = "word ".repeat(8000) + r"so the answer is \boxed{\frac{1}{2}} and \boxed{42}.";
    c.bench_function("extract_answer 40k chars", |b| {
        b.iter(|| extract_answer(black_box(&text)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
