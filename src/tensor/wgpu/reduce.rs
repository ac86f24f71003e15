//! Host side of `shaders/reduce.wgsl`: sum, mean, max and argmax over the last axis, one
//! workgroup per row.
//!
//! Not here: shape checks (`ops.rs`), the CPU version (`cpu/reduce.rs`).

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::plan::Reduction;

pub(crate) const SHADER: Shader = Shader {
    name: "reduce.wgsl",
    source: include_str!("../../../shaders/reduce.wgsl"),
};

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
    let params = [word(OP, "rows", rows)?, word(OP, "row", len)?, code, 0];
    let grid = ctx.linear_grid(OP, rows as u64)?;
    ctx.dispatch(OP, &SHADER, "reduce_last", &[x, &out], &params, grid)?;
    Ok(out)
}
