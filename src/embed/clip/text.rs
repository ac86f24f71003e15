//! The text tower, transformers' `CLIPTextTransformer`: token + position embeddings, the causal
//! pre-LN encoder (padded keys hidden too), the final layer norm, and pooling at the end-of-text
//! token exactly as transformers does for the config it reads.
//!
//! Pooling: with `eos_token_id == 2` (OpenAI's configs, written before transformers PR #24773)
//! the pooled position is that of the largest id in each row (OpenAI's end-of-text token is the
//! last of its vocabulary); otherwise it is the first position holding `eos_token_id` (position 0
//! when a row has none, as `argmax` of an all-false row gives).
//!
//! Not here: tokenisation (`tokenizer.rs`), the projection (`mod.rs`).

use crate::tensor::nn::{Embedding, LayerNorm};
use crate::tensor::{Tensor, Weights};

use super::config::ClipTextConfig;
use super::encoder::{Encoder, EncoderShape};
use super::error::ClipError;
use super::tokenizer::TokenBatch;

/// What the text tower gives.
pub struct TextOutput {
    /// `[B, L, D]` after the final layer norm: the generator's text condition.
    pub last_hidden_state: Tensor,
    /// `[B, D]` at each text's end-of-text token (before the projection).
    pub pooled: Tensor,
}

/// `CLIPTextTransformer` (`text_model.*`).
pub struct TextTransformer {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

impl TextTransformer {
    /// Loads `embeddings.*`, `encoder.*`, `final_layer_norm.*` of `vb` (`text_model`).
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, named.
    pub fn new(vb: Weights, config: &ClipTextConfig) -> Result<TextTransformer, ClipError> {
        let d = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        Ok(TextTransformer {
            token_embedding: Embedding::new(
                embeddings.pp("token_embedding"),
                config.vocab_size,
                d,
            )?,
            position_embedding: embeddings
                .pp("position_embedding")
                .get("weight", &[config.max_position_embeddings, d])?,
            encoder: Encoder::new(
                vb.pp("encoder"),
                EncoderShape {
                    width: d,
                    mlp_width: config.intermediate_size,
                    heads: config.num_attention_heads,
                    layers: config.num_hidden_layers,
                    act: config.hidden_act,
                    eps: config.layer_norm_eps,
                },
            )?,
            final_layer_norm: LayerNorm::new(vb.pp("final_layer_norm"), d, config.layer_norm_eps)?,
            config: config.clone(),
        })
    }

    /// Runs the tower on a tokenised batch.
    ///
    /// # Errors
    /// An empty batch, a batch longer than the context, or an id beyond the vocabulary.
    pub fn forward(&self, tokens: &TokenBatch) -> Result<TextOutput, ClipError> {
        let (b, l, d) = (tokens.batch, tokens.len, self.config.hidden_size);
        if b == 0 || l == 0 {
            return Err(ClipError::Input("the text batch is empty".into()));
        }
        if l > self.config.max_position_embeddings {
            return Err(ClipError::Input(format!(
                "{l} tokens exceed the model's context of {}",
                self.config.max_position_embeddings
            )));
        }
        if let Some(bad) = tokens
            .ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ClipError::Input(format!(
                "token id {bad} is beyond the model's vocabulary of {} (does tokenizer.json belong to this model?)",
                self.config.vocab_size
            )));
        }
        // Figure order: embeddings, encoder, final norm, pooling.
        let x = self
            .token_embedding
            .forward(&tokens.ids)?
            .reshape(&[b, l, d])?
            .add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = self.padding_mask(tokens, x.device())?;
        let x = self.encoder.forward(&x, mask.as_ref(), true)?;
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        let rows: Vec<u32> = (0..b)
            .map(|i| (i * l + self.pooled_position(tokens.row(i))) as u32)
            .collect();
        let pooled = last_hidden_state.reshape(&[b * l, d])?.embedding(&rows)?;
        Ok(TextOutput {
            last_hidden_state,
            pooled,
        })
    }

    fn pooled_position(&self, ids: &[u32]) -> usize {
        let eos = self.config.eos_token_id;
        if eos == 2 {
            // The first of the largest ids (torch's argmax).
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&id| id == max).unwrap_or(0)
        } else {
            ids.iter().position(|&id| id == eos).unwrap_or(0)
        }
    }

    /// transformers' `attention_mask` as the kernel's key mask `[B, L]` (0 hides a padded key
    /// from every query and head); `None` when nothing is padded.
    fn padding_mask(
        &self,
        tokens: &TokenBatch,
        device: crate::tensor::Device,
    ) -> Result<Option<Tensor>, ClipError> {
        if tokens.mask.iter().all(|&m| m != 0) {
            return Ok(None);
        }
        let keep: Vec<f32> = tokens.mask.iter().map(|&m| (m != 0) as u8 as f32).collect();
        Ok(Some(Tensor::from_vec(
            keep,
            &[tokens.batch, tokens.len],
            &device,
        )?))
    }
}
