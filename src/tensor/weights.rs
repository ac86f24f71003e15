//! [`Weights`]: a checkpoint's tensors — one `*.safetensors` file, or a sharded checkpoint through
//! `model.safetensors.index.json` — seen through a cheap, cloneable, scoped view that carries a
//! name prefix, the device tensors are made on, and whether weights may stay f16 there.
//!
//! Each file is memory-mapped and its header parsed once, when the checkpoint is opened; a
//! tensor's bytes are read (and converted from f32, f16 or bf16) only when it is asked for, so a
//! model reads each weight once and the checkpoint never sits in memory whole. A missing or
//! mis-shaped tensor is an error naming the full tensor name, the file and both shapes.
//!
//! Not here: the layers built from these tensors (`nn.rs`), anything about a model's config.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// One mapped file.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// Where a tensor's bytes are, from its file's header (parsed once, at open).
struct Entry {
    shard: usize,
    dtype: WeightsDtype,
    shape: Vec<usize>,
    /// Byte range in the mapped file.
    start: usize,
    end: usize,
}

/// The opened checkpoint, shared by every view of it.
struct Checkpoint {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// The file, index or folder that was opened, for messages about the checkpoint as a whole.
    origin: PathBuf,
}

/// A scoped view of a checkpoint's tensors: the checkpoint (shared), a name prefix, the device
/// tensors are made on, and whether weights may stay f16. Cloning and [`Weights::pp`] are cheap
/// (an `Arc` and a string), so model code hands a view down to each layer, in the order of the
/// checkpoint's names, and never builds a tensor name with `format!`.
///
/// ```no_run
/// use reimagen::tensor::{Device, Weights};
/// let vb = Weights::open("models/clip", &Device::Cpu)?; // file, index.json or folder
/// let layer = vb.pp("text_model.encoder.layers").pp(3);
/// let w = layer.get("self_attn.q_proj.weight", &[512, 512])?; // f32, shape-checked
/// assert_eq!(layer.prefix(), "text_model.encoder.layers.3");
/// # Ok::<(), reimagen::tensor::TensorError>(())
/// ```
///
/// By default the prefix is empty and weights are f32; [`Weights::with_f16`] keeps the weights
/// that [`Weights::get_weight`] loads (those of `Linear`, `Conv2d`, `Embedding`) f16 on a GPU.
#[derive(Clone)]
pub struct Weights {
    checkpoint: Arc<Checkpoint>,
    prefix: String,
    device: Device,
    f16: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Weights({}, {} tensors, prefix {:?}, {}{})",
            self.checkpoint.origin.display(),
            self.checkpoint.entries.len(),
            self.prefix,
            self.device.name(),
            if self.f16 { ", f16" } else { "" }
        )
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> TensorError {
    TensorError::Weights {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path, e: &std::io::Error) -> TensorError {
    TensorError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Checkpoint {
    fn new(origin: &Path) -> Checkpoint {
        Checkpoint {
            shards: Vec::new(),
            entries: HashMap::new(),
            origin: origin.to_path_buf(),
        }
    }

    fn open(path: &Path) -> Result<Checkpoint> {
        if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.exists() {
                return Checkpoint::open(&index);
            }
            return Checkpoint::open(&path.join("model.safetensors"));
        }
        if path.extension().is_some_and(|e| e == "json") {
            return Checkpoint::open_index(path);
        }
        let mut checkpoint = Checkpoint::new(path);
        checkpoint.add_shard(path.to_path_buf())?;
        Ok(checkpoint)
    }

    fn open_index(index: &Path) -> Result<Checkpoint> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read(index).map_err(|e| io(index, &e))?;
        let parsed: Index = serde_json::from_slice(&text)
            .map_err(|e| bad(index, format!("not a safetensors index: {e}")))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut checkpoint = Checkpoint::new(index);
        let files: BTreeSet<&String> = parsed.weight_map.values().collect();
        for file in files {
            if file.contains("..") || Path::new(file).is_absolute() {
                return Err(bad(
                    index,
                    format!("shard {file:?} leaves the checkpoint folder"),
                ));
            }
            checkpoint.add_shard(dir.join(file))?;
        }
        for name in parsed.weight_map.keys() {
            if !checkpoint.entries.contains_key(name) {
                return Err(bad(
                    index,
                    format!("tensor {name:?} is listed but not in its shard"),
                ));
            }
        }
        Ok(checkpoint)
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let file = std::fs::File::open(&path).map_err(|e| io(&path, &e))?;
        // SAFETY: the map is only read. A checkpoint changed or truncated by another process
        // while it is mapped could change the bytes under us (or fault on a truncated page); we
        // accept that, as every memory-mapping model loader does: checkpoints are not written in
        // place, and the header and every tensor's range are checked here, once, against the
        // file's size.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(&path, &e))?;
        let (header, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| bad(&path, format!("not safetensors: {e}")))?;
        let data_start = 8 + header;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            let dtype = match info.dtype {
                Dtype::F32 => WeightsDtype::F32,
                Dtype::F16 => WeightsDtype::F16,
                Dtype::BF16 => WeightsDtype::Bf16,
                other => {
                    return Err(bad(
                        &path,
                        format!(
                            "tensor {name:?} has dtype {other:?}; only f32, f16 and bf16 are read"
                        ),
                    ));
                }
            };
            let (start, end) = info.data_offsets;
            let entry = Entry {
                shard,
                dtype,
                shape: info.shape.clone(),
                start: data_start + start,
                end: data_start + end,
            };
            // `read_metadata` checked that the ranges tile the data and that it ends at the
            // file's end; checked again here because the reads below rely on it.
            if entry.end > map.len() || entry.start > entry.end {
                return Err(bad(
                    &path,
                    format!("tensor {name:?} lies past the file's end"),
                ));
            }
            if let Some(other) = self.entries.get(&name) {
                return Err(bad(
                    &path,
                    format!(
                        "tensor {name:?} is also in {}",
                        self.shards[other.shard].path.display()
                    ),
                ));
            }
            self.entries.insert(name, entry);
        }
        self.shards.push(Shard { path, map });
        Ok(())
    }
}

