//! Mask building and export speed (issue targets for 4096 tokens / 40 thoughts, C = 9:
//! structured <= 50 us, dense bool <= 2 ms, additive bf16 tensor <= 5 ms, local step <= 2 us).
//! Run: `cargo bench -p lt-mask` (add `--features tch` for the tensor exports).
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use lt_mask::{
    global_mask, global_masks, local_mask, recover_mask, BlockKind, Layout, LocalIndicator,
    MaskFlags, RecoverKey, RecoverSpec, ThoughtBlock,
};

/// A `len`-token aug-wo-pc sample: a 200-token prompt, `k` equal thoughts with C = 9 and one
/// continue each, EOS, then padding to `len`.
fn layout(len: usize, k: usize) -> Layout {
    let prompt = 200;
    let per = (len - prompt - 1) / k;
    let t = per - 10;
    let blocks = (0..k)
        .map(|i| ThoughtBlock {
            start: prompt + i * per,
            end: prompt + i * per + t,
            l_inst: 0,
            n_comp: 9,
            n_continue: 1,
            kind: BlockKind::Output,
        })
        .collect();
    Layout {
        len: prompt + k * per + 1,
        blocks,
    }
}

fn bench(c: &mut Criterion) {
    let flags = MaskFlags::default();
    let mut g = c.benchmark_group("global_mask");
    for (len, k) in [(4096usize, 40usize), (8192, 80)] {
        let l = layout(len, k);
        g.bench_with_input(
            BenchmarkId::new("structured", format!("{len}/{k}")),
            &l,
            |b, l| b.iter(|| global_mask(black_box(l), &flags, Some(len)).unwrap()),
        );
        let m = global_mask(&l, &flags, Some(len)).unwrap();
        g.bench_with_input(
            BenchmarkId::new("dense_bool", format!("{len}/{k}")),
            &m,
            |b, m| b.iter(|| black_box(m.to_dense())),
        );
        let mut buf = vec![0u16; len * len];
        g.bench_with_input(
            BenchmarkId::new("dense_bf16_bits", format!("{len}/{k}")),
            &m,
            |b, m| {
                // bf16 0.0 = 0x0000, bf16 finfo.min = 0xff7f
                b.iter(|| m.write_dense(0u16, 0xff7fu16, black_box(&mut buf)))
            },
        );
        g.bench_with_input(
            BenchmarkId::new("bitpacked", format!("{len}/{k}")),
            &m,
            |b, m| b.iter(|| black_box(m.to_bitpacked())),
        );
        #[cfg(feature = "tch")]
        {
            g.bench_with_input(
                BenchmarkId::new("additive_bf16_tensor", format!("{len}/{k}")),
                &m,
                |b, m| {
                    b.iter(|| {
                        black_box(m.to_additive_tensor(tch::Kind::BFloat16, tch::Device::Cpu))
                    })
                },
            );
        }
    }
    let l = layout(4096, 40);
    let keys: Vec<RecoverKey> = l.blocks[..20].iter().map(RecoverKey::of).collect();
    let spec = RecoverSpec {
        added_len: 1000,
        keys,
    };
    g.bench_function("recover/4096+1000", |b| {
        b.iter(|| recover_mask(black_box(&l), &spec, &flags, Some(5120)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("batch8_4096_40");
    let items: Vec<(Layout, MaskFlags)> = (0..8).map(|_| (layout(4096, 40), flags)).collect();
    g.bench_function("rayon", |b| {
        b.iter(|| global_masks(black_box(&items), Some(4096)))
    });
    g.bench_function("sequential", |b| {
        b.iter(|| {
            items
                .iter()
                .map(|(l, f)| global_mask(l, f, Some(4096)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    #[cfg(feature = "tch")]
    {
        let masks: Vec<_> = global_masks(&items, Some(4096))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        g.bench_function("stack_additive_bf16", |b| {
            b.iter(|| {
                lt_mask::stack_additive(black_box(&masks), tch::Kind::BFloat16, tch::Device::Cpu)
                    .unwrap()
            })
        });
    }
    #[cfg(feature = "tch")]
    {
        let masks: Vec<_> = global_masks(&items, Some(4096))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let mut buf =
            tch::Tensor::empty([8, 1, 4096, 4096], (tch::Kind::BFloat16, tch::Device::Cpu));
        g.bench_function("fill_additive_bf16_reused", |b| {
            b.iter(|| lt_mask::fill_additive(black_box(&masks), &mut buf).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("local_mask");
    let ind = LocalIndicator::lightthinker(600, 700, 9);
    g.bench_function("lightthinker_step_L700_C9", |b| {
        b.iter(|| local_mask(black_box(700), 11, Some(&ind), &flags).unwrap())
    });
    let sc = MaskFlags {
        see_current: true,
        bi_directional: true,
        ..flags
    };
    g.bench_function("lightthinker_step_sc_bi", |b| {
        b.iter(|| local_mask(black_box(700), 11, Some(&ind), &sc).unwrap())
    });
    let a = LocalIndicator::anllm(600, 700);
    g.bench_function("anllm_step", |b| {
        b.iter(|| local_mask(black_box(700), 1, Some(&a), &sc).unwrap())
    });
    g.bench_function("normal_step", |b| {
        b.iter(|| local_mask(black_box(700), 1, None, &flags).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
