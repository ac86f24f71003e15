//! The layer kit models are written with: [`Linear`], [`Conv2d`], [`GroupNorm`], [`LayerNorm`],
//! [`Embedding`]. Each is `new(vb, ..sizes)`, loading its tensors by their checkpoint names
//! (`weight`, `bias`) below the view `vb` and checking their shapes against the sizes given, and
//! `forward`. Multi-head attention is an op, [`Tensor::multi_head_attention`], because the
//! projections around it are named differently by every model (`q_proj`, `to_q`, …).
//!
//! ```
//! use reimagen::tensor::nn::{Linear, LayerNorm};
//! use reimagen::tensor::{Device, Tensor, Weights};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("model.safetensors");
//! # let shapes = [
//! #     ("block.proj.weight", vec![3, 4]), ("block.proj.bias", vec![3]),
//! #     ("block.norm.weight", vec![4]), ("block.norm.bias", vec![4]),
//! # ];
//! # let bytes: Vec<Vec<u8>> = shapes.iter().map(|(_, s)| vec![0; 4 * s.iter().product::<usize>()]).collect();
//! # let views = shapes.iter().zip(&bytes).map(|((n, s), b)| {
//! #     (*n, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
//! # });
//! # std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
//! let vb = Weights::open(&path, &Device::Cpu)?.pp("block");
//! let norm = LayerNorm::new(vb.pp("norm"), 4, 1e-5)?;
//! let proj = Linear::new(vb.pp("proj"), 4, 3, true)?; // [.., 4] → [.., 3]
//! let x = Tensor::zeros(&[2, 5, 4], &Device::Cpu)?;
//! let y = proj.forward(&norm.forward(&x)?)?;
//! assert_eq!(y.shape(), &[2, 5, 3]);
//! # Ok::<(), reimagen::tensor::TensorError>(())
//! ```
//!
//! Weights come through [`Weights::get_weight`], so a view made with
//! [`Weights::with_f16`]`(true)` keeps the weights of `Linear`, `Conv2d` and `Embedding` f16 on
//! a GPU; biases and norm parameters stay f32.
//!
//! Not here: model code (CLIP, the UNet) and the ops themselves (`ops.rs`).

use super::error::Result;
use super::tensor::Tensor;
use super::weights::Weights;

/// A fully connected layer, `y = x · Wᵀ + b`: PyTorch's `nn.Linear`, with `weight`
/// `[out, in]` and an optional `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out_features, in_features]` (and `bias` `[out_features]` when `bias`)
    /// below `vb`.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, naming it and its file.
    pub fn new(vb: Weights, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = vb.get_weight("weight", &[out_features, in_features])?;
        let bias = match bias {
            true => Some(vb.get("bias", &[out_features])?),
            false => None,
        };
        Ok(Linear { weight, bias })
    }

    /// A layer from tensors already made: `weight` `[out, in]` (f32 or f16 weights), `bias`
    /// `[out]`. Shapes are checked by `forward`.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// `[.., in] → [.., out]`.
    ///
    /// # Errors
    /// When the last axis of `x` is not `in_features`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// A 2D convolution over NCHW images: PyTorch's `nn.Conv2d` with square kernels, one stride and
/// one zero padding on every side; `weight` `[out, in, k, k]`, optional `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight` `[out_channels, in_channels, kernel, kernel]` (and `bias`
    /// `[out_channels]` when `bias`) below `vb`.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, naming it and its file.
    pub fn new(
        vb: Weights,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get_weight("weight", &[out_channels, in_channels, kernel, kernel])?;
        let bias = match bias {
            true => Some(vb.get("bias", &[out_channels])?),
            false => None,
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `[N, in, H, W] → [N, out, H', W']`.
    ///
    /// # Errors
    /// When `x` is not NCHW with `in_channels` channels, or smaller than the kernel.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.padding)
    }

    /// The weight, `[out, in, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// Group normalisation over `[N, C, ..]`: PyTorch's `nn.GroupNorm`, per-channel `weight` and
/// `bias` `[C]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f32,
}

impl GroupNorm {
    /// Loads `weight` and `bias` `[channels]` below `vb`.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, naming it and its file.
    pub fn new(vb: Weights, groups: usize, channels: usize, eps: f32) -> Result<Self> {
        Ok(GroupNorm {
            gamma: vb.get("weight", &[channels])?,
            beta: vb.get("bias", &[channels])?,
            groups,
            eps,
        })
    }

    /// The normalised input.
    ///
    /// # Errors
    /// When `x` is not `[N, channels, ..]` or `channels` is not a multiple of `groups`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm(self.groups, &self.gamma, &self.beta, self.eps)
    }

    /// [`GroupNorm::forward`] followed by SiLU, in one pass (the UNet's resnet blocks).
    ///
    /// # Errors
    /// As [`GroupNorm::forward`].
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        x.group_norm_silu(self.groups, &self.gamma, &self.beta, self.eps)
    }
}

/// Layer normalisation over the last axis: PyTorch's `nn.LayerNorm`, `weight` and `bias`
/// `[dim]`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias` `[dim]` below `vb`.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, naming it and its file.
    pub fn new(vb: Weights, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            gamma: vb.get("weight", &[dim])?,
            beta: vb.get("bias", &[dim])?,
            eps,
        })
    }

    /// The input with each row of the last axis normalised.
    ///
    /// # Errors
    /// When the last axis of `x` is not `dim`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.gamma, &self.beta, self.eps)
    }
}

/// A lookup table: PyTorch's `nn.Embedding`, `weight` `[vocab, dim]` (token and position
/// embeddings).
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads `weight` `[vocab, dim]` below `vb`.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor, naming it and its file.
    pub fn new(vb: Weights, vocab: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            table: vb.get_weight("weight", &[vocab, dim])?,
        })
    }

    /// The rows of `ids`: `[ids.len(), dim]` (reshape to `[B, L, dim]` for a batch).
    ///
    /// # Errors
    /// When an id is out of the table.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor> {
        self.table.embedding(ids)
    }

    /// The table, `[vocab, dim]` (f16 on a GPU when the view asked for f16 weights).
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}
