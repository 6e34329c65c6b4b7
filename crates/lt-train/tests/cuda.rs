//! CUDA checks (run by `scripts/gpu-check.sh`): bf16 training with f32 master weights.
mod common;

use common::*;
use lt_data::{Mode, PadTo};
use lt_mask::MaskFlags;
use lt_model::{Device, Kind, Model, ModelConfig};
use lt_train::{train, RowsSource, TrainConfig};

#[test]
#[ignore = "needs CUDA"]
fn cuda_bf16_training_with_f32_masters_learns_and_checkpoints() {
    lt_model::device::load_cuda_library();
    assert!(lt_model::device::cuda_available(), "no CUDA device");
    let d = data(Mode::AugWoPc, false);
    let cfg = ModelConfig::tiny_llama(d.tokenizer.len(), 64, 2, 4, 2, 128);
    let mut m = Model::random(&cfg, Device::Cuda(0), Kind::BFloat16, 0).unwrap();
    let mut src = RowsSource::new(
        d.samples.clone(),
        4,
        MaskFlags::default(),
        PadTo::Longest,
        d.pad_id,
        1,
        true,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        lr: 1e-2,
        warmup_steps: 2,
        gradient_accumulation_steps: 1,
        max_steps: Some(40),
        output_dir: Some(dir.path().into()),
        ..Default::default()
    };
    let r = train(&tc, &mut m, &mut src).unwrap();
    let l: Vec<f64> = r.metrics.iter().map(|s| s.loss).collect();
    assert!(l.iter().all(|x| x.is_finite()));
    let (first, last) = (
        l[..3].iter().sum::<f64>() / 3.0,
        l[l.len() - 5..].iter().sum::<f64>() / 5.0,
    );
    assert!(last < 0.6 * first, "bf16 loss {first} -> {last}");
    let ck = dir.path().join("checkpoint-40");
    let opt = tch::Tensor::read_safetensors(ck.join("optimizer.safetensors")).unwrap();
    let masters: Vec<_> = opt
        .iter()
        .filter(|(n, _)| n.starts_with("master."))
        .collect();
    assert_eq!(
        masters.len(),
        m.named_parameters().len(),
        "every bf16 parameter has an f32 master"
    );
    assert!(masters.iter().all(|(_, t)| t.kind() == Kind::Float));
    // HF weights are bf16 (like the reference) and load back
    let loaded = Model::load(&ck, Device::Cuda(0), Kind::BFloat16).unwrap();
    assert_eq!(loaded.config().vocab_size, d.tokenizer.len());
}
