//! The layers CLIP is written with — [`Scope`] (a prefixed view of the checkpoint), `Linear`,
//! `LayerNorm`, `Embedding` and multi-head self-attention — each `new(scope, ..)` + `forward`,
//! in the shape of the runtime's layer kit (issue 8 §1) so the towers read the same either way.
//!
//! Every tensor is checked against the shape the config implies when it is loaded, so a
//! mis-shaped checkpoint is an error naming the tensor, the file and both shapes.
//!
//! Not here: CLIP's blocks (`encoder.rs`) and towers (`text.rs`, `vision.rs`).

use std::path::Path;

use crate::tensor::{Device, Tensor, TensorError, Weights};

use super::error::ClipError;

/// How weight matrices are kept: f32, or f16 (half the memory on a GPU; rounded, then widened,
/// on the CPU). Norms, biases and positions stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    /// As stored, widened to f32.
    #[default]
    F32,
    /// Matrices and tables rounded to f16.
    F16,
}

/// A prefixed view of a checkpoint on a device: `scope.pp("encoder").pp("layers.3")` names
/// `…encoder.layers.3.*` without building names by hand at every call.
#[derive(Clone)]
pub struct Scope<'w> {
    weights: &'w Weights,
    origin: &'w Path,
    prefix: String,
    device: Device,
    precision: WeightPrecision,
}

impl<'w> Scope<'w> {
    /// The root of `weights` (read from `origin`), loading onto `device`.
    pub fn new(
        weights: &'w Weights,
        origin: &'w Path,
        device: Device,
        precision: WeightPrecision,
    ) -> Scope<'w> {
        Scope {
            weights,
            origin,
            prefix: String::new(),
            device,
            precision,
        }
    }

    /// The view one level down.
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope<'w> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Scope {
            prefix,
            ..self.clone()
        }
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn check(&self, name: &str, shape: &[usize]) -> Result<String, ClipError> {
        let full = self.full_name(name);
        let fail = |reason: String| ClipError::Tensor {
            path: self.origin.to_path_buf(),
            name: full.clone(),
            reason,
        };
        match self.weights.info(&full) {
            Ok((_, found)) if found == shape => Ok(full),
            Ok((_, found)) => Err(fail(format!(
                "has shape {found:?}, the config implies {shape:?}"
            ))),
            Err(TensorError::MissingTensor { .. }) => {
                Err(fail(format!("is missing (expected shape {shape:?})")))
            }
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// The f32 tensor `name` of this scope, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        let full = self.check(name, shape)?;
        Ok(self.weights.tensor(&full, &self.device)?)
    }

    /// A weight matrix or table (the operand of `linear`, `conv2d`, `embedding`), kept in f16
    /// when the scope's precision says so.
    pub fn get_weight(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        let full = self.check(name, shape)?;
        Ok(match self.precision {
            WeightPrecision::F32 => self.weights.tensor(&full, &self.device)?,
            WeightPrecision::F16 => self.weights.tensor_f16(&full, &self.device)?,
        })
    }
}

/// `nn.Linear`: `weight` `[out, in]`, optional `bias` `[out]`.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` and `bias`.
    pub fn new(vb: &Scope<'_>, input: usize, output: usize) -> Result<Linear, ClipError> {
        Ok(Linear {
            weight: vb.get_weight("weight", &[output, input])?,
            bias: Some(vb.get("bias", &[output])?),
        })
    }

    /// Loads `weight` only (CLIP's projections have no bias).
    pub fn no_bias(vb: &Scope<'_>, input: usize, output: usize) -> Result<Linear, ClipError> {
        Ok(Linear {
            weight: vb.get_weight("weight", &[output, input])?,
            bias: None,
        })
    }

    /// `x · weightᵀ + bias` over the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ClipError> {
        Ok(x.linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `nn.LayerNorm` over the last axis: `weight`, `bias` `[dim]`.
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `weight` and `bias`.
    pub fn new(vb: &Scope<'_>, dim: usize, eps: f32) -> Result<LayerNorm, ClipError> {
        Ok(LayerNorm {
            gamma: vb.get("weight", &[dim])?,
            beta: vb.get("bias", &[dim])?,
            eps,
        })
    }

    /// Normalises the last axis.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ClipError> {
        Ok(x.layer_norm(&self.gamma, &self.beta, self.eps)?)
    }
}

/// `nn.Embedding`: `weight` `[rows, dim]`.
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads `weight`.
    pub fn new(vb: &Scope<'_>, rows: usize, dim: usize) -> Result<Embedding, ClipError> {
        Ok(Embedding {
            table: vb.get_weight("weight", &[rows, dim])?,
        })
    }

    /// The rows `ids` picks: `[ids.len(), dim]`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor, ClipError> {
        Ok(self.table.embedding(ids)?)
    }
}

/// Multi-head self-attention with transformers' CLIP names (`q_proj`, `k_proj`, `v_proj`,
/// `out_proj`), on `[B, L, H·D]`.
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    /// Loads the four projections of a `dim`-wide block with `heads` heads.
    pub fn new(vb: &Scope<'_>, dim: usize, heads: usize) -> Result<SelfAttention, ClipError> {
        Ok(SelfAttention {
            q: Linear::new(&vb.pp("q_proj"), dim, dim)?,
            k: Linear::new(&vb.pp("k_proj"), dim, dim)?,
            v: Linear::new(&vb.pp("v_proj"), dim, dim)?,
            out: Linear::new(&vb.pp("out_proj"), dim, dim)?,
            heads,
        })
    }

    /// `x` `[B, L, H·D]` attending to itself; `mask` additive `[B·H or 1, L, L]`; `causal` hides
    /// later positions.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor, ClipError> {
        let &[b, l, width] = x.shape() else {
            return Err(ClipError::Input(format!(
                "attention input must be [B, L, D], got {:?}",
                x.shape()
            )));
        };
        let (h, d) = (self.heads, width / self.heads);
        let split = |t: Tensor| -> Result<Tensor, TensorError> {
            t.reshape(&[b, l, h, d])?
                .permute(&[0, 2, 1, 3])?
                .reshape(&[b * h, l, d])
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let attended = q.attention(&k, &v, mask, causal, 1.0 / (d as f32).sqrt())?;
        let merged = attended
            .reshape(&[b, h, l, d])?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[b, l, width])?;
        self.out.forward(&merged)
    }
}
