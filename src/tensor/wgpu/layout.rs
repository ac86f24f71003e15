//! Host side of `shaders/layout.wgsl`: strided copies (permute) and block copies (concat,
//! narrow, copy).

use super::elementwise::pack_axes;
use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::plan::BlockCopy;

pub(crate) const SHADER: Shader = Shader {
    name: "layout.wgsl",
    source: include_str!("../../../shaders/layout.wgsl"),
};

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
    let mut params = vec![word(op, "output", len)?, shape.len() as u32, 0, 0];
    pack_axes(op, &mut params, shape)?;
    pack_axes(op, &mut params, src_strides)?;
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
    let params = [
        p.outer as u32,
        p.len as u32,
        p.inner as u32,
        p.src_axis as u32,
        p.src_offset as u32,
        p.dst_axis as u32,
        p.dst_offset as u32,
        0,
    ];
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, "copy_block", &[src, dst], &params, grid)
}
