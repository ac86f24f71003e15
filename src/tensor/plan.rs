//! The plans of the ops: what `ops.rs` decides once, after checking shapes, and both backends
//! (`cpu/`, `wgpu/`) execute — sizes, strides, modes and options, all plain data. This module
//! sits below `ops.rs` and both backends, so neither backend imports from the ops that call it.
//!
//! Not here: shape checks (`ops.rs`), the kernels (`cpu/`, `wgpu/`, `shaders/`).

/// `out[b] = a[b] · b[b]` (or `· b[b]ᵀ`), plus an optional bias over the columns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatmulPlan {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_batch_stride: usize,
    pub b_batch_stride: usize,
    pub trans_b: bool,
}

/// A conv2d over NCHW images.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvPlan {
    pub images: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

/// Group norm over `[images, channels, spatial]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupNormPlan {
    pub images: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
    pub eps: f32,
    pub silu: bool,
}

/// What the optional mask of an attention holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttentionMask {
    None,
    /// Added to the scores: `[batches, Lq, Lk]`, `batches` 1 (shared) or `batch`.
    Additive {
        batches: usize,
    },
    /// Key padding, `[batch, Lk]`, shared by every head and query: 0 hides a key, anything
    /// else keeps it (transformers' `attention_mask`).
    KeepKeys,
}

/// Attention over `batch` × `heads` independent (q, k, v) triples, the heads side by side in
/// the last axis: q `[batch, lq, heads·d]`, k `[batch, lk, heads·d]`, v `[batch, lk, heads·dv]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionPlan {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
    pub scale: f32,
    pub causal: bool,
    pub mask: AttentionMask,
}

impl AttentionPlan {
    /// The mask's strides over (batch, query): its element for (b, i, j) is at
    /// `b · batch_stride + i · row_stride + j`.
    pub(crate) fn mask_strides(&self) -> (usize, usize) {
        match self.mask {
            AttentionMask::None => (0, 0),
            AttentionMask::Additive { batches } => {
                (if batches > 1 { self.lq * self.lk } else { 0 }, self.lk)
            }
            AttentionMask::KeepKeys => (self.lk, 0),
        }
    }
}

/// The element-wise functions of one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum UnaryOp {
    Gelu,
    QuickGelu,
    Silu,
    /// `x · a + b`
    Affine(f32, f32),
    /// `min(max(x, a), b)`
    Clamp(f32, f32),
}

/// The element-wise functions of two inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
}

/// The reductions over the last axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduction {
    Sum,
    Mean,
    Max,
    /// The first index of the maximum.
    ArgMax,
}

/// Options of [`Tensor::timestep_embedding_with`](crate::tensor::Tensor::timestep_embedding_with), named as in diffusers'
/// `get_timestep_embedding(timesteps, embedding_dim, flip_sin_to_cos, downscale_freq_shift,
/// scale = 1, max_period)`: the embedding is `[sin(t·f) | cos(t·f)]` with
/// `f_j = max_period^(−j / (dim/2 − freq_shift))`, the halves swapped when `flip_sin_to_cos`,
/// and a zero last column when `dim` is odd.
///
/// By default, diffusers' defaults: `max_period` 10 000, `flip_sin_to_cos` false,
/// `freq_shift` 1. Stable Diffusion's UNet uses `flip_sin_to_cos: true, freq_shift: 0.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepEmbedding {
    /// The longest period.
    pub max_period: f32,
    /// `[cos | sin]` instead of `[sin | cos]`.
    pub flip_sin_to_cos: bool,
    /// diffusers' `downscale_freq_shift`.
    pub freq_shift: f32,
}

impl Default for TimestepEmbedding {
    fn default() -> Self {
        TimestepEmbedding {
            max_period: 10_000.0,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
        }
    }
}

/// A sinusoidal embedding of `batch` timesteps into `dim` values each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimestepPlan {
    pub batch: usize,
    pub dim: usize,
    pub options: TimestepEmbedding,
}

/// An output shape and, for each input, its strides over it (0 where it broadcasts).
#[derive(Debug, Clone)]
pub(crate) struct Broadcast {
    pub shape: Vec<usize>,
    pub lhs_strides: Vec<usize>,
    pub rhs_strides: Vec<usize>,
}

/// Copy of `src` viewed as `[outer, len, inner]` (from axis offset `src_offset` of `src_axis`)
/// into `dst` viewed as `[outer, dst_axis, inner]` at axis offset `dst_offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCopy {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
    pub src_axis: usize,
    pub src_offset: usize,
    pub dst_axis: usize,
    pub dst_offset: usize,
}

/// Resampling mode of `Tensor::resize_nearest` and `Tensor::resize_bilinear`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResizeMode {
    Nearest,
    Bilinear,
}

/// Resizing `planes` images of `h × w` to `ho × wo`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResizePlan {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub mode: ResizeMode,
}
