//! [`ClipTokenizer`]: `tokenizer.json` through the `tokenizers` crate (the library transformers'
//! fast tokenizers wrap), set up as `CLIPTokenizer(padding=True, truncation=True)` is: texts cut
//! to the model's context with the end-of-text token kept last, and a batch padded to its longest
//! text (or to the full context) with the pad token, plus the attention mask.
//!
//! The pad token is `tokenizer_config.json`'s `pad_token` when the folder has one, else
//! `<|endoftext|>` (OpenAI's choice), else the config's end-of-text id. Padding only changes the
//! hidden states at padded positions: the causal mask hides them from every real token.
//!
//! Not here: the model (`text.rs`), image preprocessing (`preprocess.rs`).

use std::path::{Path, PathBuf};

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use super::error::ClipError;

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// To the longest text of the batch (the embedder's choice: less work).
    #[default]
    Longest,
    /// To the model's full context (what a diffusion model's text condition expects).
    Context,
}

/// Token ids and attention masks of a batch, row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids, `batch × len`.
    pub ids: Vec<u32>,
    /// 1 for a real token, 0 for padding, `batch × len`.
    pub mask: Vec<u32>,
    /// Number of texts.
    pub batch: usize,
    /// Tokens per text after padding.
    pub len: usize,
}

impl TokenBatch {
    /// The ids of text `i`, padding included.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.len..(i + 1) * self.len]
    }
}

/// CLIP's tokenizer, truncating to the model's context.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    context: usize,
    pad_id: u32,
    pad_token: String,
    path: PathBuf,
}

const END_OF_TEXT: &str = "<|endoftext|>";

impl ClipTokenizer {
    /// Loads `tokenizer.json` (a file, or the model folder holding it) for a model of
    /// `context` positions whose end-of-text id is `eos_token_id`.
    ///
    /// # Errors
    /// A missing or malformed file, or a context the tokenizer cannot truncate to (shorter than
    /// its special tokens).
    pub fn from_file(
        path: impl AsRef<Path>,
        context: usize,
        eos_token_id: u32,
    ) -> Result<ClipTokenizer, ClipError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("tokenizer.json");
        }
        let fail = |reason: String| ClipError::Tokenizer {
            path: path.clone(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("not found".into()));
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| fail(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: context,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| fail(format!("cannot truncate to {context} tokens: {e}")))?;
        inner.with_padding(None);
        let pad_token = configured_pad_token(&path)
            .filter(|t| inner.token_to_id(t).is_some())
            .or_else(|| {
                inner
                    .token_to_id(END_OF_TEXT)
                    .map(|_| END_OF_TEXT.to_string())
            });
        let (pad_id, pad_token) = match pad_token {
            Some(t) => (inner.token_to_id(&t).unwrap_or(eos_token_id), t),
            None => (
                eos_token_id,
                inner.id_to_token(eos_token_id).unwrap_or_default(),
            ),
        };
        Ok(ClipTokenizer {
            inner,
            context,
            pad_id,
            pad_token,
            path,
        })
    }

    /// The context the texts are cut to.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The id padding uses.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenises a batch: each text cut to the context (the end-of-text token stays last),
    /// padded as `padding` says.
    ///
    /// # Errors
    /// When the tokenizer fails on a text (its message names the file).
    pub fn encode_batch(&self, texts: &[&str], padding: Padding) -> Result<TokenBatch, ClipError> {
        let mut tokenizer = self.inner.clone();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: match padding {
                Padding::Longest => PaddingStrategy::BatchLongest,
                Padding::Context => PaddingStrategy::Fixed(self.context),
            },
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        let encodings =
            tokenizer
                .encode_batch(texts.to_vec(), true)
                .map_err(|e| ClipError::Tokenizer {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(len * texts.len()),
            mask: Vec::with_capacity(len * texts.len()),
            batch: texts.len(),
            len,
        };
        for e in &encodings {
            batch.ids.extend_from_slice(e.get_ids());
            batch.mask.extend_from_slice(e.get_attention_mask());
        }
        Ok(batch)
    }
}

/// `pad_token` from the `tokenizer_config.json` beside `tokenizer.json`: a string, or an
/// added-token object with a `content`.
fn configured_pad_token(tokenizer_json: &Path) -> Option<String> {
    let text =
        std::fs::read_to_string(tokenizer_json.with_file_name("tokenizer_config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    match value.get("pad_token")? {
        serde_json::Value::String(s) => Some(s.clone()),
        obj => obj.get("content")?.as_str().map(str::to_string),
    }
}
