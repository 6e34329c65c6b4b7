//! One decoder for Qwen2 and Llama (in the style of candle-transformers' `qwen2.rs`).
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::cache::KvCache;
use crate::rope::{apply_rope, Rope};
use crate::{ModelConfig, ModelError};

/// Attention mask for [`Model::forward`].
#[derive(Debug, Clone, Copy)]
pub enum AttnMask<'a> {
    /// Plain causal attention over `[cache ++ new tokens]` (SDPA's fused `is_causal` path when
    /// there is no cache / an empty one).
    Causal,
    /// `[B or 1, 1, T, K]` or `[B or 1, T, K]` Bool, `true` = may attend; `K` = keys after the
    /// append (`cache.max_len()` after append, or `T` without a cache).
    Bool(&'a Tensor),
    /// Same shape, float: `0` visible, `-inf` / dtype-min hidden.
    Additive(&'a Tensor),
}

/// Which logits [`Model::forward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every position: `[B, T, vocab]`.
    All,
    /// The last position only: `[B, vocab]`.
    Last,
    /// No lm_head: the final (normed) hidden states `[B, T, hidden]`.
    None,
}

/// A linear layer `y = x Wᵀ + b` with HF weight layout `[out, in]`.
#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, self.b.as_ref())
    }
}

#[derive(Debug)]
struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// HF: variance in f32, normalise in f32, cast back, times weight.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.eps).rsqrt();
        &self.w * y.to_kind(kind)
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

struct AttnInputs<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
    is_causal: bool,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        inp: &AttnInputs<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = x.size3()?;
        let q = self
            .q
            .forward(x)
            .view([b, t, self.heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k
            .forward(x)
            .view([b, t, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v
            .forward(x)
            .view([b, t, self.kv_heads, self.head_dim])
            .transpose(1, 2);
        let q = apply_rope(&q, inp.cos, inp.sin);
        let k = apply_rope(&k, inp.cos, inp.sin);
        let (k, v) = match cache {
            Some((c, layer)) => c.append_layer(layer, &k, &v)?,
            None => (k, v),
        };
        let gqa = self.heads != self.kv_heads;
        let y = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            inp.mask,
            0.0,
            inp.is_causal,
            None::<f64>,
            gqa,
        )?;
        let y = y
            .transpose(1, 2)
            .reshape([b, t, self.heads * self.head_dim]);
        Ok(self.o.forward(&y))
    }
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down
            .forward(&(self.gate.forward(x).silu() * self.up.forward(x)))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    attn: Attention,
    mlp: Mlp,
    ln1: RmsNorm,
    ln2: RmsNorm,
}

impl DecoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        inp: &AttnInputs<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor, ModelError> {
        let h = x + self.attn.forward(&self.ln1.forward(x), inp, cache)?;
        Ok(&h + self.mlp.forward(&self.ln2.forward(&h)))
    }
}

/// A Qwen2 / Llama causal LM on libtorch. Owns its [`nn::VarStore`]; parameter names are the HF
/// names (`model.layers.0.self_attn.q_proj.weight`, ...).
#[derive(Debug)]
pub struct Model {
    pub(crate) vs: nn::VarStore,
    pub(crate) cfg: ModelConfig,
    pub(crate) embed: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied to `embed`.
    pub(crate) lm_head: Option<Tensor>,
    rope: Rope,
    kind: Kind,
    pub(crate) params: Vec<(String, Tensor)>,
}

struct Builder<'a> {
    root: nn::Path<'a>,
    kind: Kind,
    device: Device,
    params: Vec<(String, Tensor)>,
}

