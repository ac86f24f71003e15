//! Host side of `shaders/softmax.wgsl`: softmax and L2 normalisation over the last axis, one
//! workgroup per row.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "softmax.wgsl",
    source: include_str!("../../../shaders/softmax.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `softmax.wgsl` (both entry points; `eps` is read by `l2_normalize` only).
    Params = "Params" {
        rows: u32,
        len: u32,
        eps: f32,
        _pad: u32,
    }
}

pub(crate) fn softmax(d: &WgpuDevice, x: &GpuBuffer, rows: usize, len: usize) -> Result<GpuBuffer> {
    const OP: &str = "softmax";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", rows * len)?;
    word(OP, "input", rows * len)?;
    let grid = ctx.linear_grid(OP, rows as u64)?;
    ctx.dispatch(
        OP,
        &SHADER,
        "softmax",
        &[x, &out],
        &Params {
            rows: word(OP, "rows", rows)?,
            len: word(OP, "row", len)?,
            eps: 0.0,
            _pad: 0,
        },
        grid,
    )?;
    Ok(out)
}

pub(crate) fn l2_normalize(
    d: &WgpuDevice,
    x: &GpuBuffer,
    rows: usize,
    len: usize,
    eps: f32,
) -> Result<GpuBuffer> {
    const OP: &str = "l2_normalize";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", rows * len)?;
    word(OP, "input", rows * len)?;
    let grid = ctx.linear_grid(OP, rows as u64)?;
    let params = Params {
        rows: word(OP, "rows", rows)?,
        len: word(OP, "row", len)?,
        eps,
        _pad: 0,
    };
    ctx.dispatch(OP, &SHADER, "l2_normalize", &[x, &out], &params, grid)?;
    Ok(out)
}
