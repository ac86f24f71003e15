//! CLIP in transformers' `CLIPModel` layout, on the tensor runtime: a folder that
//! `save_pretrained` wrote (or openai/clip-vit-base-patch32 as downloaded, sharded or not) loads
//! unchanged, on the CPU backend or a GPU.
//!
//! ```no_run
//! use reimagen::embed::clip::{ClipModel, WeightPrecision};
//! use reimagen::tensor::Device;
//! let clip = ClipModel::load("models/clip-vit-base-patch32", Device::from_env()?, WeightPrecision::F32)?;
//! let texts = clip.embed_texts(&["a photo of a cat", "a photo of a dog"])?;
//! assert_eq!(texts[0].len(), clip.config().projection_dim);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - `config.rs` — [`ClipConfig`] from `config.json`.
//! - `tokenizer.rs` — [`ClipTokenizer`] from `tokenizer.json`.
//! - `preprocess.rs` — [`ImageProcessor`] from `preprocessor_config.json`.
//! - `encoder.rs` — the pre-LN blocks, on the runtime's layer kit (`tensor::nn`).
//! - `text.rs`, `vision.rs` — the towers; here — [`ClipModel`]: both towers, the projections and
//!   the L2 normalisation.
//!
//! Not here: the `Embedder` trait and its CLIP implementation (`embed/mod.rs`), anything about
//! the knowledge base.

mod config;
mod encoder;
mod error;
mod preprocess;
mod text;
mod tokenizer;
mod vision;

use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::tensor::nn::Linear;
use crate::tensor::{Device, Tensor, Weights};

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use error::ClipError;
pub use preprocess::{ImageProcessor, Resample, ResizeTo};
pub use text::{TextOutput, TextTransformer};
pub use tokenizer::{ClipTokenizer, Padding, TokenBatch};
pub use vision::VisionTransformer;

/// How weight matrices are kept. Norms, biases and positions stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// As stored, widened to f32.
    #[default]
    F32,
    /// `Linear`, `Conv2d` and `Embedding` weights in f16 on a GPU (half the memory and
    /// bandwidth; the kernels accumulate in f32). The CPU backend keeps them as stored.
    F16,
}

/// transformers' `CLIPModel`, with the tokenizer and the image processor of its folder.
pub struct ClipModel {
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    processor: ImageProcessor,
    text_model: TextTransformer,
    vision_model: VisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    device: Device,
    folder: PathBuf,
}

impl std::fmt::Debug for ClipModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipModel")
            .field("folder", &self.folder)
            .field("device", &self.device.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClipModel {
    /// Loads a model folder: `config.json`, `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`), `tokenizer.json`, `preprocessor_config.json`.
    ///
    /// # Errors
    /// A missing or bad file; a tensor missing or shaped otherwise than the config implies
    /// (naming the tensor, the file and both shapes).
    pub fn load(
        folder: impl AsRef<Path>,
        device: Device,
        precision: WeightPrecision,
    ) -> Result<ClipModel, ClipError> {
        let folder = folder.as_ref().to_path_buf();
        let config = ClipConfig::from_file(folder.join("config.json"))?;
        let tokenizer = ClipTokenizer::from_file(
            folder.join("tokenizer.json"),
            config.text.max_position_embeddings,
            config.text.eos_token_id,
        )?;
        let processor = ImageProcessor::from_file(folder.join("preprocessor_config.json"))?;
        let vb = Weights::open(&folder, &device)?.with_f16(precision == WeightPrecision::F16);
        let proj = config.projection_dim;
        Ok(ClipModel {
            text_model: TextTransformer::new(vb.pp("text_model"), &config.text)?,
            vision_model: VisionTransformer::new(vb.pp("vision_model"), &config.vision)?,
            text_projection: Linear::new(
                vb.pp("text_projection"),
                config.text.hidden_size,
                proj,
                false,
            )?,
            visual_projection: Linear::new(
                vb.pp("visual_projection"),
                config.vision.hidden_size,
                proj,
                false,
            )?,
            config,
            tokenizer,
            processor,
            device,
            folder,
        })
    }

    /// The configuration read from `config.json`.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The tokenizer of the folder.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The image processor of the folder.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The folder the model was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The text tower on a tokenised batch: last hidden states and pooled states.
    ///
    /// # Errors
    /// Bad ids or a runtime failure.
    pub fn text_forward(&self, tokens: &TokenBatch) -> Result<TextOutput, ClipError> {
        self.text_model.forward(tokens)
    }

    /// Projected, L2-normalised text embeddings `[B, projection_dim]` (transformers'
    /// `get_text_features`, normalised).
    ///
    /// # Errors
    /// Bad ids or a runtime failure.
    pub fn text_features(&self, tokens: &TokenBatch) -> Result<Tensor, ClipError> {
        let pooled = self.text_model.forward(tokens)?.pooled;
        Ok(self.text_projection.forward(&pooled)?.l2_normalize(1e-12)?)
    }

    /// Projected, L2-normalised image embeddings `[N, projection_dim]` from `pixel_values`
    /// `[N, C, S, S]`.
    ///
    /// # Errors
    /// Pixels of another shape, or a runtime failure.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor, ClipError> {
        let pooled = self.vision_model.forward(pixel_values)?;
        Ok(self
            .visual_projection
            .forward(&pooled)?
            .l2_normalize(1e-12)?)
    }

    /// Preprocesses images into `pixel_values` `[N, C, S, S]` on the model's device.
    ///
    /// # Errors
    /// An empty image, or a processor whose output is not the model's `image_size`.
    pub fn pixel_values(&self, images: &[DynamicImage]) -> Result<Tensor, ClipError> {
        let s = self.config.vision.image_size;
        let mut pixels = Vec::with_capacity(images.len() * 3 * s * s);
        for image in images {
            let (values, h, w) = self.processor.pixels(image)?;
            if (h, w) != (s, s) {
                return Err(ClipError::Config {
                    path: self.folder.join("preprocessor_config.json"),
                    key: "crop_size".into(),
                    reason: format!("gives {h}×{w} pixels, the model takes {s}×{s}"),
                });
            }
            pixels.extend_from_slice(&values);
        }
        Ok(Tensor::from_vec(
            pixels,
            &[images.len(), 3, s, s],
            &self.device,
        )?)
    }

    /// Embeds texts: tokenised (cut to the context, padded to the longest), projected, unit length.
    ///
    /// # Errors
    /// A tokenizer or runtime failure.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ClipError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.tokenizer.encode_batch(texts, Padding::Longest)?;
        rows(&self.text_features(&tokens)?)
    }

    /// Embeds images: preprocessed, projected, unit length.
    ///
    /// # Errors
    /// An empty image, or a runtime failure.
    pub fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, ClipError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        rows(&self.image_features(&self.pixel_values(images)?)?)
    }

    /// The text tower's last hidden states `[B, context, D]`, padded to the full context: the
    /// generator's text condition.
    ///
    /// # Errors
    /// A tokenizer or runtime failure.
    pub fn text_condition(&self, texts: &[&str]) -> Result<Tensor, ClipError> {
        let tokens = self.tokenizer.encode_batch(texts, Padding::Context)?;
        Ok(self.text_model.forward(&tokens)?.last_hidden_state)
    }
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>, ClipError> {
    let width = t.shape().last().copied().unwrap_or(0).max(1);
    Ok(t.to_vec()?.chunks(width).map(<[f32]>::to_vec).collect())
}
