//! The UNet's blocks (docs/generator.md §4–§5): the timestep MLP, `ResBlock`, `Attention`,
//! `TransformerBlock` (self-attention, text cross-attention, feed-forward) and
//! `NeighbourAttention` (the noisy image's pixels attending to `[null; the neighbours' pixels]`
//! with a per-neighbour additive `ln w`). Each is `new(vb, ..)` over its checkpoint names and
//! `forward`.
//!
//! Not here: the order the blocks run in (`unet.rs`), the samplers.

use crate::tensor::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::tensor::{Result, Tensor, Weights};

use super::config::UNetConfig;

/// What an `ln 0` bias becomes: finite (no `0 · ∞` in a GEMM), and its `exp` underflows to 0
/// after the kernels' own −1e30 floor.
const MASKED: f32 = -1.0e30;

/// `linear_2(silu(linear_1(x)))`: `time_embed` and `aug_embed`.
#[derive(Debug, Clone)]
pub(crate) struct TimeMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeMlp {
    pub(crate) fn new(vb: Weights, dim_in: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(vb.pp("linear_1"), dim_in, dim, true)?,
            linear_2: Linear::new(vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// `R(cin → cout)`: GN+SiLU → conv1 → + time_proj(es) → GN+SiLU → conv2, plus the input (through
/// a 1×1 `skip` conv when the channel count changes).
#[derive(Debug, Clone)]
pub(crate) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
    cout: usize,
}

impl ResBlock {
    pub(crate) fn new(vb: Weights, cin: usize, cout: usize, cfg: &UNetConfig) -> Result<Self> {
        let (g, eps) = (cfg.norm_groups, cfg.norm_eps);
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), g, cin, eps)?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1, true)?,
            time_proj: Linear::new(vb.pp("time_proj"), cfg.time_embed_dim, cout, true)?,
            norm2: GroupNorm::new(vb.pp("norm2"), g, cout, eps)?,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1, true)?,
            skip: match cin != cout {
                true => Some(Conv2d::new(vb.pp("skip"), cin, cout, 1, 1, 0, true)?),
                false => None,
            },
            cout,
        })
    }

    /// `x` `[B, cin, H, W]`, `es` = silu(embedding) `[B, E]`.
    pub(crate) fn forward(&self, x: &Tensor, es: &Tensor) -> Result<Tensor> {
        let b = x.shape()[0];
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let time = self.time_proj.forward(es)?.reshape(&[b, self.cout, 1, 1])?;
        let h = h.add(&time)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.skip {
            Some(skip) => skip.forward(x)?.add(&h),
            None => x.add(&h),
        }
    }
}

/// Multi-head attention with bias-free `to_q`/`to_k`/`to_v` and a biased `to_out`.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub(crate) fn new(vb: Weights, dim: usize, kv_dim: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            to_q: Linear::new(vb.pp("to_q"), dim, dim, false)?,
            to_k: Linear::new(vb.pp("to_k"), kv_dim, dim, false)?,
            to_v: Linear::new(vb.pp("to_v"), kv_dim, dim, false)?,
            to_out: Linear::new(vb.pp("to_out"), dim, dim, true)?,
            heads: dim / head_dim,
            head_dim,
        })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// `x` `[B, Lq, C]` attending to `ctx` `[B, Lk, Ckv]`; `key_mask` `[B, Lk]` (0 hides a key).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        key_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        let out = q.multi_head_attention(&k, &v, self.heads, key_mask, false, self.scale())?;
        self.to_out.forward(&out)
    }
}

/// `[B, C, H, W] → [B, H·W, C]`, pixels row-major.
pub(crate) fn tokens(h: &Tensor) -> Result<Tensor> {
    let s = h.shape();
    let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
    h.reshape(&[b, c, hw])?.transpose(1, 2)
}

/// The inverse of [`tokens`].
pub(crate) fn untokens(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let s = x.shape();
    let (b, c) = (s[0], s[2]);
    x.transpose(1, 2)?.reshape(&[b, c, height, width])
}