impl Builder<'_> {
    fn var(&mut self, name: &str, dims: &[i64]) -> Tensor {
        // tch paths use '.' as separator: walk the HF name's components
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let path = prefix
            .split('.')
            .filter(|c| !c.is_empty())
            .fold(self.root.clone(), |p, c| p.sub(c));
        let t = path.add(leaf, Tensor::zeros(dims, (self.kind, self.device)), true);
        self.params.push((name.to_string(), t.shallow_clone()));
        t
    }
    fn linear(&mut self, name: &str, inp: i64, out: i64, bias: bool) -> Linear {
        let w = self.var(&format!("{name}.weight"), &[out, inp]);
        let b = bias.then(|| self.var(&format!("{name}.bias"), &[out]));
        Linear { w, b }
    }
    fn norm(&mut self, name: &str, dim: i64, eps: f64) -> RmsNorm {
        RmsNorm {
            w: self.var(&format!("{name}.weight"), &[dim]),
            eps,
        }
    }
}

impl Model {
    /// Build the module tree with zero weights (callers fill them).
    pub(crate) fn new_zeroed(
        cfg: &ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self, ModelError> {
        cfg.validate()?;
        let vs = nn::VarStore::new(device);
        let h = cfg.hidden_size as i64;
        let heads = cfg.num_attention_heads as i64;
        let kvh = cfg.kv_heads() as i64;
        let hd = cfg.head_dim() as i64;
        let inter = cfg.intermediate_size as i64;
        let (qkv_b, o_b, mlp_b) = (cfg.qkv_bias(), cfg.o_bias(), cfg.mlp_bias());
        let mut bld = Builder {
            root: vs.root(),
            kind,
            device,
            params: Vec::new(),
        };
        let embed = bld.var("model.embed_tokens.weight", &[cfg.vocab_size as i64, h]);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn = Attention {
                q: bld.linear(&format!("{p}.self_attn.q_proj"), h, heads * hd, qkv_b),
                k: bld.linear(&format!("{p}.self_attn.k_proj"), h, kvh * hd, qkv_b),
                v: bld.linear(&format!("{p}.self_attn.v_proj"), h, kvh * hd, qkv_b),
                o: bld.linear(&format!("{p}.self_attn.o_proj"), heads * hd, h, o_b),
                heads,
                kv_heads: kvh,
                head_dim: hd,
            };
            let mlp = Mlp {
                gate: bld.linear(&format!("{p}.mlp.gate_proj"), h, inter, mlp_b),
                up: bld.linear(&format!("{p}.mlp.up_proj"), h, inter, mlp_b),
                down: bld.linear(&format!("{p}.mlp.down_proj"), inter, h, mlp_b),
            };
            let ln1 = bld.norm(&format!("{p}.input_layernorm"), h, cfg.rms_norm_eps);
            let ln2 = bld.norm(
                &format!("{p}.post_attention_layernorm"),
                h,
                cfg.rms_norm_eps,
            );
            layers.push(DecoderLayer {
                attn,
                mlp,
                ln1,
                ln2,
            });
        }
        let norm = bld.norm("model.norm", h, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| bld.var("lm_head.weight", &[cfg.vocab_size as i64, h]));
        let params = bld.params;
        Ok(Model {
            rope: Rope::new(cfg, device),
            vs,
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            kind,
            params,
        })
    }

    /// Load an HF checkpoint directory (`config.json` + `model.safetensors` or a sharded
    /// `model.safetensors.index.json`) into `kind` on `device`.
    ///
    /// Extra tensors in the checkpoint (e.g. the reference's unused `_q_proj` / `special_embed`)
    /// are ignored, as transformers does; a missing or mis-shaped tensor is an error naming it.
    pub fn load(dir: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let model = Self::new_zeroed(&cfg, device, kind)?;
        crate::io::load_weights(&model, dir)?;
        tracing::info!(
            dir = %dir.display(),
            arch = ?cfg.family(),
            params = model.num_parameters(),
            ?kind,
            ?device,
            "loaded model"
        );
        Ok(model)
    }

