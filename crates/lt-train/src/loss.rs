//! The reference's causal-LM loss reduction.
//!
//! transformers 4.46.3 (`ForCausalLMLoss` with `num_items_in_batch`): logits are upcast to f32,
//! position `p-1` predicts `labels[p]`, `-100` is ignored, the cross-entropy is **summed** over
//! the micro-batch and divided by `N_window`, the number of `labels != -100` (unshifted, so a
//! labelled position 0 counts although it is never predicted) over every micro-batch of the
//! gradient-accumulation window. Summing the micro-batch losses gives the token-mean over the
//! window. Unlike the reference, a window without labels gives loss 0 (not 0/0 = NaN).
use crate::error::Result;
use tch::{Kind, Reduction, Tensor};

/// The label value that is ignored.
pub const IGNORE_INDEX: i64 = -100;

/// Number of labelled positions (`labels != -100`) in a flat label buffer: the reference's
/// `num_items_in_batch` contribution of one micro-batch.
///
/// ```no_run
/// assert_eq!(lt_train::count_labels(&[-100, 5, 6, -100]), 2);
/// ```
pub fn count_labels(labels: &[i64]) -> usize {
    labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
}

/// Sum over the batch of next-token cross-entropy, from logits `[B, T, V]` (any float kind;
/// upcast to f32) and labels `[B, T]` (Int64). Returns an f32 scalar (0 when nothing is labelled).
pub fn shifted_ce_sum(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (_b, t, v) = logits.size3()?;
    if t < 2 {
        return Ok(logits.f_sum(Kind::Float)?.f_mul_scalar(0.0)?);
    }
    let logits = logits.f_to_kind(Kind::Float)?;
    let shift_logits = logits
        .f_narrow(1, 0, t - 1)?
        .f_contiguous()?
        .f_view([-1, v])?;
    let shift_labels = labels.f_narrow(1, 1, t - 1)?.f_contiguous()?.f_view([-1])?;
    Ok(shift_logits.f_cross_entropy_loss::<Tensor>(
        &shift_labels,
        None,
        Reduction::Sum,
        IGNORE_INDEX,
        0.0,
    )?)
}

/// Cross-entropy sum of the rows of `hidden [N, H]` projected by `lm_head_weight [V, H]`,
/// against `targets [N]`: the same value as [`shifted_ce_sum`] when `hidden`/`targets` are the
/// labelled predecessor positions, without materialising `[B, T, V]`.
///
/// Returns the differentiable f32 sum and its value summed **sequentially in f64** from the
/// per-token losses: libtorch's vectorised sum may round differently from run to run (it depends
/// on buffer alignment), the logged loss must not.
pub fn selected_ce_sum(
    hidden: &Tensor,
    lm_head_weight: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, f64)> {
    let logits = hidden
        .f_matmul(&lm_head_weight.f_tr()?)?
        .f_to_kind(Kind::Float)?;
    let per_token =
        logits.f_cross_entropy_loss::<Tensor>(targets, None, Reduction::None, IGNORE_INDEX, 0.0)?;
    let values: Vec<f32> =
        Vec::<f32>::try_from(&per_token.f_detach()?.f_to_device(tch::Device::Cpu)?)?;
    let value = values.iter().map(|&v| f64::from(v)).sum::<f64>();
    Ok((per_token.f_sum(Kind::Float)?, value))
}

/// The micro-batch loss to back-propagate: `ce_sum / max(n_window, 1)` (times `extra_scale`,
/// e.g. DeepSpeed's `1/GAS` when emulated).
pub fn window_loss(ce_sum: &Tensor, n_window: usize, extra_scale: f64) -> Result<Tensor> {
    let denom = n_window.max(1) as f64;
    let l = ce_sum.f_div_scalar(denom)?;
    Ok(if extra_scale != 1.0 {
        l.f_mul_scalar(extra_scale)?
    } else {
        l
    })
}