impl Weights {
    /// Opens a checkpoint for tensors on `device`: a `.safetensors` file, a
    /// `model.safetensors.index.json` (sharded), or a folder holding either (the index wins).
    /// Files are memory-mapped and their headers parsed now; tensors are read when asked for.
    ///
    /// # Errors
    /// A missing or unreadable file, one that is not valid safetensors, a dtype other than
    /// f32/f16/bf16, or an index that names a tensor its shard lacks.
    pub fn open(path: impl AsRef<Path>, device: &Device) -> Result<Weights> {
        Ok(Weights {
            checkpoint: Arc::new(Checkpoint::open(path.as_ref())?),
            prefix: String::new(),
            device: device.clone(),
            f16: false,
        })
    }

    /// The view below `name`: its tensors are asked for by the rest of their name.
    /// `vb.pp("encoder").pp("layers").pp(3)` is `vb.pp("encoder.layers.3")`.
    #[must_use]
    pub fn pp(&self, name: impl Display) -> Weights {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() {
            name
        } else if name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Weights {
            prefix,
            ..self.clone()
        }
    }

    /// The same view making its tensors on `device`.
    #[must_use]
    pub fn with_device(&self, device: &Device) -> Weights {
        Weights {
            device: device.clone(),
            ..self.clone()
        }
    }

    /// The same view, with the weights loaded by [`Weights::get_weight`] (those of `Linear`,
    /// `Conv2d` and `Embedding`) kept f16 on a GPU when `f16` is true: half the memory and
    /// bandwidth; the kernels accumulate in f32. On the CPU backend, which computes in f32
    /// anyway, weights stay exactly as stored. By default, false.
    #[must_use]
    pub fn with_f16(&self, f16: bool) -> Weights {
        Weights {
            f16,
            ..self.clone()
        }
    }

    /// Whether [`Weights::with_f16`] is on.
    pub fn f16(&self) -> bool {
        self.f16
    }

