//! Host side of `shaders/layout.wgsl`: strided copies (permute) and block copies (concat,
//! narrow, copy).

use super::elementwise::pack_axes;
use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::BlockCopy;

pub(crate) const SHADER: Shader = Shader {
    name: "layout.wgsl",
    source: include_str!("../../../shaders/layout.wgsl"),
    params: &[StridedParams::LAYOUT, BlockParams::LAYOUT],
};

wgsl_params! {
    /// `StridedParams` of `layout.wgsl`.
    StridedParams = "StridedParams" {
        len: u32,
        rank: u32,
        _pad0: u32,
        _pad1: u32,
        shape: [[u32; 4]; 2],
        src_strides: [[u32; 4]; 2],
    }
}

wgsl_params! {
    /// `BlockParams` of `layout.wgsl`.
    BlockParams = "BlockParams" {
        outer: u32,
        len: u32,
        inner: u32,
        src_axis: u32,
        src_offset: u32,
        dst_axis: u32,
        dst_offset: u32,
        _pad: u32,
    }
}

pub(crate) fn strided_copy(
    d: &WgpuDevice,
    op: &'static str,
    src: &GpuBuffer,
    shape: &[usize],
    src_strides: &[usize],
) -> Result<GpuBuffer> {
    let ctx = &d.ctx;
    let len: usize = shape.iter().product();
    let out = ctx.alloc(op, &format!("output {shape:?}"), len)?;
    let params = StridedParams {
        len: word(op, "output", len)?,
        rank: shape.len() as u32,
        _pad0: 0,
        _pad1: 0,
        shape: pack_axes(op, shape)?,
        src_strides: pack_axes(op, src_strides)?,
    };
    let grid = ctx.elementwise_grid(op, len)?;
    ctx.dispatch(op, &SHADER, "strided_copy", &[src, &out], &params, grid)?;
    Ok(out)
}

pub(crate) fn copy_block(
    d: &WgpuDevice,
    src: &GpuBuffer,
    dst: &GpuBuffer,
    p: &BlockCopy,
) -> Result<()> {
    const OP: &str = "copy_block";
    let ctx = &d.ctx;
    let len = p.outer * p.len * p.inner;
    word(OP, "output", p.outer * p.dst_axis * p.inner)?;
    word(OP, "input", p.outer * p.src_axis * p.inner)?;
    let params = BlockParams {
        outer: p.outer as u32,
        len: p.len as u32,
        inner: p.inner as u32,
        src_axis: p.src_axis as u32,
        src_offset: p.src_offset as u32,
        dst_axis: p.dst_axis as u32,
        dst_offset: p.dst_offset as u32,
        _pad: 0,
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, "copy_block", &[src, dst], &params, grid)
}