    /// A seeded random model: weights ~ N(0, initializer_range), biases 0, norms 1 (HF init).
    pub fn random(
        cfg: &ModelConfig,
        device: Device,
        kind: Kind,
        seed: i64,
    ) -> Result<Self, ModelError> {
        let model = Self::new_zeroed(cfg, device, kind)?;
        tch::manual_seed(seed);
        let std = cfg.initializer_range;
        let _g = tch::no_grad_guard();
        for (name, t) in &model.params {
            let mut t = t.shallow_clone();
            if name.ends_with("norm.weight") {
                let _ = t.fill_(1.0);
            } else if name.ends_with(".bias") {
                let _ = t.zero_();
            } else {
                // sample in f32 on CPU for device/dtype-independent weights
                let r = Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * std;
                t.copy_(&r);
            }
        }
        Ok(model)
    }

    /// The configuration (its `vocab_size` follows [`Model::resize_vocab`]).
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// Device of the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    /// Element kind of the weights.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The variable store (e.g. for an optimizer).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    /// Mutable variable store.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }
    /// Trainable tensors with HF names in a deterministic (HF module) order. Tied models have
    /// no `lm_head.weight` entry. The tensors share storage with the model.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }
    /// Total number of parameters (tied weights counted once).
    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, t)| t.numel()).sum()
    }
    /// Bytes of the parameters.
    pub fn parameter_bytes(&self) -> usize {
        self.num_parameters() * self.kind.elt_size_in_bytes()
    }
    /// The input embedding matrix `[vocab, hidden]`.
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed
    }
    /// The output projection `[vocab, hidden]` (the embedding when tied).
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// An empty cache for `batch` rows with `capacity` preallocated slots (grows when needed).
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache {
        KvCache::new(
            self.cfg.num_hidden_layers,
            batch,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
            capacity,
            self.kind,
            self.device(),
        )
    }

    /// Run the decoder.
    ///
    /// `input_ids`, `position_ids`: `[B, T]` Int64 (positions are arbitrary: holes, repeats,
    /// beyond `max_position_embeddings`). With `cache`, the step's K/V are appended to the cache
    /// first (each row at its own length) and the queries attend to all cached keys: mask columns
    /// = `cache.max_len()` after the append; slots beyond a row's own length are hidden by the
    /// model. Without a cache: self-attention over the `T` tokens. Returns per [`Logits`]:
    /// `[B, T, V]`, `[B, V]` or hidden states `[B, T, H]`, in the model's kind.
    ///
    /// Works under autograd (training) and under `tch::no_grad` (inference).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: AttnMask<'_>,
        mut cache: Option<&mut KvCache>,
        logits: Logits,
    ) -> Result<Tensor, ModelError> {
        let dev = self.device();
        let ids_size = input_ids.size();
        if ids_size.len() != 2 || ids_size[1] == 0 {
            return Err(ModelError::Input(format!(
                "input_ids must be [B, T] with T > 0, got {ids_size:?}"
            )));
        }
        let (b, t) = (ids_size[0], ids_size[1]);
        if position_ids.size() != ids_size {
            return Err(ModelError::Input(format!(
                "position_ids shape {:?} != input_ids shape {ids_size:?}",
                position_ids.size()
            )));
        }
        let ids = input_ids.to_device(dev).to_kind(Kind::Int64);
        let pos = position_ids.to_device(dev).to_kind(Kind::Int64);
        if ids.numel() > 0 {
            let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
            if lo < 0 || hi >= self.cfg.vocab_size as i64 {
                return Err(ModelError::Input(format!(
                    "token id out of range [0, {}): min {lo}, max {hi}",
                    self.cfg.vocab_size
                )));
            }
        }

        // Cache bookkeeping: lengths before the append, positions to record.
        let (lens_before, uniform) = match cache.as_deref_mut() {
            Some(c) => {
                if c.batch() as i64 != b {
                    return Err(ModelError::Input(format!(
                        "cache batch {} != input batch {b}",
                        c.batch()
                    )));
                }
                if c.layers() != self.cfg.num_hidden_layers {
                    return Err(ModelError::Input(format!(
                        "cache has {} layers, model has {}",
                        c.layers(),
                        self.cfg.num_hidden_layers
                    )));
                }
                c.reserve(t as usize);
                (c.lens().to_vec(), c.is_uniform())
            }
            None => (vec![0; b as usize], true),
        };
        let max_before = lens_before.iter().copied().max().unwrap_or(0) as i64;
        let keys = max_before + t;

        // Build the SDPA mask.
        let (attn_mask, is_causal) = self.build_mask(mask, b, t, keys, &lens_before, uniform)?;

        let (cos, sin) = self.rope.cos_sin(&pos, self.kind);
        let inp = AttnInputs {
            cos: &cos,
            sin: &sin,
            mask: attn_mask.as_ref(),
            is_causal,
        };
        let mut x = Tensor::f_embedding(&self.embed, &ids, -1, false, false)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &inp, cache.as_deref_mut().map(|c| (c, i)))?;
        }
        if let Some(c) = cache {
            let flat = Vec::<i64>::try_from(pos.to_device(Device::Cpu).reshape([-1]))?;
            let rows: Vec<Vec<i64>> = flat.chunks(t as usize).map(|r| r.to_vec()).collect();
            c.commit(&rows);
        }
        let x = match logits {
            Logits::Last => x.narrow(1, t - 1, 1),
            _ => x,
        };
        let x = self.norm.forward(&x);
        Ok(match logits {
            Logits::None => x,
            Logits::All => x.linear(self.lm_head(), None::<&Tensor>),
            Logits::Last => x.linear(self.lm_head(), None::<&Tensor>).squeeze_dim(1),
        })
    }

    fn build_mask(
        &self,
        mask: AttnMask<'_>,
        b: i64,
        t: i64,
        keys: i64,
        lens_before: &[usize],
        uniform: bool,
    ) -> Result<(Option<Tensor>, bool), ModelError> {
        let dev = self.device();
        let l0 = lens_before.first().copied().unwrap_or(0) as i64;
        // validity of key columns per row: col < len_before[b] + t
        let valid = || -> Option<Tensor> {
            if uniform {
                return None;
            }
            let lens: Vec<i64> = lens_before.iter().map(|&l| l as i64 + t).collect();
            let lens = Tensor::from_slice(&lens).to_device(dev).view([b, 1, 1, 1]);
            let cols = Tensor::arange(keys, (Kind::Int64, dev)).view([1, 1, 1, keys]);
            Some(cols.lt_tensor(&lens))
        };
        let norm4 = |m: &Tensor| -> Result<Tensor, ModelError> {
            let s = m.size();
            let m = match s.len() {
                3 => m.unsqueeze(1),
                4 => m.shallow_clone(),
                2 => m.view([1, 1, s[0], s[1]]),
                _ => {
                    return Err(ModelError::Input(format!(
                        "mask must be 2-D, 3-D or 4-D, got {s:?}"
                    )))
                }
            };
            let s = m.size();
            if (s[0] != 1 && s[0] != b) || s[1] != 1 || s[2] != t || s[3] != keys {
                return Err(ModelError::Input(format!(
                    "mask shape {s:?} does not fit [{b} or 1, 1, {t}, {keys}] (T={t}, keys after append={keys})"
                )));
            }
            Ok(m.to_device(dev))
        };
        Ok(match mask {
            AttnMask::Causal => {
                if uniform && l0 == 0 {
                    (None, t > 1)
                } else if uniform && t == 1 {
                    (None, false)
                } else {
                    // row r of sequence b sees cols <= len_before[b] + r
                    let base: Vec<i64> = lens_before.iter().map(|&l| l as i64).collect();
                    let base = Tensor::from_slice(&base).to_device(dev).view([b, 1, 1, 1]);
                    let rows = Tensor::arange(t, (Kind::Int64, dev)).view([1, 1, t, 1]);
                    let cols = Tensor::arange(keys, (Kind::Int64, dev)).view([1, 1, 1, keys]);
                    (Some(cols.le_tensor(&(rows + base))), false)
                }
            }
            AttnMask::Bool(m) => {
                let m = norm4(m)?;
                if m.kind() != Kind::Bool {
                    return Err(ModelError::Input(format!(
                        "AttnMask::Bool needs a Bool tensor, got {:?}",
                        m.kind()
                    )));
                }
                let m = match valid() {
                    Some(v) => m.logical_and(&v),
                    None => m,
                };
                (Some(m), false)
            }
            AttnMask::Additive(m) => {
                let m = norm4(m)?.to_kind(self.kind);
                let m = match valid() {
                    Some(v) => m.masked_fill(&v.logical_not(), crate::dtype_min(self.kind)),
                    None => m,
                };
                (Some(m), false)
            }
        })
    }
}

