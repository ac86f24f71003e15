//! The [`Embedder`] trait: images and texts into one vector space, in batches; and
//! [`ClipEmbedder`], the CLIP model of a folder behind it.
//!
//! A KB without an embedder works in BM25 mode. The KB records its embedder's id and refuses to
//! mix embeddings of two models.
//!
//! Not here: the model itself (`clip/`), when the KB calls the embedder (`kb.rs`).

pub mod clip;

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::error::ModelError;
use crate::tensor::Device;
use clip::{ClipConfig, ClipError, ClipModel, WeightPrecision};

/// Turns images and texts into vectors of one space, a batch at a time.
pub trait Embedder: Send + Sync {
    /// Names the model and its output dimension, e.g. `clip-vit-b32/512`. Two embedders with the
    /// same id must give the same vectors.
    fn id(&self) -> String;
    /// Length of every vector this embedder returns.
    fn dim(&self) -> usize;
    /// How many inputs one call should carry for the embedder to run at its best. By default, 16.
    fn batch_size(&self) -> usize {
        16
    }
    /// Embeds images, one vector each, in order.
    fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Embeds texts, one vector each, in order.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Embeds one image (a batch of one).
    fn embed_image(&self, image: &DynamicImage) -> Result<Vec<f32>, ModelError> {
        one(self.id(), self.embed_images(std::slice::from_ref(image))?)
    }
    /// Embeds one text (a batch of one).
    fn embed_text(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        one(self.id(), self.embed_texts(&[text])?)
    }
}

fn one(model: String, mut vectors: Vec<Vec<f32>>) -> Result<Vec<f32>, ModelError> {
    match (vectors.pop(), vectors.is_empty()) {
        (Some(v), true) => Ok(v),
        _ => Err(ModelError::Embed {
            model,
            reason: "the embedder did not return one vector for one input".into(),
        }),
    }
}

/// Scales a vector to unit length (left as is when it is all zeros).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The CLIP model of a folder (transformers' layout) as the KB's embedder.
///
/// Its id is `clip:<folder name>:<fingerprint>/<dim>`, the fingerprint a blake3 of the config,
/// the tokenizer, the processor and each weights file's size and first and last MiB: the same
/// folder copied elsewhere keeps its id, another training of the same config does not. The
/// precision and the device do not enter the id: they move an embedding by less than retrieval
/// notices (tests/clip_model.rs states by how much).
///
/// [`ClipEmbedder::lazy`] reads only the config and the fingerprint; the weights load on the
/// first embedding, so opening a KB for a BM25 search or a listing costs nothing.
pub struct ClipEmbedder {
    folder: PathBuf,
    id: String,
    dim: usize,
    device: Option<Device>,
    precision: WeightPrecision,
    model: std::sync::OnceLock<ClipModel>,
    loading: std::sync::Mutex<()>,
}

impl std::fmt::Debug for ClipEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEmbedder")
            .field("id", &self.id)
            .field("loaded", &self.model.get().is_some())
            .finish_non_exhaustive()
    }
}

impl ClipEmbedder {
    /// Loads the model folder onto `device` now.
    ///
    /// # Errors
    /// A missing or bad file of the folder (named), or a tensor that does not fit the config.
    pub fn open(
        folder: impl AsRef<Path>,
        device: Device,
        precision: WeightPrecision,
    ) -> Result<ClipEmbedder, ClipError> {
        let embedder = ClipEmbedder::prepare(folder.as_ref(), Some(device), precision)?;
        embedder.model()?;
        Ok(embedder)
    }

    /// Reads the folder's config and fingerprint now and its weights on first use, onto the
    /// device `REIMAGEN_DEVICE` names (`cpu`, `gpu`, `auto`; by default `auto`).
    ///
    /// # Errors
    /// A missing or bad `config.json`, or a file of the folder that cannot be read.
    pub fn lazy(
        folder: impl AsRef<Path>,
        precision: WeightPrecision,
    ) -> Result<ClipEmbedder, ClipError> {
        ClipEmbedder::prepare(folder.as_ref(), None, precision)
    }

    fn prepare(
        folder: &Path,
        device: Option<Device>,
        precision: WeightPrecision,
    ) -> Result<ClipEmbedder, ClipError> {
        let config = ClipConfig::from_file(folder.join("config.json"))?;
        let name = folder
            .canonicalize()
            .unwrap_or_else(|_| folder.to_path_buf())
            .file_name()
            .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
        Ok(ClipEmbedder {
            id: format!(
                "clip:{name}:{}/{}",
                fingerprint(folder)?,
                config.projection_dim
            ),
            dim: config.projection_dim,
            folder: folder.to_path_buf(),
            device,
            precision,
            model: std::sync::OnceLock::new(),
            loading: std::sync::Mutex::new(()),
        })
    }

    /// The model, loaded on the first call.
    ///
    /// # Errors
    /// As [`ClipModel::load`], or an unknown `REIMAGEN_DEVICE`.
    pub fn model(&self) -> Result<&ClipModel, ClipError> {
        if let Some(model) = self.model.get() {
            return Ok(model);
        }
        // One loader at a time: the others wait for it rather than read the weights again.
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(model) = self.model.get() {
            return Ok(model);
        }
        let device = match &self.device {
            Some(d) => d.clone(),
            None => Device::from_env()?,
        };
        let model = ClipModel::load(&self.folder, device, self.precision)?;
        Ok(self.model.get_or_init(|| model))
    }

    /// The model folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    fn failed(&self, e: ClipError) -> ModelError {
        ModelError::Clip {
            model: self.id.clone(),
            source: e,
        }
    }
}

impl Embedder for ClipEmbedder {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn batch_size(&self) -> usize {
        32
    }

    fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.model().map_err(|e| self.failed(e))?;
        model.embed_images(images).map_err(|e| self.failed(e))
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let model = self.model().map_err(|e| self.failed(e))?;
        model.embed_texts(texts).map_err(|e| self.failed(e))
    }
}

/// A short blake3 over what makes a model folder's vectors what they are.
fn fingerprint(folder: &Path) -> Result<String, ClipError> {
    use std::io::{Read, Seek, SeekFrom};
    const SAMPLE: u64 = 1 << 20;
    let io = |path: &Path, e: std::io::Error| ClipError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut hasher = blake3::Hasher::new();
    for name in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        let path = folder.join(name);
        hasher.update(&std::fs::read(&path).map_err(|e| io(&path, e))?);
    }
    let mut weights: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(|e| io(folder, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    for path in weights {
        let mut file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        hasher.update(&len.to_le_bytes());
        let mut head = Vec::new();
        (&mut file)
            .take(SAMPLE)
            .read_to_end(&mut head)
            .map_err(|e| io(&path, e))?;
        hasher.update(&head);
        if len > SAMPLE {
            file.seek(SeekFrom::Start(len.saturating_sub(SAMPLE).max(SAMPLE)))
                .map_err(|e| io(&path, e))?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail).map_err(|e| io(&path, e))?;
            hasher.update(&tail);
        }
    }
    Ok(hasher.finalize().to_hex()[..12].to_string())
}
