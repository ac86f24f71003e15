//! [`ClipError`]: what can go wrong loading or running CLIP, naming the file, key or tensor.
//!
//! User mistakes (a folder without a config, a bad key, a tokenizer that does not fit the model,
//! a mis-shaped tensor) are kept apart from runtime failures (a GPU error).
//!
//! Not here: the conversion into the crate's `Error` (`ModelError::Clip`, in `src/error.rs`).

use std::path::PathBuf;

use crate::tensor::TensorError;

/// What went wrong in CLIP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// A file of the model folder is missing or unreadable.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `config.json` or `preprocessor_config.json` holds a bad or unsupported value.
    #[error("{}: {key}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `text_config.hidden_act`.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// `tokenizer.json` could not be loaded or used.
    #[error("{}: {reason}", path.display())]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The tokenizers crate's message, or what does not fit the model.
        reason: String,
    },
    /// An input the model cannot take (an empty batch, ids beyond the vocabulary, pixels of the
    /// wrong size).
    #[error("{0}")]
    Input(String),
    /// The tensor runtime failed while running the model.
    #[error(transparent)]
    Runtime(#[from] TensorError),
}

impl ClipError {
    /// True when the error is about what the user gave (the model folder or the inputs), false
    /// when something broke inside.
    pub fn is_user_error(&self) -> bool {
        match self {
            ClipError::Runtime(e) => matches!(
                e,
                TensorError::Io { .. }
                    | TensorError::Weights { .. }
                    | TensorError::WeightShape { .. }
                    | TensorError::MissingTensor { .. }
            ),
            _ => true,
        }
    }
}
