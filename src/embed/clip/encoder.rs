//! transformers' `CLIPEncoder`, shared by both towers: pre-LN blocks of self-attention and an
//! MLP, each added back to the residual stream.
//!
//! Not here: what goes in (the towers' embeddings) and what comes out (pooling, projections).

use crate::tensor::Tensor;

use super::config::Activation;
use super::error::ClipError;
use super::layers::{LayerNorm, Linear, Scope, SelfAttention};

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
        self.fc2.forward(&h)
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
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask, causal)?;
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
    /// Loads `layers.0` … `layers.{n-1}` of `vb`.
    pub fn new(vb: &Scope<'_>, s: EncoderShape) -> Result<Encoder, ClipError> {
        let blocks = (0..s.layers)
            .map(|i| {
                let vb = vb.pp("layers").pp(i);
                Ok(Block {
                    layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), s.width, s.eps)?,
                    self_attn: SelfAttention::new(&vb.pp("self_attn"), s.width, s.heads)?,
                    layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), s.width, s.eps)?,
                    mlp: Mlp {
                        fc1: Linear::new(&vb.pp("mlp").pp("fc1"), s.width, s.mlp_width)?,
                        fc2: Linear::new(&vb.pp("mlp").pp("fc2"), s.mlp_width, s.width)?,
                        act: s.act,
                    },
                })
            })
            .collect::<Result<_, ClipError>>()?;
        Ok(Encoder { blocks })
    }

    /// Runs every block on `x` `[B, L, D]`.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward(&x, mask, causal)?;
        }
        Ok(x)
    }
}
