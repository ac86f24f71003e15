//! The text condition (docs/generator.md §2): the CLIP folder a stage names, its tokenizer cut
//! and padded to `text_max_length`, and its text tower's last hidden states with the padded rows
//! zeroed — the same CLIP the knowledge base retrieves with. Only the text tower is loaded.
//!
//! Not here: the UNet's use of the states (`unet.rs`), CLIP itself (`crate::embed::clip`).

use std::path::{Path, PathBuf};

use crate::embed::clip::{ClipConfig, ClipTokenizer, Padding, TextTransformer};
use crate::generate::Result;
use crate::tensor::{Device, Tensor, Weights};

use super::config::model_error;
use super::unet::TextCondition;

/// A CLIP text tower serving as a stage's text encoder.
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    tower: TextTransformer,
    max_length: usize,
    dim: usize,
    folder: PathBuf,
    device: Device,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("folder", &self.folder)
            .field("max_length", &self.max_length)
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Loads the text tower of the CLIP folder `folder` for captions of `max_length` tokens.
    ///
    /// # Errors
    /// [`crate::generate::GenerateError::Model`] naming the folder when it is missing, its
    /// config, tokenizer or weights are bad, or `max_length` exceeds its positions.
    pub fn open(folder: &Path, max_length: usize, device: &Device) -> Result<TextEncoder> {
        if !folder.is_dir() {
            return Err(model_error(
                folder,
                "the text encoder folder does not exist",
            ));
        }
        let fail = |e: &dyn std::fmt::Display| model_error(folder, e.to_string());
        let config = ClipConfig::from_file(folder.join("config.json")).map_err(|e| fail(&e))?;
        let text = &config.text;
        if max_length > text.max_position_embeddings {
            return Err(model_error(
                folder,
                format!(
                    "text_max_length {max_length} exceeds the text tower's {} positions",
                    text.max_position_embeddings
                ),
            ));
        }
        let tokenizer =
            ClipTokenizer::from_file(folder.join("tokenizer.json"), max_length, text.eos_token_id)
                .map_err(|e| fail(&e))?;
        let weights = Weights::open(folder, device).map_err(|e| fail(&e))?;
        let tower = TextTransformer::new(weights.pp("text_model"), text).map_err(|e| fail(&e))?;
        Ok(TextEncoder {
            tokenizer,
            tower,
            max_length,
            dim: text.hidden_size,
            folder: folder.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The width of the states (`hidden_size`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The folder it was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The text condition of `captions`: `[N, L, D]` states (padding zeroed) and validity.
    ///
    /// # Errors
    /// A tokenizer or runtime failure.
    pub fn encode(&self, captions: &[&str]) -> Result<TextCondition> {
        let fail = |e: &dyn std::fmt::Display| model_error(&self.folder, e.to_string());
        let tokens = self
            .tokenizer
            .encode_batch(captions, Padding::Context)
            .map_err(|e| fail(&e))?;
        let (n, l) = (tokens.batch, tokens.len);
        let states = self
            .tower
            .forward(&tokens)
            .map_err(|e| fail(&e))?
            .last_hidden_state;
        let valid: Vec<f32> = tokens.mask.iter().map(|&m| (m != 0) as u8 as f32).collect();
        let keep = Tensor::from_vec(valid.clone(), &[n, l, 1], &self.device)?;
        Ok(TextCondition {
            states: states.mul(&keep)?,
            valid,
        })
    }
}
