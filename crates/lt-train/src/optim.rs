//! AdamW and global-norm gradient clipping on tch tensors, bit-compatible with PyTorch.
//!
//! [`AdamW::step`] reproduces `torch.optim.AdamW`'s single-tensor path (the one PyTorch uses
//! for CPU tensors) operation by operation, so a CPU run matches PyTorch bit for bit.
//! Parameters that are not `f32` (bf16 / f16 on CUDA) get an `f32` master copy; the moments are
//! always `f32`; the update is applied to the master and copied (rounded) into the parameter.
//! The whole state (moments, masters, per-parameter step counts) saves to / loads from one
//! safetensors file, which is what makes `--resume` exact.
use crate::error::{Result, TrainError};
use std::path::Path;
use tch::{Kind, Tensor};

/// AdamW hyper-parameters (lr is passed per step).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.999).
    pub beta2: f64,
    /// Denominator epsilon (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0.0 in the reference).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    name: String,
    param: Tensor,
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

/// `torch.optim.AdamW` over a fixed list of named parameters.
///
/// ```no_run
/// use lt_train::{AdamW, AdamWConfig};
/// let p = tch::Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
/// let mut opt = AdamW::new(vec![("p".to_string(), p.shallow_clone())], AdamWConfig::default());
/// (&p * &p).sum(tch::Kind::Float).backward();
/// let norm = opt.clip_grad_norm(1.0).unwrap();
/// assert!((norm - 20f64.sqrt()).abs() < 1e-5);
/// opt.step(1e-3).unwrap();
/// assert!(p.double_value(&[0]) < 1.0);
/// ```
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
}

impl AdamW {
    /// An optimizer over `params` (shallow clones of the model's variables, e.g.
    /// `Model::named_parameters()`), with zeroed moments.
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        let slots = tch::no_grad(|| {
            params
                .into_iter()
                .map(|(name, param)| {
                    let master = (param.kind() != Kind::Float)
                        .then(|| param.detach().to_kind(Kind::Float).copy());
                    let zeros = param.zeros_like().to_kind(Kind::Float);
                    Slot {
                        name,
                        master,
                        exp_avg: zeros.copy(),
                        exp_avg_sq: zeros,
                        param,
                        step: 0,
                    }
                })
                .collect()
        });
        Self { cfg, slots }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of updates applied so far (of the first parameter; all equal in practice).
    pub fn steps(&self) -> i64 {
        self.slots.first().map_or(0, |s| s.step)
    }

    /// Names of the optimized parameters, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Zero every gradient (keeps the buffers; the next backward overwrites with `0 + g = g`).
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// The global L2 norm of all gradients (`clip_grad_norm_`'s `total_norm`), without clipping.
    pub fn grad_norm(&self) -> Result<f64> {
        Ok(self.total_norm()?.map_or(0.0, |t| t.double_value(&[])))
    }

