//! The ops of the tensor runtime, as methods on [`Tensor`]. Each op checks its shapes once, here,
//! into a small plan that both backends execute: `cpu::*` and the WGSL host modules `wgpu::*`.
//! Models call these methods and never see a backend.
//!
//! Not here: the kernels themselves, and anything model-specific.

use super::cpu;
use super::device::Device;
use super::error::{Result, TensorError};
use super::plan::{
    AttentionMask, AttentionPlan, BinaryOp, BlockCopy, Broadcast, ConvPlan, GroupNormPlan,
    MatmulPlan, Reduction, ResizeMode, ResizePlan, TimestepEmbedding, TimestepPlan, UnaryOp,
};
use super::tensor::{DType, Tensor, numel};
use super::wgpu::{self as gpu, WgpuDevice};

/// Where an op's operands live, after checking that they all live in one place.
enum On<'a> {
    Cpu,
    Gpu(&'a WgpuDevice),
}

impl<'a> On<'a> {
    fn of(device: &'a Device) -> On<'a> {
        match device {
            Device::Cpu => On::Cpu,
            Device::Wgpu(d) => On::Gpu(d),
        }
    }
}

/// Runs an op where its operands live: `on_cpu` computes the output's values from host slices,
/// `on_gpu` records the kernels and hands back the output buffer.
fn run(
    on: On<'_>,
    shape: Vec<usize>,
    on_cpu: impl FnOnce() -> Vec<f32>,
    on_gpu: impl FnOnce(&WgpuDevice) -> Result<gpu::GpuBuffer>,
) -> Result<Tensor> {
    match on {
        On::Cpu => Ok(Tensor::from_cpu(on_cpu(), shape)),
        On::Gpu(d) => Ok(Tensor::from_gpu(d, on_gpu(d)?, shape)),
    }
}

/// Where the f32 operands `tensors` live.
fn on<'a>(op: &'static str, tensors: &[&'a Tensor]) -> Result<On<'a>> {
    if let Some(t) = tensors.iter().find(|t| t.dtype == DType::F16) {
        return Err(TensorError::Dtype {
            op,
            what: format!("tensor {:?}", t.shape),
        });
    }
    on_any(op, tensors)
}

/// Where the operands live, f16 weights allowed.
fn on_any<'a>(op: &'static str, tensors: &[&'a Tensor]) -> Result<On<'a>> {
    use super::tensor::Storage;
    let mut found: Option<On<'a>> = None;
    for t in tensors {
        let here = match &t.storage {
            Storage::Cpu(_) => On::Cpu,
            Storage::Wgpu(d, _) => On::Gpu(d),
        };
        found = Some(match (found, here) {
            (None, h) => h,
            (Some(On::Cpu), On::Cpu) => On::Cpu,
            (Some(On::Gpu(a)), On::Gpu(b)) if a == b => On::Gpu(a),
            (Some(_), _) => {
                return Err(TensorError::DeviceMismatch {
                    op,
                    left: tensors[0].device().name(),
                    right: t.device().name(),
                });
            }
        });
    }
    Ok(found.unwrap_or(On::Cpu))
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for (i, &d) in shape.iter().enumerate().rev() {
        strides[i] = s;
        s *= d;
    }
    strides
}

fn check_vector(op: &'static str, name: &str, t: &Tensor, len: usize) -> Result<()> {
    if t.shape != [len] {
        return Err(TensorError::shape(
            op,
            format!("{name} must have shape [{len}], got {:?}", t.shape),
        ));
    }
    Ok(())
}

fn axis_of(op: &'static str, t: &Tensor, axis: usize) -> Result<()> {
    if axis >= t.rank() {
        return Err(TensorError::shape(
            op,
            format!("axis {axis} out of range for shape {:?}", t.shape),
        ));
    }
    Ok(())
}

/// The CPU side of a weighted op: input, weight, bias.
type CpuWeighted<P> = fn(&[f32], &[f32], Option<&[f32]>, &P) -> Vec<f32>;

/// The GPU side of a weighted op: device, input, weight, whether the weight is packed f16, bias.
type GpuWeighted<P> = fn(
    &WgpuDevice,
    &gpu::GpuBuffer,
    &gpu::GpuBuffer,
    bool,
    Option<&gpu::GpuBuffer>,
    &P,
) -> Result<gpu::GpuBuffer>;

impl Tensor {
    fn run_matmul(
        &self,
        rhs: &Tensor,
        bias: Option<&Tensor>,
        plan: &MatmulPlan,
        shape: Vec<usize>,
    ) -> Result<Tensor> {
        let (cpu, gpu) = (cpu::matmul::matmul, gpu::matmul::matmul);
        self.run_weighted("matmul", rhs, bias, plan, shape, cpu, gpu)
    }

    /// Runs a weighted op (matmul, conv2d: input, weight, optional bias) on the backend that
    /// holds its operands. Only the weight may be f16 (packed, on a GPU).
    #[allow(clippy::too_many_arguments)]
    fn run_weighted<P>(
        &self,
        op: &'static str,
        weight: &Tensor,
        bias: Option<&Tensor>,
        plan: &P,
        shape: Vec<usize>,
        on_cpu: CpuWeighted<P>,
        on_gpu: GpuWeighted<P>,
    ) -> Result<Tensor> {
        let mut operands = vec![self];
        operands.extend(bias);
        on(op, &operands)?;
        operands.push(weight);
        run(
            on_any(op, &operands)?,
            shape,
            || {
                let bias = bias.map(|b| b.cpu_data());
                on_cpu(self.cpu_data(), weight.cpu_data(), bias, plan)
            },
            |d| {
                let bias = bias.map(|b| b.gpu_buffer());
                let half = weight.dtype == DType::F16;
                on_gpu(d, self.gpu_buffer(), weight.gpu_buffer(), half, bias, plan)
            },
        )
    }

    /// Batched matrix product: `[.., M, K] · [.., K, N] → [.., M, N]`. The right side has the same
    /// leading axes, or is a plain `[K, N]` matrix shared by every batch.
    ///
    /// # Errors
    /// When the shapes do not fit.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(TensorError::shape(
                "matmul",
                format!(
                    "operands need rank ≥ 2, got {:?} and {:?}",
                    self.shape, rhs.shape
                ),
            ));
        }
        let (m, k) = (self.shape[ra - 2], self.shape[ra - 1]);
        let (k2, n) = (rhs.shape[rb - 2], rhs.shape[rb - 1]);
        let lead = &self.shape[..ra - 2];
        let shared = rb == 2;
        if k != k2 || !(shared || rhs.shape[..rb - 2] == *lead) {
            return Err(TensorError::shape(
                "matmul",
                format!("cannot multiply {:?} by {:?}", self.shape, rhs.shape),
            ));
        }
        on("matmul", &[rhs])?;
        let plan = MatmulPlan {
            batch: numel(lead),
            m,
            n,
            k,
            a_batch_stride: m * k,
            b_batch_stride: if shared { 0 } else { k * n },
            trans_b: false,
        };
        let mut shape = lead.to_vec();
        shape.extend([m, n]);
        self.run_matmul(rhs, None, &plan, shape)
    }

    /// A linear layer: `[.., K] · weightᵀ + bias → [.., N]` with `weight` `[N, K]` (PyTorch's
    /// layout) and an optional `bias` `[N]`. `weight` may be f16 ([`Tensor::weights_f16`]).
    ///
    /// # Errors
    /// When the shapes do not fit.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let r = self.rank();
        if r == 0 || weight.rank() != 2 || weight.shape[1] != self.shape[r - 1] {
            return Err(TensorError::shape(
                "linear",
                format!(
                    "input {:?} does not fit weight {:?} ([out, in])",
                    self.shape, weight.shape
                ),
            ));
        }
        let (n, k) = (weight.shape[0], weight.shape[1]);
        if let Some(b) = bias {
            check_vector("linear", "bias", b, n)?;
        }
        let m = numel(&self.shape[..r - 1]);
        let plan = MatmulPlan {
            batch: 1,
            m,
            n,
            k,
            a_batch_stride: 0,
            b_batch_stride: 0,
            trans_b: true,
        };
        let mut shape = self.shape[..r - 1].to_vec();
        shape.push(n);
        self.run_matmul(weight, bias, &plan, shape)
    }

    /// 2D convolution of NCHW images `[N, Cin, H, W]` with `weight` `[Cout, Cin, kh, kw]`, an
    /// optional `bias` `[Cout]`, a `stride` and a zero `padding` on every side. `weight` may be
    /// f16 ([`Tensor::weights_f16`]).
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// let x = Tensor::zeros(&[1, 3, 8, 8], &Device::Cpu)?;
    /// let w = Tensor::zeros(&[16, 3, 3, 3], &Device::Cpu)?;
    /// assert_eq!(x.conv2d(&w, None, 2, 1)?.shape(), &[1, 16, 4, 4]);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When the shapes do not fit, or the kernel is larger than the padded image.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        if self.rank() != 4 || weight.rank() != 4 || weight.shape[1] != self.shape[1] || stride == 0
        {
            return Err(TensorError::shape(
                "conv2d",
                format!(
                    "input {:?} (NCHW) does not fit weight {:?} ([Cout, Cin, kh, kw]) with stride {stride}",
                    self.shape, weight.shape
                ),
            ));
        }
        let [images, cin, h, w] = [self.shape[0], self.shape[1], self.shape[2], self.shape[3]];
        let [cout, _, kh, kw] = [
            weight.shape[0],
            weight.shape[1],
            weight.shape[2],
            weight.shape[3],
        ];
        if h + 2 * padding < kh || w + 2 * padding < kw {
            return Err(TensorError::shape(
                "conv2d",
                format!(
                    "kernel {kh}×{kw} is larger than the padded input {:?}",
                    self.shape
                ),
            ));
        }
        if let Some(b) = bias {
            check_vector("conv2d", "bias", b, cout)?;
        }
        let plan = ConvPlan {
            images,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            pad: padding,
            ho: (h + 2 * padding - kh) / stride + 1,
            wo: (w + 2 * padding - kw) / stride + 1,
        };
        let shape = vec![images, cout, plan.ho, plan.wo];
        self.run_weighted(
            "conv2d",
            weight,
            bias,
            &plan,
            shape,
            cpu::conv2d::conv2d,
            gpu::conv2d::conv2d,
        )
    }

    fn group_norm_impl(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        silu: bool,
    ) -> Result<Tensor> {
        let op = "group_norm";
        if self.rank() < 2 || groups == 0 || !self.shape[1].is_multiple_of(groups) {
            return Err(TensorError::shape(
                op,
                format!(
                    "input {:?} ([N, C, ..]) cannot be split into {groups} groups",
                    self.shape
                ),
            ));
        }
        let channels = self.shape[1];
        check_vector(op, "gamma", gamma, channels)?;
        check_vector(op, "beta", beta, channels)?;
        let plan = GroupNormPlan {
            images: self.shape[0],
            channels,
            spatial: numel(&self.shape[2..]),
            groups,
            eps,
            silu,
        };
        run(
            on(op, &[self, gamma, beta])?,
            self.shape.clone(),
            || {
                let (x, g, b) = (self.cpu_data(), gamma.cpu_data(), beta.cpu_data());
                cpu::norm::group_norm(x, g, b, &plan)
            },
            |d| {
                let (x, g, b) = (self.gpu_buffer(), gamma.gpu_buffer(), beta.gpu_buffer());
                gpu::norm::group_norm(d, x, g, b, &plan)
            },
        )
    }

    /// Group norm of `[N, C, ..]` over `groups` groups of channels, with per-channel `gamma` and
    /// `beta` `[C]`.
    ///
    /// # Errors
    /// When `C` is not a multiple of `groups` or `gamma`/`beta` are not `[C]`.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        self.group_norm_impl(groups, gamma, beta, eps, false)
    }

    /// [`Tensor::group_norm`] followed by SiLU, in one pass.
    ///
    /// # Errors
    /// As [`Tensor::group_norm`].
    pub fn group_norm_silu(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        self.group_norm_impl(groups, gamma, beta, eps, true)
    }

    fn rows(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.shape.last() {
            Some(&len) if len > 0 => Ok((self.numel() / len, len)),
            _ => Err(TensorError::shape(
                op,
                format!("needs a non-empty last axis, got {:?}", self.shape),
            )),
        }
    }

    /// Layer norm over the last axis, with `gamma` and `beta` of its length.
    ///
    /// # Errors
    /// When `gamma`/`beta` do not match the last axis.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let op = "layer_norm";
        let (rows, len) = self.rows(op)?;
        check_vector(op, "gamma", gamma, len)?;
        check_vector(op, "beta", beta, len)?;
        run(
            on(op, &[self, gamma, beta])?,
            self.shape.clone(),
            || {
                let (x, g, b) = (self.cpu_data(), gamma.cpu_data(), beta.cpu_data());
                cpu::norm::layer_norm(x, g, b, rows, len, eps)
            },
            |d| {
                let (x, g, b) = (self.gpu_buffer(), gamma.gpu_buffer(), beta.gpu_buffer());
                gpu::norm::layer_norm(d, x, g, b, rows, len, eps)
            },
        )
    }

    /// Softmax over the last axis.
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn softmax(&self) -> Result<Tensor> {
        let (rows, len) = self.rows("softmax")?;
        run(
            on("softmax", &[self])?,
            self.shape.clone(),
            || cpu::softmax::softmax(self.cpu_data(), rows, len),
            |d| gpu::softmax::softmax(d, self.gpu_buffer(), rows, len),
        )
    }

    fn run_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        plan: &AttentionPlan,
    ) -> Result<Tensor> {
        let op = "attention";
        let shape = vec![plan.batch, plan.lq, plan.heads * plan.dv];
        let mut operands = vec![self, k, v];
        operands.extend(mask);
        run(
            on(op, &operands)?,
            shape,
            || {
                let (q, k, v) = (self.cpu_data(), k.cpu_data(), v.cpu_data());
                cpu::attention::attention(q, k, v, mask.map(|m| m.cpu_data()), plan)
            },
            |d| {
                let (q, k, v) = (self.gpu_buffer(), k.gpu_buffer(), v.gpu_buffer());
                gpu::attention::attention(d, q, k, v, mask.map(|m| m.gpu_buffer()), plan)
            },
        )
    }

    /// Scaled dot-product attention, `softmax(q·kᵀ·scale + mask) · v`, with `self` as the
    /// queries `[B, Lq, D]`, `k` `[B, Lk, D]` and `v` `[B, Lk, Dv]` (heads folded into `B`; see
    /// [`Tensor::multi_head_attention`] for heads side by side). `mask` is additive,
    /// `[1, Lq, Lk]` or `[B, Lq, Lk]`; `causal` hides keys after the query.
    /// Runs with an online softmax: the `Lq × Lk` score matrix is never stored.
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// // 2 images × 4 heads folded into the batch, 16 pixels attending to 7 text tokens.
    /// let q = Tensor::zeros(&[8, 16, 32], &Device::Cpu)?;
    /// let kv = Tensor::zeros(&[8, 7, 32], &Device::Cpu)?;
    /// let out = q.attention(&kv, &kv, None, false, 1.0 / 32f32.sqrt())?;
    /// assert_eq!(out.shape(), &[8, 16, 32]);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When the shapes do not fit; on the GPU backend, when `D` or `Dv` exceeds 128.
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: f32,
    ) -> Result<Tensor> {
        let op = "attention";
        if self.rank() != 3 || k.rank() != 3 || v.rank() != 3 {
            return Err(TensorError::shape(
                op,
                format!(
                    "q, k, v must be [B, L, D], got {:?}, {:?}, {:?}",
                    self.shape, k.shape, v.shape
                ),
            ));
        }
        let [batch, lq, d] = [self.shape[0], self.shape[1], self.shape[2]];
        let lk = k.shape[1];
        let dv = v.shape[2];
        if k.shape != [batch, lk, d] || v.shape != [batch, lk, dv] || lk == 0 {
            return Err(TensorError::shape(
                op,
                format!(
                    "q {:?}, k {:?} and v {:?} do not fit together",
                    self.shape, k.shape, v.shape
                ),
            ));
        }
        let mask_kind = match mask {
            None => AttentionMask::None,
            Some(m)
                if m.rank() == 3
                    && m.shape[1..] == [lq, lk]
                    && (m.shape[0] == 1 || m.shape[0] == batch) =>
            {
                AttentionMask::Additive {
                    batches: m.shape[0],
                }
            }
            Some(m) => {
                return Err(TensorError::shape(
                    op,
                    format!("mask must be [1 or {batch}, {lq}, {lk}], got {:?}", m.shape),
                ));
            }
        };
        let plan = AttentionPlan {
            batch,
            heads: 1,
            lq,
            lk,
            d,
            dv,
            scale,
            causal,
            mask: mask_kind,
        };
        self.run_attention(k, v, mask, &plan)
    }

    /// Multi-head attention with the heads side by side in the last axis, as a model's
    /// projections produce them: `self` (the queries) `[B, Lq, H·D]`, `k` `[B, Lk, H·D]`,
    /// `v` `[B, Lk, H·Dv]` → `[B, Lq, H·Dv]`, each head `softmax(q·kᵀ·scale) · v`. The kernels
    /// read each head in place (no permute copies).
    ///
    /// `key_mask` `[B, Lk]` hides padding keys from every head and query: 0 hides a key, any
    /// other value keeps it (transformers' `attention_mask`). `causal` hides keys after the
    /// query (CLIP's text tower). A query that sees no key at all averages `v` uniformly.
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// // CLIP's text tower: 8 heads of 64, 77 tokens, the last 70 of the second text padding.
    /// let x = Tensor::zeros(&[2, 77, 512], &Device::Cpu)?;
    /// let mut keep = vec![1.0; 2 * 77];
    /// keep[77 + 7..].fill(0.0);
    /// let keep = Tensor::from_vec(keep, &[2, 77], &Device::Cpu)?;
    /// let out = x.multi_head_attention(&x, &x, 8, Some(&keep), true, 1.0 / 8.0)?;
    /// assert_eq!(out.shape(), &[2, 77, 512]);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When the shapes do not fit or `heads` does not divide the last axes; on the GPU
    /// backend, when a head is larger than 128.
    pub fn multi_head_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        key_mask: Option<&Tensor>,
        causal: bool,
        scale: f32,
    ) -> Result<Tensor> {
        let op = "multi_head_attention";
        let fits = self.rank() == 3
            && k.rank() == 3
            && v.rank() == 3
            && heads > 0
            && k.shape[0] == self.shape[0]
            && v.shape[0] == self.shape[0]
            && k.shape[2] == self.shape[2]
            && v.shape[1] == k.shape[1]
            && k.shape[1] > 0
            && self.shape[2].is_multiple_of(heads)
            && v.shape[2].is_multiple_of(heads);
        if !fits {
            return Err(TensorError::shape(
                op,
                format!(
                    "q {:?}, k {:?} and v {:?} are not [B, Lq, H·D], [B, Lk, H·D], [B, Lk, H·Dv] \
                     with H = {heads} heads and Lk > 0",
                    self.shape, k.shape, v.shape
                ),
            ));
        }
        let [batch, lq, width] = [self.shape[0], self.shape[1], self.shape[2]];
        let lk = k.shape[1];
        if let Some(m) = key_mask
            && m.shape != [batch, lk]
        {
            return Err(TensorError::shape(
                op,
                format!("key mask must be [{batch}, {lk}], got {:?}", m.shape),
            ));
        }
        let plan = AttentionPlan {
            batch,
            heads,
            lq,
            lk,
            d: width / heads,
            dv: v.shape[2] / heads,
            scale,
            causal,
            mask: if key_mask.is_some() {
                AttentionMask::KeepKeys
            } else {
                AttentionMask::None
            },
        };
        self.run_attention(k, v, key_mask, &plan)
    }

    fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        run(
            on("unary", &[self])?,
            self.shape.clone(),
            || cpu::elementwise::unary(self.cpu_data(), op),
            |d| gpu::elementwise::unary(d, self.gpu_buffer(), self.numel(), op),
        )
    }

    /// GELU with the exact (erf) form, as PyTorch's default `gelu`.
    ///
    /// # Errors
    /// A backend error.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }

    /// Quick-GELU, `x · σ(1.702 x)`, as OpenAI's CLIP.
    ///
    /// # Errors
    /// A backend error.
    pub fn quick_gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::QuickGelu)
    }

    /// SiLU (swish), `x · σ(x)`.
    ///
    /// # Errors
    /// A backend error.
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }

    /// `x · s`.
    ///
    /// # Errors
    /// A backend error.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(s, 0.0))
    }

    /// `x · a + b`.
    ///
    /// # Errors
    /// A backend error.
    pub fn affine(&self, a: f32, b: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(a, b))
    }

    /// `x` clamped to `[min, max]` (e.g. a sampler's x̂₀ to [-1, 1]).
    ///
    /// # Errors
    /// A backend error.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Clamp(min, max))
    }

    /// Each row of the last axis divided by its L2 norm (at least `eps`), as PyTorch's
    /// `F.normalize`: CLIP's embeddings.
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn l2_normalize(&self, eps: f32) -> Result<Tensor> {
        let (rows, len) = self.rows("l2_normalize")?;
        run(
            on("l2_normalize", &[self])?,
            self.shape.clone(),
            || cpu::softmax::l2_normalize(self.cpu_data(), rows, len, eps),
            |d| gpu::softmax::l2_normalize(d, self.gpu_buffer(), rows, len, eps),
        )
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        let rank = self.rank().max(rhs.rank());
        let pad = |s: &[usize]| {
            let mut v = vec![1; rank - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (ls, rs) = (pad(&self.shape), pad(&rhs.shape));
        let mut shape = Vec::with_capacity(rank);
        for (&a, &b) in ls.iter().zip(&rs) {
            shape.push(match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(TensorError::shape(
                        name,
                        format!("cannot broadcast {:?} with {:?}", self.shape, rhs.shape),
                    ));
                }
            });
        }
        let strides = |s: &[usize]| -> Vec<usize> {
            contiguous_strides(s)
                .into_iter()
                .zip(s)
                .map(|(st, &d)| if d == 1 { 0 } else { st })
                .collect()
        };
        let plan = Broadcast {
            lhs_strides: strides(&ls),
            rhs_strides: strides(&rs),
            shape,
        };
        run(
            on(name, &[self, rhs])?,
            plan.shape.clone(),
            || cpu::elementwise::binary(self.cpu_data(), rhs.cpu_data(), op, &plan),
            |d| gpu::elementwise::binary(d, self.gpu_buffer(), rhs.gpu_buffer(), op, &plan),
        )
    }

    /// `self + rhs`, with NumPy broadcasting.
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }

    /// `self − rhs`, with NumPy broadcasting.
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }

    /// `self · rhs` element-wise, with NumPy broadcasting.
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }

    fn copy_blocks(
        op: &'static str,
        dst_shape: Vec<usize>,
        parts: &[(&Tensor, BlockCopy)],
    ) -> Result<Tensor> {
        let tensors: Vec<&Tensor> = parts.iter().map(|(t, _)| *t).collect();
        run(
            on(op, &tensors)?,
            dst_shape.clone(),
            || {
                let mut out = vec![0.0; numel(&dst_shape)];
                for (t, plan) in parts {
                    cpu::layout::copy_block(t.cpu_data(), &mut out, plan);
                }
                out
            },
            |d| {
                let what = format!("output {dst_shape:?}");
                let out = d.ctx.alloc(op, &what, numel(&dst_shape))?;
                for (t, plan) in parts {
                    gpu::layout::copy_block(d, t.gpu_buffer(), &out, plan)?;
                }
                Ok(out)
            },
        )
    }

    /// Joins tensors along `axis`; all other axes must agree (e.g. channels of NCHW: axis 1).
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// let skip = Tensor::zeros(&[1, 32, 8, 8], &Device::Cpu)?;
    /// let up = Tensor::zeros(&[1, 64, 8, 8], &Device::Cpu)?;
    /// assert_eq!(Tensor::concat(&[&up, &skip], 1)?.shape(), &[1, 96, 8, 8]);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When `tensors` is empty or the other axes differ.
    pub fn concat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let op = "concat";
        let first = tensors
            .first()
            .ok_or_else(|| TensorError::shape(op, "needs at least one tensor"))?;
        axis_of(op, first, axis)?;
        let mut total = 0;
        for t in tensors {
            let same = t.rank() == first.rank()
                && t.shape
                    .iter()
                    .zip(&first.shape)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !same {
                return Err(TensorError::shape(
                    op,
                    format!(
                        "cannot join {:?} with {:?} along axis {axis}",
                        first.shape, t.shape
                    ),
                ));
            }
            total += t.shape[axis];
        }
        let outer = numel(&first.shape[..axis]);
        let inner = numel(&first.shape[axis + 1..]);
        let mut offset = 0;
        let parts: Vec<(&Tensor, BlockCopy)> = tensors
            .iter()
            .map(|t| {
                let len = t.shape[axis];
                let plan = BlockCopy {
                    outer,
                    len,
                    inner,
                    src_axis: len,
                    src_offset: 0,
                    dst_axis: total,
                    dst_offset: offset,
                };
                offset += len;
                (*t, plan)
            })
            .collect();
        let mut shape = first.shape.clone();
        shape[axis] = total;
        Tensor::copy_blocks(op, shape, &parts)
    }

    /// The slice `start..start + len` of `axis`.
    ///
    /// # Errors
    /// When the range leaves the axis.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let op = "narrow";
        axis_of(op, self, axis)?;
        if start + len > self.shape[axis] {
            return Err(TensorError::shape(
                op,
                format!(
                    "{start}..{} is out of axis {axis} of {:?}",
                    start + len,
                    self.shape
                ),
            ));
        }
        let plan = BlockCopy {
            outer: numel(&self.shape[..axis]),
            len,
            inner: numel(&self.shape[axis + 1..]),
            src_axis: self.shape[axis],
            src_offset: start,
            dst_axis: len,
            dst_offset: 0,
        };
        let mut shape = self.shape.clone();
        shape[axis] = len;
        Tensor::copy_blocks(op, shape, &[(self, plan)])
    }

    /// A contiguous copy (what `bench kernels` times for bandwidth).
    ///
    /// # Errors
    /// A backend error.
    pub fn copy(&self) -> Result<Tensor> {
        let plan = BlockCopy {
            outer: 1,
            len: self.numel(),
            inner: 1,
            src_axis: self.numel(),
            src_offset: 0,
            dst_axis: self.numel(),
            dst_offset: 0,
        };
        Tensor::copy_blocks("copy", self.shape.clone(), &[(self, plan)])
    }

    /// The axes reordered: output axis `i` is input axis `axes[i]` (up to 8 axes).
    ///
    /// # Errors
    /// When `axes` is not a permutation of the axes.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor> {
        let op = "permute";
        let mut seen = vec![false; self.rank()];
        let valid = axes.len() == self.rank()
            && self.rank() <= 8
            && axes
                .iter()
                .all(|&a| a < seen.len() && !std::mem::replace(&mut seen[a], true));
        if !valid {
            return Err(TensorError::shape(
                op,
                format!(
                    "{axes:?} is not a permutation of the axes of {:?} (at most 8)",
                    self.shape
                ),
            ));
        }
        let strides = contiguous_strides(&self.shape);
        let shape: Vec<usize> = axes.iter().map(|&a| self.shape[a]).collect();
        let src_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
        self.strided_copy(op, shape, src_strides)
    }

    /// A contiguous `shape` read from `self` through `src_strides` (0 repeats an axis).
    fn strided_copy(
        &self,
        op: &'static str,
        shape: Vec<usize>,
        src_strides: Vec<usize>,
    ) -> Result<Tensor> {
        run(
            on(op, &[self])?,
            shape.clone(),
            || cpu::layout::strided_copy(self.cpu_data(), &shape, &src_strides),
            |d| gpu::layout::strided_copy(d, op, self.gpu_buffer(), &shape, &src_strides),
        )
    }

    /// Swaps two axes.
    ///
    /// # Errors
    /// When an axis is out of range.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        axis_of("transpose", self, a.max(b))?;
        let mut axes: Vec<usize> = (0..self.rank()).collect();
        axes.swap(a, b);
        self.permute(&axes)
    }

    fn resize(&self, ho: usize, wo: usize, mode: ResizeMode) -> Result<Tensor> {
        let op = "resize";
        if self.rank() != 4 || ho == 0 || wo == 0 || self.shape[2] == 0 || self.shape[3] == 0 {
            return Err(TensorError::shape(
                op,
                format!(
                    "input must be non-empty NCHW and the size positive, got {:?} → {ho}×{wo}",
                    self.shape
                ),
            ));
        }
        let plan = ResizePlan {
            planes: self.shape[0] * self.shape[1],
            h: self.shape[2],
            w: self.shape[3],
            ho,
            wo,
            mode,
        };
        let shape = vec![self.shape[0], self.shape[1], ho, wo];
        run(
            on(op, &[self])?,
            shape,
            || cpu::resize::resize(self.cpu_data(), &plan),
            |d| gpu::resize::resize(d, self.gpu_buffer(), &plan),
        )
    }

    /// Nearest-neighbour ×2 upsampling of NCHW images (each pixel becomes 2×2).
    ///
    /// # Errors
    /// When the input is not NCHW.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        let (h, w) = (
            self.shape.get(2).copied().unwrap_or(0),
            self.shape.get(3).copied().unwrap_or(0),
        );
        self.resize(2 * h, 2 * w, ResizeMode::Nearest)
    }

    /// Nearest-neighbour resize of NCHW images to `h × w` (PyTorch's `nearest`).
    ///
    /// # Errors
    /// When the input is not NCHW.
    pub fn resize_nearest(&self, h: usize, w: usize) -> Result<Tensor> {
        self.resize(h, w, ResizeMode::Nearest)
    }

    /// Bilinear resize of NCHW images to `h × w` (half-pixel centres, `align_corners = false`).
    ///
    /// # Errors
    /// When the input is not NCHW.
    pub fn resize_bilinear(&self, h: usize, w: usize) -> Result<Tensor> {
        self.resize(h, w, ResizeMode::Bilinear)
    }

    /// Sinusoidal embedding of timesteps `[B]` into `[B, dim]`: `[cos(t·f) | sin(t·f)]` with
    /// `f_i = max_period^(−i / (dim/2))` (a zero last column when `dim` is odd) — guided
    /// diffusion's and Stable Diffusion's convention. For diffusers' other conventions see
    /// [`Tensor::timestep_embedding_with`].
    ///
    /// # Errors
    /// When `self` is not a vector.
    pub fn timestep_embedding(&self, dim: usize, max_period: f32) -> Result<Tensor> {
        let options = TimestepEmbedding {
            max_period,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        };
        self.timestep_embedding_with(dim, &options)
    }

    /// Sinusoidal embedding of timesteps `[B]` into `[B, dim]` with diffusers'
    /// `get_timestep_embedding` options ([`TimestepEmbedding`]).
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor, TimestepEmbedding};
    /// let t = Tensor::from_vec(vec![0.0, 999.0], &[2], &Device::Cpu)?;
    /// // Stable Diffusion's `Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)`.
    /// let sd = TimestepEmbedding { flip_sin_to_cos: true, freq_shift: 0.0, ..Default::default() };
    /// let e = t.timestep_embedding_with(320, &sd)?;
    /// assert_eq!(e.shape(), &[2, 320]);
    /// assert_eq!(e.to_vec()?[0], 1.0); // cos(0)
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When `self` is not a vector, or `freq_shift` leaves no positive denominator
    /// (`dim/2 − freq_shift ≤ 0`).
    pub fn timestep_embedding_with(
        &self,
        dim: usize,
        options: &TimestepEmbedding,
    ) -> Result<Tensor> {
        let op = "timestep_embedding";
        if self.rank() != 1 {
            return Err(TensorError::shape(
                op,
                format!("timesteps must be [B], got {:?}", self.shape),
            ));
        }
        let half = (dim / 2) as f32;
        if dim >= 2 && half - options.freq_shift <= 0.0 {
            return Err(TensorError::shape(
                op,
                format!(
                    "freq_shift {} leaves no frequency for dim {dim} (needs dim/2 − freq_shift > 0)",
                    options.freq_shift
                ),
            ));
        }
        let plan = TimestepPlan {
            batch: self.shape[0],
            dim,
            options: *options,
        };
        run(
            on(op, &[self])?,
            vec![plan.batch, dim],
            || cpu::embedding::timestep(self.cpu_data(), &plan),
            |d| gpu::embedding::timestep(d, self.gpu_buffer(), &plan),
        )
    }

    /// Rows of the table `self` (`[V, D]`) picked by `ids`: `[ids.len(), D]`. The table may be
    /// f16 ([`Tensor::weights_f16`]).
    ///
    /// # Errors
    /// When the table is not 2D or an id is out of range.
    pub fn embedding(&self, ids: &[u32]) -> Result<Tensor> {
        let op = "embedding";
        if self.rank() != 2 {
            return Err(TensorError::shape(
                op,
                format!("table must be [V, D], got {:?}", self.shape),
            ));
        }
        let (vocab, dim) = (self.shape[0], self.shape[1]);
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(TensorError::shape(
                op,
                format!("id {bad} is out of the table's {vocab} rows"),
            ));
        }
        let shape = vec![ids.len(), dim];
        run(
            on_any(op, &[self])?,
            shape,
            || cpu::embedding::gather(self.cpu_data(), ids, dim),
            |d| {
                let half = self.dtype == DType::F16;
                gpu::embedding::gather(d, self.gpu_buffer(), half, ids, dim)
            },
        )
    }

    /// Standard normal noise of `shape` from `seed`, made on `device`: the same numbers on every
    /// backend (up to the precision of `ln`, `cos` and `sin`) and in every run, by the project's
    /// own documented algorithm — Philox4x32-10 counters and Box-Muller (docs/tensor.md,
    /// "Seeded noise") — so that a Python reference reproduces it. The values depend only on
    /// the seed and the element's index: a shorter tensor is a prefix of a longer one.
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// let noise = Tensor::randn(&[1, 4, 8, 8], 42, &Device::Cpu)?;
    /// assert_eq!(noise.to_vec()?, Tensor::randn(&[256], 42, &Device::Cpu)?.to_vec()?);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When the tensor has 2³² elements or more (the counter is 32-bit), or does not fit the
    /// adapter.
    pub fn randn(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
        let len = numel(shape);
        if len >= 1 << 32 {
            return Err(TensorError::shape(
                "randn",
                format!("{shape:?} has 2^32 elements or more; the counter is 32-bit"),
            ));
        }
        run(
            On::of(device),
            shape.to_vec(),
            || cpu::random::normal(len, seed),
            |d| gpu::random::normal(d, len, seed),
        )
    }

    /// The values repeated along new leading axes and along axes of size 1, up to `shape`
    /// (NumPy's `broadcast_to`), as a contiguous copy.
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// let bias = Tensor::from_vec(vec![1.0, 2.0], &[2, 1], &Device::Cpu)?;
    /// let wide = bias.broadcast_to(&[3, 2, 2])?;
    /// assert_eq!(wide.to_vec()?, [1.0, 1.0, 2.0, 2.0].repeat(3));
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When `self` does not broadcast to `shape`, or `shape` has more than 8 axes.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let op = "broadcast_to";
        let rank = shape.len();
        let fits = self.rank() <= rank
            && rank <= 8
            && self
                .shape
                .iter()
                .rev()
                .zip(shape.iter().rev())
                .all(|(&a, &b)| a == b || a == 1);
        if !fits {
            return Err(TensorError::shape(
                op,
                format!(
                    "cannot broadcast {:?} to {shape:?} (at most 8 axes)",
                    self.shape
                ),
            ));
        }
        let mut padded = vec![1; rank - self.rank()];
        padded.extend_from_slice(&self.shape);
        let src_strides: Vec<usize> = contiguous_strides(&padded)
            .into_iter()
            .zip(&padded)
            .map(|(stride, &extent)| if extent == 1 { 0 } else { stride })
            .collect();
        self.strided_copy(op, shape.to_vec(), src_strides)
    }

    fn reduce_last(&self, op: &'static str, reduction: Reduction) -> Result<Tensor> {
        let (rows, len) = self.rows(op)?;
        let mut shape = self.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = 1;
        }
        run(
            on(op, &[self])?,
            shape,
            || cpu::reduce::reduce_last(self.cpu_data(), len, reduction),
            |d| gpu::reduce::reduce_last(d, self.gpu_buffer(), rows, len, reduction),
        )
    }

    /// The sum over the last axis, kept as an axis of size 1 (so it broadcasts against `self`):
    /// `[.., N] → [.., 1]`.
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn sum_last(&self) -> Result<Tensor> {
        self.reduce_last("sum_last", Reduction::Sum)
    }

    /// The mean over the last axis, `[.., N] → [.., 1]`.
    ///
    /// ```
    /// use reimagen::tensor::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0, 2.0, 6.0, -1.0, 5.0, 2.0], &[2, 3], &Device::Cpu)?;
    /// let centred = x.sub(&x.mean_last()?)?;
    /// assert_eq!(centred.to_vec()?, [-2.0, -1.0, 3.0, -3.0, 3.0, 0.0]);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn mean_last(&self) -> Result<Tensor> {
        self.reduce_last("mean_last", Reduction::Mean)
    }

    /// The maximum over the last axis, `[.., N] → [.., 1]`.
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn max_last(&self) -> Result<Tensor> {
        self.reduce_last("max_last", Reduction::Max)
    }

    /// The index of the maximum over the last axis (the first one on ties, as PyTorch), as f32
    /// values (exact below 2²⁴): `[.., N] → [.., 1]`.
    ///
    /// # Errors
    /// When the last axis is empty.
    pub fn argmax_last(&self) -> Result<Tensor> {
        self.reduce_last("argmax_last", Reduction::ArgMax)
    }
}
