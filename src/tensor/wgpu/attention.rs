//! Host side of `shaders/attention.wgsl`: flash-style attention, 64 queries per workgroup and
//! one grid row per (batch, head); heads are read in place from `[B, L, H·D]`.
//!
//! Not here: shape checks (`ops.rs`), the CPU version (`cpu/attention.rs`).

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::{Result, TensorError};
use crate::tensor::plan::{AttentionMask, AttentionPlan};

pub(crate) const SHADER: Shader = Shader {
    name: "attention.wgsl",
    source: include_str!("../../../shaders/attention.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `attention.wgsl`.
    Params = "Params" {
        lq: u32,
        lk: u32,
        d: u32,
        dv: u32,
        scale: f32,
        causal: u32,
        heads: u32,
        mask_kind: u32,
        mask_batch_stride: u32,
        mask_row_stride: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// The head size the kernel keeps in registers.
pub(crate) const MAX_HEAD_DIM: usize = 128;
const QUERIES: usize = 64;

pub(crate) fn attention(
    dev: &WgpuDevice,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    mask: Option<&GpuBuffer>,
    p: &AttentionPlan,
) -> Result<GpuBuffer> {
    const OP: &str = "attention";
    if p.d > MAX_HEAD_DIM || p.dv > MAX_HEAD_DIM {
        return Err(TensorError::shape(
            OP,
            format!(
                "head size {} (q, k) / {} (v) exceeds the WGSL kernel's {MAX_HEAD_DIM}; split the heads",
                p.d, p.dv
            ),
        ));
    }
    let ctx = &dev.ctx;
    let out = ctx.alloc(
        OP,
        &format!("output [{}, {}, {}]", p.batch, p.lq, p.heads * p.dv),
        p.batch * p.lq * p.heads * p.dv,
    )?;
    word(OP, "queries", p.batch * p.lq * p.heads * p.d.max(p.dv))?;
    word(OP, "keys", p.batch * p.lk * p.heads * p.d.max(p.dv))?;
    word(OP, "mask", p.batch * p.lq * p.lk)?;
    let (mask_batch_stride, mask_row_stride) = p.mask_strides();
    let mask_kind = match p.mask {
        AttentionMask::None => 0,
        AttentionMask::Additive { .. } => 1,
        AttentionMask::KeepKeys => 2,
    };
    let dummy;
    let mask_buffer = match mask {
        Some(m) => m,
        None => {
            dummy = ctx.alloc(OP, "mask", 1)?;
            &dummy
        }
    };
    let params = Params {
        lq: p.lq as u32,
        lk: p.lk as u32,
        d: p.d as u32,
        dv: p.dv as u32,
        scale: p.scale,
        causal: p.causal as u32,
        heads: p.heads as u32,
        mask_kind,
        mask_batch_stride: mask_batch_stride as u32,
        mask_row_stride: mask_row_stride as u32,
        _pad0: 0,
        _pad1: 0,
    };
    let grid = [
        word(OP, "query blocks", p.lq.div_ceil(QUERIES))?,
        word(OP, "batch × heads", p.batch * p.heads)?,
        1,
    ];
    ctx.dispatch(
        OP,
        &SHADER,
        "attention",
        &[q, k, v, mask_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
