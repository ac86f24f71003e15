//! Host side of `shaders/reduce.wgsl`: sum, mean, max and argmax over the last axis, one
//! workgroup per row.
//!
//! Not here: shape checks (`ops.rs`), the CPU version (`cpu/reduce.rs`).

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::Reduction;

pub(crate) const SHADER: Shader = Shader {
    name: "reduce.wgsl",
    source: include_str!("../../../shaders/reduce.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `reduce.wgsl`.
    Params = "Params" {
        rows: u32,
        len: u32,
        op: u32,
        _pad: u32,
    }
}

pub(crate) fn reduce_last(
    d: &WgpuDevice,
    x: &GpuBuffer,
    rows: usize,
    len: usize,
    op: Reduction,
) -> Result<GpuBuffer> {
    const OP: &str = "reduce";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", rows)?;
    word(OP, "input", rows * len)?;
    let code = match op {
        Reduction::Sum => 0,
        Reduction::Mean => 1,
        Reduction::Max => 2,
        Reduction::ArgMax => 3,
    };
    let params = Params {
        rows: word(OP, "rows", rows)?,
        len: word(OP, "row", len)?,
        op: code,
        _pad: 0,
    };
    let grid = ctx.linear_grid(OP, rows as u64)?;
    ctx.dispatch(OP, &SHADER, "reduce_last", &[x, &out], &params, grid)?;
    Ok(out)
}