/// `T(C)`: self-attention, cross-attention to the text (`[null_text; states]` with its key
/// mask), feed-forward; each pre-LN and residual, on the pixels as tokens.
#[derive(Debug, Clone)]
pub(crate) struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    pub(crate) fn new(vb: Weights, dim: usize, cfg: &UNetConfig) -> Result<Self> {
        let eps = cfg.layer_norm_eps;
        let hd = cfg.attention_head_dim;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), dim, eps)?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, hd)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim, eps)?,
            attn2: Attention::new(vb.pp("attn2"), dim, cfg.text_dim, hd)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim, eps)?,
            ff_in: Linear::new(vb.pp("ff_in"), dim, dim * cfg.ff_mult, true)?,
            ff_out: Linear::new(vb.pp("ff_out"), dim * cfg.ff_mult, dim, true)?,
        })
    }

    pub(crate) fn forward(&self, h: &Tensor, ctx: &Tensor, text_mask: &Tensor) -> Result<Tensor> {
        let (height, width) = (h.shape()[2], h.shape()[3]);
        let x = tokens(h)?;
        let n = self.norm1.forward(&x)?;
        let x = x.add(&self.attn1.forward(&n, &n, None)?)?;
        let x = x.add(
            &self
                .attn2
                .forward(&self.norm2.forward(&x)?, ctx, Some(text_mask))?,
        )?;
        let ff = self
            .ff_out
            .forward(&self.ff_in.forward(&self.norm3.forward(&x)?)?.gelu()?)?;
        untokens(&x.add(&ff)?, height, width)
    }
}

/// The keys and values of one neighbour attention, `to_k`/`to_v` of
/// `layer_norm([null; tokens])`, each `[1, 1 + K·h·w, C]`: they depend only on the neighbour
/// features, so they are made once per generation.
#[derive(Debug, Clone)]
pub struct NeighbourKeys {
    k: Tensor,
    v: Tensor,
    pixels: usize,
}

impl NeighbourKeys {
    /// Keys per neighbour (the pixels of its feature map at this level).
    pub fn pixels(&self) -> usize {
        self.pixels
    }
}

/// The fixed 2-D sine-cosine code of each pixel of an `h × w` map, row-major, `dim` values per
/// pixel: the first `dim/2` code the row y, the rest the column x, each as
/// `[sin(p·ω_i) | cos(p·ω_i)]` with `ω_i = 100^(−i/(dim/4))`, `i = 0 … dim/4 − 1`, p in pixels of
/// the map (the reference's `position_code`).
pub(crate) fn position_code(h: usize, w: usize, dim: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 100f64.powf(-(i as f64) / quarter as f64))
        .collect();
    let mut code = Vec::with_capacity(h * w * dim);
    for y in 0..h {
        for x in 0..w {
            for p in [y as f64, x as f64] {
                code.extend(omega.iter().map(|o| (p * o).sin() as f32));
                code.extend(omega.iter().map(|o| (p * o).cos() as f32));
            }
        }
    }
    code
}

/// `N(C)`: the pixels attend to `[null; all K neighbours' pixels]` at this level.
#[derive(Debug, Clone)]
pub(crate) struct NeighbourAttention {
    norm_q: LayerNorm,
    norm_kv: LayerNorm,
    null: Tensor,
    attn: Attention,
    dim: usize,
    /// `neighbour_positions`: queries and keys carry [`position_code`].
    positions: bool,
}

