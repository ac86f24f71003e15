//! Host side of `shaders/elementwise.wgsl`: unary functions and broadcast binary ops.

use super::{GpuBuffer, Shader, WgpuDevice, bits, word};
use crate::tensor::error::{Result, TensorError};
use crate::tensor::plan::{BinaryOp, Broadcast, UnaryOp};

pub(crate) const SHADER: Shader = Shader {
    name: "elementwise.wgsl",
    source: include_str!("../../../shaders/elementwise.wgsl"),
};

pub(crate) fn unary(d: &WgpuDevice, x: &GpuBuffer, len: usize, op: UnaryOp) -> Result<GpuBuffer> {
    const OP: &str = "unary";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", len)?;
    let (code, a, b) = match op {
        UnaryOp::Gelu => (0, 0.0, 0.0),
        UnaryOp::QuickGelu => (1, 0.0, 0.0),
        UnaryOp::Silu => (2, 0.0, 0.0),
        UnaryOp::Affine(a, b) => (3, a, b),
        UnaryOp::Clamp(a, b) => (4, a, b),
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(
        OP,
        &SHADER,
        "unary",
        &[x, &out],
        &[word(OP, "input", len)?, code, bits(a), bits(b)],
        grid,
    )?;
    Ok(out)
}

/// Packs a shape and strides (up to 8 axes) the way the kernels read them.
pub(crate) fn pack_axes(op: &'static str, params: &mut Vec<u32>, axes: &[usize]) -> Result<()> {
    if axes.len() > 8 {
        return Err(TensorError::shape(
            op,
            format!("at most 8 axes, got {}", axes.len()),
        ));
    }
    for i in 0..8 {
        params.push(word(op, "extent", axes.get(i).copied().unwrap_or(1))?);
    }
    Ok(())
}

pub(crate) fn binary(
    d: &WgpuDevice,
    lhs: &GpuBuffer,
    rhs: &GpuBuffer,
    op: BinaryOp,
    p: &Broadcast,
) -> Result<GpuBuffer> {
    const OP: &str = "binary";
    let ctx = &d.ctx;
    let len: usize = p.shape.iter().product();
    let out = ctx.alloc(OP, &format!("output {:?}", p.shape), len)?;
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
    };
    let mut params = vec![word(OP, "output", len)?, p.shape.len() as u32, code, 0];
    pack_axes(OP, &mut params, &p.shape)?;
    pack_axes(OP, &mut params, &p.lhs_strides)?;
    pack_axes(OP, &mut params, &p.rhs_strides)?;
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, "binary", &[lhs, rhs, &out], &params, grid)?;
    Ok(out)
}