    /// The device tensors are made on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The prefix of this view, e.g. `"text_model.encoder.layers.3"` (empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name of `name` in this view.
    pub fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The names below this view's prefix (without it), sorted.
    pub fn names(&self) -> Vec<String> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", self.prefix)
        };
        let mut names: Vec<String> = self
            .checkpoint
            .entries
            .keys()
            .filter_map(|n| n.strip_prefix(&strip).map(str::to_string))
            .collect();
        names.sort_unstable();
        names
    }

    /// Whether the checkpoint holds `name` below this view.
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.entries.contains_key(&self.full_name(name))
    }

    fn entry(&self, name: &str) -> Result<(String, &Entry)> {
        let full = self.full_name(name);
        match self.checkpoint.entries.get(&full) {
            Some(entry) => Ok((full, entry)),
            None => Err(TensorError::MissingTensor {
                name: full,
                path: self.checkpoint.origin.clone(),
            }),
        }
    }

    fn path_of(&self, entry: &Entry) -> &Path {
        &self.checkpoint.shards[entry.shard].path
    }

    fn bytes(&self, entry: &Entry) -> &[u8] {
        &self.checkpoint.shards[entry.shard].map[entry.start..entry.end]
    }

    fn check_shape(&self, full: &str, entry: &Entry, shape: &[usize]) -> Result<()> {
        if entry.shape != shape {
            return Err(TensorError::WeightShape {
                name: full.to_string(),
                path: self.path_of(entry).to_path_buf(),
                found: entry.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// The stored element type and shape of `name`.
    ///
    /// # Errors
    /// When the tensor is missing.
    pub fn info(&self, name: &str) -> Result<(WeightsDtype, Vec<usize>)> {
        let (_, entry) = self.entry(name)?;
        Ok((entry.dtype, entry.shape.clone()))
    }

    /// The values of `name` on the host, in f32, with its shape (for what a model keeps on the
    /// host, such as a config-like buffer).
    ///
    /// # Errors
    /// When the tensor is missing.
    pub fn values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (_, entry) = self.entry(name)?;
        Ok((self.widen(entry), entry.shape.clone()))
    }

    fn widen(&self, entry: &Entry) -> Vec<f32> {
        let data = self.bytes(entry);
        match entry.dtype {
            WeightsDtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            WeightsDtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            WeightsDtype::Bf16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    fn halve(&self, entry: &Entry) -> Vec<half::f16> {
        if entry.dtype == WeightsDtype::F16 {
            self.bytes(entry)
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect()
        } else {
            self.widen(entry)
                .into_iter()
                .map(half::f16::from_f32)
                .collect()
        }
    }

    /// The tensor `name` in f32 on this view's device, checked to have `shape`.
    ///
    /// # Errors
    /// [`TensorError::MissingTensor`] or [`TensorError::WeightShape`] (each naming the full
    /// tensor name and the file), or the tensor does not fit the device.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (full, entry) = self.entry(name)?;
        self.check_shape(&full, entry, shape)?;
        Tensor::from_vec(self.widen(entry), shape, &self.device)
    }

    /// The tensor `name` in f32 with whatever shape it has (for tensors whose shape the config
    /// does not fix). Prefer [`Weights::get`].
    ///
    /// # Errors
    /// When the tensor is missing or does not fit the device.
    pub fn get_unshaped(&self, name: &str) -> Result<Tensor> {
        let (_, entry) = self.entry(name)?;
        Tensor::from_vec(self.widen(entry), &entry.shape, &self.device)
    }

    /// The tensor `name` as f16 weights ([`Tensor::weights_f16`]), checked to have `shape`:
    /// kept f16 on a GPU (for `linear`, `conv2d` and `embedding`), widened back to f32 on the CPU.
    /// f16 values are taken bit for bit; f32 and bf16 are rounded to the nearest f16.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get_f16(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (full, entry) = self.entry(name)?;
        self.check_shape(&full, entry, shape)?;
        Tensor::weights_f16(&self.halve(entry), shape, &self.device)
    }

    /// A layer's weight: [`Weights::get_f16`] when [`Weights::with_f16`] is on and the device is
    /// a GPU, else [`Weights::get`]. What `Linear`, `Conv2d` and `Embedding` load.
    ///
    /// # Errors
    /// As [`Weights::get`].
    pub fn get_weight(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.f16 && matches!(self.device, Device::Wgpu(_)) {
            self.get_f16(name, shape)
        } else {
            self.get(name, shape)
        }
    }
}
