//! Host side of `shaders/elementwise.wgsl`: unary functions and broadcast binary ops.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::{Result, TensorError};
use crate::tensor::plan::{BinaryOp, Broadcast, UnaryOp};

pub(crate) const SHADER: Shader = Shader {
    name: "elementwise.wgsl",
    source: include_str!("../../../shaders/elementwise.wgsl"),
    params: &[UnaryParams::LAYOUT, BinaryParams::LAYOUT],
};

wgsl_params! {
    /// `UnaryParams` of `elementwise.wgsl`.
    UnaryParams = "UnaryParams" {
        len: u32,
        op: u32,
        a: f32,
        b: f32,
    }
}

wgsl_params! {
    /// `BinaryParams` of `elementwise.wgsl`: the output shape and each input's strides over it.
    BinaryParams = "BinaryParams" {
        len: u32,
        rank: u32,
        op: u32,
        _pad: u32,
        shape: [[u32; 4]; 2],
        lhs_strides: [[u32; 4]; 2],
        rhs_strides: [[u32; 4]; 2],
    }
}

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
        &UnaryParams {
            len: word(OP, "input", len)?,
            op: code,
            a,
            b,
        },
        grid,
    )?;
    Ok(out)
}

/// A shape or strides (up to 8 axes) as the kernels read them: `array<vec4<u32>, 2>`, unused
/// axes 1.
pub(crate) fn pack_axes(op: &'static str, axes: &[usize]) -> Result<[[u32; 4]; 2]> {
    if axes.len() > 8 {
        return Err(TensorError::shape(
            op,
            format!("at most 8 axes, got {}", axes.len()),
        ));
    }
    let mut packed = [[1u32; 4]; 2];
    for (i, &extent) in axes.iter().enumerate() {
        packed[i / 4][i % 4] = word(op, "extent", extent)?;
    }
    Ok(packed)
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
    let params = BinaryParams {
        len: word(OP, "output", len)?,
        rank: p.shape.len() as u32,
        op: code,
        _pad: 0,
        shape: pack_axes(OP, &p.shape)?,
        lhs_strides: pack_axes(OP, &p.lhs_strides)?,
        rhs_strides: pack_axes(OP, &p.rhs_strides)?,
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, "binary", &[lhs, rhs, &out], &params, grid)?;
    Ok(out)
}
