//! The vision tower, transformers' `CLIPVisionTransformer`: patch embedding (a strided
//! convolution without bias), the class token, positions, `pre_layrnorm` (transformers'
//! spelling), the pre-LN encoder, and `post_layernorm` on the class token.
//!
//! Not here: image preprocessing (`preprocess.rs`), the projection (`mod.rs`).

use crate::tensor::nn::{Conv2d, LayerNorm};
use crate::tensor::{Tensor, Weights};

use super::config::ClipVisionConfig;
use super::encoder::{Encoder, EncoderShape};
use super::error::ClipError;

/// `CLIPVisionTransformer` (`vision_model.*`).
pub struct VisionTransformer {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

impl VisionTransformer {
    /// Loads `embeddings.*`, `pre_layrnorm.*`, `encoder.*`, `post_layernorm.*` of `vb`
    /// (`vision_model`).
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, named.
    pub fn new(vb: Weights, config: &ClipVisionConfig) -> Result<VisionTransformer, ClipError> {
        let d = config.hidden_size;
        let (p, c) = (config.patch_size, config.num_channels);
        let positions = config.patches_per_side().pow(2) + 1;
        let embeddings = vb.pp("embeddings");
        Ok(VisionTransformer {
            class_embedding: embeddings
                .get("class_embedding", &[d])?
                .reshape(&[1, 1, d])?,
            patch_embedding: Conv2d::new(embeddings.pp("patch_embedding"), c, d, p, p, 0, false)?,
            position_embedding: embeddings
                .pp("position_embedding")
                .get("weight", &[positions, d])?
                .reshape(&[1, positions, d])?,
            pre_layrnorm: LayerNorm::new(vb.pp("pre_layrnorm"), d, config.layer_norm_eps)?,
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
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), d, config.layer_norm_eps)?,
            config: config.clone(),
        })
    }

    /// Runs the tower on `pixel_values` `[N, C, S, S]` (S the config's `image_size`) and gives
    /// the pooled class token `[N, D]` (before the projection).
    ///
    /// # Errors
    /// Pixels of another shape.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor, ClipError> {
        let c = &self.config;
        let s = c.image_size;
        let &[n, channels, h, w] = pixel_values.shape() else {
            return Err(ClipError::Input(format!(
                "pixel_values must be [N, C, H, W], got {:?}",
                pixel_values.shape()
            )));
        };
        if n == 0 || channels != c.num_channels || (h, w) != (s, s) {
            return Err(ClipError::Input(format!(
                "pixel_values {:?} do not fit the model's [N ≥ 1, {}, {s}, {s}]",
                pixel_values.shape(),
                c.num_channels
            )));
        }
        let (d, g) = (c.hidden_size, c.patches_per_side());
        // Figure order: patches, class token, positions, pre-norm, encoder, class token, post-norm.
        let patches = self
            .patch_embedding
            .forward(pixel_values)?
            .reshape(&[n, d, g * g])?
            .transpose(1, 2)?;
        let class =
            Tensor::zeros(&[n, 1, d], &pixel_values.device())?.add(&self.class_embedding)?;
        let x = Tensor::concat(&[&class, &patches], 1)?.add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let x = self.encoder.forward(&x, None, false)?;
        let class_token = x.narrow(1, 0, 1)?.reshape(&[n, d])?;
        Ok(self.post_layernorm.forward(&class_token)?)
    }
}