impl NeighbourAttention {
    pub(crate) fn new(vb: Weights, dim: usize, cfg: &UNetConfig) -> Result<Self> {
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            norm_q: LayerNorm::new(vb.pp("norm_q"), dim, eps)?,
            norm_kv: LayerNorm::new(vb.pp("norm_kv"), dim, eps)?,
            null: vb.get("null", &[1, dim])?,
            attn: Attention::new(vb.pp("attn"), dim, dim, cfg.attention_head_dim)?,
            dim,
            positions: cfg.neighbour_positions,
        })
    }

    /// The keys for feature maps `features` `[K, C, h, w]` (`None`: no neighbours, the null
    /// key alone).
    pub(crate) fn keys(&self, features: Option<&Tensor>) -> Result<NeighbourKeys> {
        let null = self.null.reshape(&[1, 1, self.dim])?;
        let (kv, pixels, code) = match features {
            Some(f) => {
                let s = f.shape();
                let (k, c, hw) = (s[0], s[1], s[2] * s[3]);
                // Neighbour-major, then pixels row-major: index = k·h·w + y·w + x.
                let toks = f
                    .reshape(&[k, c, hw])?
                    .permute(&[0, 2, 1])?
                    .reshape(&[1, k * hw, c])?;
                // The null key has no position; each neighbour's pixels have theirs.
                let code = self.positions.then(|| {
                    let one = position_code(s[2], s[3], c);
                    let mut all = vec![0.0; c];
                    for _ in 0..k {
                        all.extend_from_slice(&one);
                    }
                    (all, [1, 1 + k * hw, c], f.device())
                });
                (Tensor::concat(&[&null, &toks], 1)?, hw, code)
            }
            None => (null, 0, None),
        };
        let n = self.norm_kv.forward(&kv)?;
        let k = match code {
            Some((code, shape, device)) => {
                let keyed = n.add(&Tensor::from_vec(code, &shape, &device)?)?;
                self.attn.to_k.forward(&keyed)?
            }
            None => self.attn.to_k.forward(&n)?,
        };
        Ok(NeighbourKeys {
            k,
            v: self.attn.to_v.forward(&n)?,
            pixels,
        })
    }

    /// `h` `[B, C, H, W]` attending to `keys`; `weights` `[B × K]` (row-major) are the
    /// per-neighbour weights of each row, entering as an additive `ln w` on that neighbour's
    /// keys (0 removes it exactly).
    pub(crate) fn forward(
        &self,
        h: &Tensor,
        keys: &NeighbourKeys,
        weights: &[f32],
    ) -> Result<Tensor> {
        let (b, height, width) = (h.shape()[0], h.shape()[2], h.shape()[3]);
        let lk = keys.k.shape()[1];
        let (heads, d) = (self.attn.heads, self.attn.head_dim);
        let x = tokens(h)?;
        let lq = x.shape()[1];
        let mut q_in = self.norm_q.forward(&x)?;
        if self.positions {
            let one = position_code(height, width, self.dim);
            let code = one.repeat(b);
            q_in = q_in.add(&Tensor::from_vec(code, &[b, lq, self.dim], &h.device())?)?;
        }
        let q = self.attn.to_q.forward(&q_in)?;
        let k = keys.k.broadcast_to(&[b, lk, self.dim])?;
        let v = keys.v.broadcast_to(&[b, lk, self.dim])?;
        let neutral = weights.iter().all(|&w| w == 1.0);
        let out =
            if neutral || keys.pixels == 0 {
                // ln 1 = 0 everywhere (and with no neighbours there is nothing to weigh).
                q.multi_head_attention(&k, &v, heads, None, false, self.attn.scale())?
            } else {
                // The kernel takes a key mask, not an additive bias, so the bias rides in one more
                // dimension per head: q' = [q, 1], k' = [k, ln w · √d], whose scaled product is
                // q·k/√d + ln w, exactly the reference's score.
                let per_row = (lk - 1) / keys.pixels;
                let sqrt_d = (d as f32).sqrt();
                let mut bias = Vec::with_capacity(b * lk);
                for row in 0..b {
                    bias.push(0.0);
                    for n in 0..per_row {
                        let w = weights.get(row * per_row + n).copied().unwrap_or(0.0);
                        let value = if w > 0.0 { w.ln() * sqrt_d } else { MASKED };
                        bias.extend(std::iter::repeat_n(value, keys.pixels));
                    }
                }
                let device = h.device();
                let bias = Tensor::from_vec(bias, &[b, lk, 1, 1], &device)?
                    .broadcast_to(&[b, lk, heads, 1])?;
                let ones =
                    Tensor::from_vec(vec![1.0; b * lq * heads], &[b, lq, heads, 1], &device)?;
                let q = Tensor::concat(&[&q.reshape(&[b, lq, heads, d])?, &ones], 3)?
                    .reshape(&[b, lq, heads * (d + 1)])?;
                let k = Tensor::concat(&[&k.reshape(&[b, lk, heads, d])?, &bias], 3)?
                    .reshape(&[b, lk, heads * (d + 1)])?;
                q.multi_head_attention(&k, &v, heads, None, false, self.attn.scale())?
            };
        let x = x.add(&self.attn.to_out.forward(&out)?)?;
        untokens(&x, height, width)
    }
}