    fn total_norm(&self) -> Result<Option<Tensor>> {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .slots
                .iter()
                .map(|s| s.param.grad())
                .filter(|g| g.defined())
                .map(|g| g.f_norm())
                .collect::<Result<_, _>>()?;
            if norms.is_empty() {
                return Ok(None);
            }
            let dev = norms[0].device();
            let norms: Vec<Tensor> = norms.iter().map(|n| n.to_device(dev)).collect();
            Ok(Some(Tensor::f_stack(&norms, 0)?.f_norm()?))
        })
    }

    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient by
    /// `min(max_norm / (total + 1e-6), 1)` and returns the pre-clip total norm.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let Some(total) = self.total_norm()? else {
            return Ok(0.0);
        };
        tch::no_grad(|| -> Result<()> {
            // `max_norm / tensor` is `tensor.reciprocal() * max_norm` in PyTorch.
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(max_norm)?;
            let coef = coef.f_clamp_max(1.0)?;
            for s in &mut self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    let c = coef.to_device(g.device()).to_kind(g.kind());
                    let _ = g.f_mul_(&c)?;
                }
            }
            Ok(())
        })?;
        Ok(total.double_value(&[]))
    }

    /// One AdamW update with learning rate `lr`; parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        tch::no_grad(|| -> Result<()> {
            for s in &mut self.slots {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if grad.kind() == Kind::Float {
                    grad
                } else {
                    grad.f_to_kind(Kind::Float)?
                };
                s.step += 1;
                let target = s.master.as_mut().unwrap_or(&mut s.param);
                if weight_decay != 0.0 {
                    let _ = target.f_mul_scalar_(1.0 - lr * weight_decay)?;
                }
                let _ = s.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2); the kernel computes
                // `self + value * t1 * t2`, so pre-scaling t1 by `value` is the same arithmetic.
                let _ = s.exp_avg_sq.f_mul_scalar_(beta2)?;
                let scaled = grad.f_mul_scalar(1.0 - beta2)?;
                let _ = s.exp_avg_sq.f_addcmul_(&scaled, &grad)?;
                let step = s.step as f64;
                let bias_correction1 = 1.0 - beta1.powf(step);
                let bias_correction2 = 1.0 - beta2.powf(step);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);
                let denom = s
                    .exp_avg_sq
                    .f_sqrt()?
                    .f_div_scalar(bias_correction2_sqrt)?
                    .f_add_scalar(eps)?;
                // param.addcdiv_(exp_avg, denom, value=-step_size): `self + value * t1 / t2`.
                let num = s.exp_avg.f_mul_scalar(-step_size)?;
                let _ = target.f_addcdiv_(&num, &denom)?;
                if let Some(master) = &s.master {
                    s.param.f_copy_(master)?;
                }
            }
            Ok(())
        })
    }

    /// The optimizer state as named tensors: `exp_avg.<name>`, `exp_avg_sq.<name>`,
    /// `master.<name>` (non-f32 parameters only) and `__steps__` (per-parameter step counts).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 2 + 1);
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", s.name),
                s.exp_avg_sq.shallow_clone(),
            ));
            if let Some(m) = &s.master {
                out.push((format!("master.{}", s.name), m.shallow_clone()));
            }
        }
        let steps: Vec<i64> = self.slots.iter().map(|s| s.step).collect();
        out.push(("__steps__".to_string(), Tensor::from_slice(&steps)));
        out
    }

    /// Write the state to a safetensors file (moved to CPU first).
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu: Vec<(String, Tensor)> = self
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&cpu, path)?;
        Ok(())
    }

    /// Restore the state written by [`AdamW::save`]; every parameter must be present with the
    /// same shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bad = |m: String| TrainError::checkpoint(path, m);
        let map: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let steps = map
            .get("__steps__")
            .ok_or_else(|| bad("missing `__steps__`".into()))?;
        let steps: Vec<i64> = Vec::<i64>::try_from(steps)?;
        if steps.len() != self.slots.len() {
            return Err(bad(format!(
                "holds {} parameters, the model has {}",
                steps.len(),
                self.slots.len()
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for (s, step) in self.slots.iter_mut().zip(steps) {
                let shape = s.exp_avg.size();
                let get = |k: &str| -> Result<Tensor> {
                    let key = format!("{k}.{}", s.name);
                    let t = map
                        .get(&key)
                        .ok_or_else(|| bad(format!("missing `{key}`")))?;
                    if t.size() != shape {
                        return Err(bad(format!(
                            "`{key}` has shape {:?}, the parameter {:?}",
                            t.size(),
                            shape
                        )));
                    }
                    Ok(t.shallow_clone())
                };
                let (m, v) = (get("exp_avg")?, get("exp_avg_sq")?);
                let master = if s.master.is_some() {
                    Some(get("master")?)
                } else {
                    None
                };
                s.exp_avg.f_copy_(&m)?;
                s.exp_avg_sq.f_copy_(&v)?;
                if let Some(mt) = master {
                    if let Some(dst) = s.master.as_mut() {
                        dst.f_copy_(&mt)?;
                    }
                    s.param.f_copy_(&mt)?;
                }
                s.step = step;
            }
            Ok(())
        })
    }
}