impl Model {
    /// Grow or shrink the vocabulary to `new_vocab` rows (input embedding and untied lm_head).
    ///
    /// Kept rows are copied, grown rows are drawn from `N(0, initializer_range)` (transformers'
    /// `resize_token_embeddings(mean_resizing=False)`), then for every `(id, description_ids)` of
    /// `init`, **in the given order**, row `id` becomes the mean of the rows `description_ids` of
    /// the *current* (partially updated) matrix — in both matrices. The reference iterates its
    /// added tokens in reverse order; pass `init` in that order to reproduce it (e.g. the splitter
    /// then copies the `"\n\n"` row). Entries with empty descriptions are skipped.
    /// `config().vocab_size` is updated.
    pub fn resize_vocab(
        &mut self,
        new_vocab: usize,
        init: &[(usize, Vec<i64>)],
    ) -> Result<(), ModelError> {
        if new_vocab == 0 {
            return Err(ModelError::Input("new vocabulary size must be > 0".into()));
        }
        for (id, desc) in init {
            if *id >= new_vocab {
                return Err(ModelError::Input(format!(
                    "init id {id} >= new vocab {new_vocab}"
                )));
            }
            if let Some(bad) = desc.iter().find(|&&d| d < 0 || d as usize >= new_vocab) {
                return Err(ModelError::Input(format!(
                    "description id {bad} of token {id} out of range"
                )));
            }
        }
        let _g = tch::no_grad_guard();
        let std = self.cfg.initializer_range;
        let resize = |t: &Tensor| -> Tensor {
            let (old, h) = (t.size()[0], t.size()[1]);
            let keep = old.min(new_vocab as i64);
            let n = (Tensor::randn([new_vocab as i64, h], (Kind::Float, Device::Cpu)) * std)
                .to_kind(t.kind())
                .to_device(t.device());
            n.narrow(0, 0, keep).copy_(&t.narrow(0, 0, keep));
            for (id, desc) in init {
                if desc.is_empty() {
                    continue;
                }
                let idx = Tensor::from_slice(desc).to_device(t.device());
                let mean = n.index_select(0, &idx).mean_dim(0, false, t.kind());
                n.narrow(0, *id as i64, 1).copy_(&mean.unsqueeze(0));
            }
            n
        };
        let new_e = resize(&self.embed);
        self.embed.set_data(&new_e);
        if let Some(lm) = self.lm_head.as_mut() {
            let new_l = resize(lm);
            lm.set_data(&new_l);
        }
        self.cfg.vocab_size = new_vocab;
        Ok(())
    }

    /// Save in HF format: `config.json` (current `vocab_size`, `torch_dtype` = `dtype`) and
    /// `model.safetensors`, or shards + `model.safetensors.index.json` above 5 GB; every file is
    /// written to a temporary name and renamed.
    pub fn save_hf(&self, dir: impl AsRef<Path>, dtype: Kind) -> Result<(), ModelError> {
        self.save_hf_sharded(dir, dtype, 5_000_000_000)
    }

    /// [`Model::save_hf`] with an explicit maximum shard size in bytes.
    pub fn save_hf_sharded(
        &self,
        dir: impl AsRef<Path>,
        dtype: Kind,
        max_shard_bytes: usize,
    ) -> Result<(), ModelError> {
        crate::io::save_hf(self, dir.as_ref(), dtype, max_shard_bytes)
    }
}
