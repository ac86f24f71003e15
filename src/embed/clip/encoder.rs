//! transformers' `CLIPEncoder`, shared by both towers: pre-LN blocks of multi-head
//! self-attention and an MLP, each added back to the residual stream.
//!
//! Not here: what goes in (the towers' embeddings) and what comes out (pooling, projections);
//! the layers themselves (`tensor::nn`).

use crate::tensor::nn::{LayerNorm, Linear};
use crate::tensor::{Tensor, Weights};

use super::config::Activation;
use super::error::ClipError;

/// Sizes of one encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub width: usize,
    pub mlp_width: usize,
    pub heads: usize,
    pub layers: usize,
    pub act: Activation,
    pub eps: f32,
}

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj` on `[B, L, H·D]`; the heads are
/// split inside the attention kernel.
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f32,
}

impl SelfAttention {
    fn new(vb: Weights, width: usize, heads: usize) -> Result<SelfAttention, ClipError> {
        Ok(SelfAttention {
            q_proj: Linear::new(vb.pp("q_proj"), width, width, true)?,
            k_proj: Linear::new(vb.pp("k_proj"), width, width, true)?,
            v_proj: Linear::new(vb.pp("v_proj"), width, width, true)?,
            out_proj: Linear::new(vb.pp("out_proj"), width, width, true)?,
            heads,
            scale: 1.0 / ((width / heads) as f32).sqrt(),
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        key_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let attended = q.multi_head_attention(&k, &v, self.heads, key_mask, causal, self.scale)?;
        Ok(self.out_proj.forward(&attended)?)
    }
}

/// `CLIPMLP`: fc1, activation, fc2.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ClipError> {
        let h = self.fc1.forward(x)?;
        let h = match self.act {
            Activation::QuickGelu => h.quick_gelu()?,
            Activation::Gelu => h.gelu()?,
        };
        Ok(self.fc2.forward(&h)?)
    }
}

/// `CLIPEncoderLayer`.
struct Block {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        key_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, key_mask, causal)?;
        let x = x.add(&attended)?;
        let transformed = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        Ok(x.add(&transformed)?)
    }
}

/// `CLIPEncoder`: `layers.{i}`.
pub struct Encoder {
    blocks: Vec<Block>,
}

impl Encoder {
    /// Loads `layers.0` … `layers.{n-1}` below `vb`.
    pub fn new(vb: Weights, s: EncoderShape) -> Result<Encoder, ClipError> {
        let blocks = (0..s.layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                Ok(Block {
                    layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), s.width, s.eps)?,
                    self_attn: SelfAttention::new(vb.pp("self_attn"), s.width, s.heads)?,
                    layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), s.width, s.eps)?,
                    mlp: Mlp {
                        fc1: Linear::new(vb.pp("mlp.fc1"), s.width, s.mlp_width, true)?,
                        fc2: Linear::new(vb.pp("mlp.fc2"), s.mlp_width, s.width, true)?,
                        act: s.act,
                    },
                })
            })
            .collect::<Result<_, ClipError>>()?;
        Ok(Encoder { blocks })
    }

    /// Runs every block on `x` `[B, L, D]`; `key_mask` `[B, L]` (0 hides a padded key).
    pub fn forward(
        &self,
        x: &Tensor,
        key_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward(&x, key_mask, causal)?;
        }
        Ok(x)
    }
}
