//! safetensors loading / saving in HF layout.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::{Model, ModelError};

pub(crate) fn st_kind(d: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match d {
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::F64 => Kind::Double,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::I16 => Kind::Int16,
        D::I8 => Kind::Int8,
        D::U8 => Kind::Uint8,
        D::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn kind_st(k: Kind) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match k {
        Kind::Float => D::F32,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Double => D::F64,
        _ => return None,
    })
}

/// The safetensors files of a checkpoint directory (single file or sharded index).
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::MissingFile(single));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
        path: index.clone(),
        source: e,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: index.clone(),
        source: e,
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Safetensors {
            path: index.clone(),
            msg: "no `weight_map` object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    for f in &files {
        if !f.is_file() {
            return Err(ModelError::MissingFile(f.clone()));
        }
    }
    Ok(files)
}

pub(crate) fn load_weights(model: &Model, dir: &Path) -> Result<(), ModelError> {
    let mut wanted: HashMap<&str, &Tensor> =
        model.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let _g = tch::no_grad_guard();
    for file in weight_files(dir)? {
        let bytes = std::fs::read(&file).map_err(|e| ModelError::Io {
            path: file.clone(),
            source: e,
        })?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
                path: file.clone(),
                msg: e.to_string(),
            })?;
        for (name, view) in st.tensors() {
            let Some(dst) = wanted.remove(name.as_str()) else {
                tracing::debug!(%name, file = %file.display(), "ignoring checkpoint tensor");
                continue;
            };
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let expected = dst.size();
            if found != expected {
                return Err(ModelError::TensorShape {
                    name,
                    path: file.clone(),
                    expected,
                    found,
                });
            }
            let kind = st_kind(view.dtype()).ok_or_else(|| ModelError::Safetensors {
                path: file.clone(),
                msg: format!("tensor `{name}`: unsupported dtype {:?}", view.dtype()),
            })?;
            let src = Tensor::f_from_data_size(view.data(), &found, kind)?;
            let mut dst = dst.shallow_clone();
            dst.f_copy_(&src)?;
        }
    }
    if let Some(name) = model
        .params
        .iter()
        .map(|(n, _)| n.as_str())
        .find(|n| wanted.contains_key(n))
    {
        return Err(ModelError::MissingTensor {
            name: name.to_string(),
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// A CPU tensor's bytes as a safetensors view.
struct Bytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &Bytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor, kind: Kind) -> Result<Bytes, ModelError> {
    let dtype =
        kind_st(kind).ok_or_else(|| ModelError::Input(format!("cannot save as {kind:?}")))?;
    let c = t.to_device(Device::Cpu).to_kind(kind).contiguous();
    let numel = c.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    c.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes {
        dtype,
        shape: c.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ModelError> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, data).map_err(|e| ModelError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

fn write_shard(path: &Path, items: &[(String, Bytes)]) -> Result<(), ModelError> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(
        items.iter().map(|(n, b)| (n.as_str(), b)),
        &Some(meta),
        &tmp,
    )
    .map_err(|e| ModelError::Safetensors {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

pub(crate) fn save_hf(
    model: &Model,
    dir: &Path,
    kind: Kind,
    max_shard_bytes: usize,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    // config.json
    let mut cfg = model.cfg.clone();
    cfg.torch_dtype = Some(crate::kind_name(kind).to_string());
    cfg.extra.entry("model_type").or_insert_with(|| {
        serde_json::Value::String(match model.cfg.family() {
            crate::Family::Qwen2 => "qwen2".into(),
            crate::Family::Llama => "llama".into(),
        })
    });
    cfg.model_type
        .get_or_insert_with(|| match model.cfg.family() {
            crate::Family::Qwen2 => "qwen2".into(),
            crate::Family::Llama => "llama".into(),
        });
    cfg.extra.remove("model_type");
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::Input(e.to_string()))?;
    write_atomic(&dir.join("config.json"), json.as_bytes())?;

    // shards: greedy in parameter order
    let mut shards: Vec<Vec<(String, Bytes)>> = vec![Vec::new()];
    let mut cur = 0usize;
    let mut total = 0usize;
    for (name, t) in &model.params {
        let b = to_bytes(t, kind)?;
        let n = b.data.len();
        if cur > 0 && cur + n > max_shard_bytes {
            shards.push(Vec::new());
            cur = 0;
        }
        cur += n;
        total += n;
        shards
            .last_mut()
            .expect("non-empty")
            .push((name.clone(), b));
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if shards.len() == 1 {
        write_shard(&single, &shards[0])?;
        let _ = std::fs::remove_file(&index);
    } else {
        let n = shards.len();
        let mut map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
            write_shard(&dir.join(&fname), shard)?;
            for (name, _) in shard {
                map.insert(name.clone(), serde_json::Value::String(fname.clone()));
            }
        }
        let idx = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
        let text =
            serde_json::to_string_pretty(&idx).map_err(|e| ModelError::Input(e.to_string()))?;
        write_atomic(&index, text.as_bytes())?;
        let _ = std::fs::remove_file(&single);
    }
    tracing::info!(dir = %dir.display(), shards = shards.len(), bytes = total, "saved HF checkpoint");
    Ok(())
}
