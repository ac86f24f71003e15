//! [`Weights`]: tensors read from safetensors files — one `*.safetensors`, or a sharded
//! checkpoint through `model.safetensors.index.json` — in f32, f16 or bf16, handed out as f32
//! tensors on a device.
//!
//! Files are read whole into memory once, and each tensor is converted when asked for; a bad
//! file or a missing tensor is an error naming the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::device::Device;
use super::error::{Result, TensorError};
use super::tensor::Tensor;

/// The element type a tensor is stored with in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WeightsDtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

struct Shard {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// The tensors of a checkpoint, by name.
pub struct Weights {
    shards: Vec<Shard>,
    /// name → shard index
    names: HashMap<String, usize>,
    origin: PathBuf,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weights({}, {} tensors)",
            self.origin.display(),
            self.names.len()
        )
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| TensorError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn bad(path: &Path, reason: impl Into<String>) -> TensorError {
    TensorError::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Weights {
    /// Opens a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a folder
    /// holding either (the index wins).
    ///
    /// ```no_run
    /// use reimagen::tensor::{Device, Weights};
    /// let weights = Weights::open("models/clip")?; // model.safetensors or a sharded index
    /// let w = weights.tensor_shaped("text_projection.weight", &[512, 512], &Device::Cpu)?;
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// A missing or unreadable file, or one that is not valid safetensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Weights> {
        let path = path.as_ref();
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.exists() {
                return Weights::open(index);
            }
            return Weights::open(path.join("model.safetensors"));
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Weights::open_index(path);
        }
        let mut weights = Weights {
            shards: Vec::new(),
            names: HashMap::new(),
            origin: path.to_path_buf(),
        };
        weights.add_shard(path.to_path_buf())?;
        Ok(weights)
    }

    fn open_index(index: &Path) -> Result<Weights> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = read(index)?;
        let parsed: Index = serde_json::from_slice(&text)
            .map_err(|e| bad(index, format!("not a safetensors index: {e}")))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut weights = Weights {
            shards: Vec::new(),
            names: HashMap::new(),
            origin: index.to_path_buf(),
        };
        let files: std::collections::BTreeSet<&String> = parsed.weight_map.values().collect();
        for file in files {
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(bad(
                    index,
                    format!("shard {file:?} leaves the checkpoint folder"),
                ));
            }
            weights.add_shard(dir.join(file))?;
        }
        for name in parsed.weight_map.keys() {
            if !weights.names.contains_key(name) {
                return Err(bad(
                    index,
                    format!("tensor {name:?} is listed but not in its shard"),
                ));
            }
        }
        Ok(weights)
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let bytes = read(&path)?;
        let names: Vec<String> = {
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| bad(&path, format!("not safetensors: {e}")))?;
            for (name, view) in st.tensors() {
                if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                    return Err(bad(
                        &path,
                        format!(
                            "tensor {name:?} has dtype {:?}; only f32, f16 and bf16 are read",
                            view.dtype()
                        ),
                    ));
                }
            }
            st.names().into_iter().map(str::to_string).collect()
        };
        let index = self.shards.len();
        self.shards.push(Shard { path, bytes });
        for name in names {
            self.names.insert(name, index);
        }
        Ok(())
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.names.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn view(&self, name: &str) -> Result<(safetensors::tensor::TensorView<'_>, &Path)> {
        let shard = self
            .names
            .get(name)
            .ok_or_else(|| TensorError::MissingTensor {
                name: name.to_string(),
                path: self.origin.clone(),
            })?;
        let shard = &self.shards[*shard];
        let st =
            SafeTensors::deserialize(&shard.bytes).map_err(|e| bad(&shard.path, e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| bad(&shard.path, format!("tensor {name:?}: {e}")))?;
        Ok((view, &shard.path))
    }

    /// The stored element type and shape of `name`.
    ///
    /// # Errors
    /// When the tensor is missing.
    pub fn info(&self, name: &str) -> Result<(WeightsDtype, Vec<usize>)> {
        let (view, _) = self.view(name)?;
        let dtype = match view.dtype() {
            Dtype::F16 => WeightsDtype::F16,
            Dtype::BF16 => WeightsDtype::Bf16,
            _ => WeightsDtype::F32,
        };
        Ok((dtype, view.shape().to_vec()))
    }

    /// The tensor `name` as f32 values with its shape.
    ///
    /// # Errors
    /// When the tensor is missing.
    pub fn get_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (view, _) = self.view(name)?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok((values, view.shape().to_vec()))
    }

    /// The tensor `name` on `device`, in f32.
    ///
    /// # Errors
    /// When the tensor is missing, or does not fit the device.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (values, shape) = self.get_f32(name)?;
        Tensor::from_vec(values, &shape, device)
    }

    /// The tensor `name` as f16 weights ([`Tensor::weights_f16`]): kept f16 on a wgpu device,
    /// for `linear`, `conv2d` and `embedding`. f16 values in the file are taken bit for bit; f32 and bf16
    /// are rounded to f16.
    ///
    /// # Errors
    /// When the tensor is missing, or does not fit the device.
    pub fn tensor_f16(&self, name: &str, device: &Device) -> Result<Tensor> {
        let (view, _) = self.view(name)?;
        let shape = view.shape().to_vec();
        let values: Vec<half::f16> = if view.dtype() == Dtype::F16 {
            view.data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect()
        } else {
            let (v, _) = self.get_f32(name)?;
            v.into_iter().map(half::f16::from_f32).collect()
        };
        Tensor::weights_f16(&values, &shape, device)
    }

    /// Like [`Weights::tensor`], also checking the shape, so a model names the tensor that does
    /// not match its config.
    ///
    /// # Errors
    /// When the tensor is missing or has another shape.
    pub fn tensor_shaped(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let (values, found) = self.get_f32(name)?;
        if found != shape {
            return Err(bad(
                &self.origin,
                format!("tensor {name:?} has shape {found:?}, expected {shape:?}"),
            ));
        }
        Tensor::from_vec(values, shape, device)
    }
}
