//! The doc examples' assertions (doctests are `no_run`: their binaries cannot find libtorch).
use lt_train::*;

#[test]
fn doc_examples_hold() {
    assert_eq!(count_labels(&[-100, 5, 6, -100]), 2);
    assert_eq!(warmup_steps(1045, 0.05, 0), 53);
    assert_eq!(warmup_steps(1045, 0.05, 10), 10);
    let s = Schedule::new(SchedulerKind::Cosine, 2e-5, 53, 1045);
    assert_eq!(s.lr_at(0), 0.0);
    assert_eq!(s.lr_at(53), 2e-5);
    assert_eq!(s.lr_at(1045), 0.0);
    let l = Schedule::new(SchedulerKind::Linear, 1.0, 0, 4);
    assert_eq!(
        (0..5).map(|i| l.lr_at(i)).collect::<Vec<_>>(),
        [1.0, 0.75, 0.5, 0.25, 0.0]
    );
    let svg = loss_curve_svg(&[(1, 3.0), (2, 2.5), (3, f64::NAN)], "a<b");
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("a&lt;b"));

    let p = tch::Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![("p".to_string(), p.shallow_clone())],
        AdamWConfig::default(),
    );
    (&p * &p).sum(tch::Kind::Float).backward(); // grad = 2p = [2, 4]
    let norm = opt.clip_grad_norm(1.0).unwrap();
    assert!((norm - 20f64.sqrt()).abs() < 1e-5);
    opt.step(1e-3).unwrap();
    // first Adam step moves every coordinate by ~lr against the gradient's sign
    assert!((p.double_value(&[0]) - (1.0 - 1e-3)).abs() < 1e-6);
    assert_eq!(opt.steps(), 1);
}

#[test]
fn config_errors_name_the_field() {
    let cfg = lt_model::ModelConfig::tiny_llama(16, 8, 1, 2, 1, 16);
    let mut m = lt_model::Model::random(&cfg, tch::Device::Cpu, tch::Kind::Float, 0).unwrap();
    let mut src = FnSource(|_, _| Err(TrainError::Data("unused".into())));
    for (tc, field) in [
        (
            TrainConfig {
                gradient_accumulation_steps: 0,
                max_steps: Some(1),
                ..Default::default()
            },
            "gradient_accumulation_steps",
        ),
        (
            TrainConfig {
                max_steps: None,
                ..Default::default()
            },
            "max_steps",
        ),
        (
            TrainConfig {
                warmup_ratio: 2.0,
                max_steps: Some(1),
                ..Default::default()
            },
            "warmup_ratio",
        ),
        (
            TrainConfig {
                resume: true,
                max_steps: Some(1),
                ..Default::default()
            },
            "output_dir",
        ),
    ] {
        match train(&tc, &mut m, &mut src) {
            Err(TrainError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected a config error on {field}, got {other:?}"),
        }
    }
}
