//! Host side of `shaders/matmul.wgsl`: batched matmul and linear (transposed weights, bias).

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::ops::MatmulPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "matmul.wgsl",
    source: include_str!("../../../shaders/matmul.wgsl"),
};

/// Output rows and columns per workgroup.
const TILE: usize = 64;

pub(crate) fn matmul(
    d: &WgpuDevice,
    a: &GpuBuffer,
    b: &GpuBuffer,
    bias: Option<&GpuBuffer>,
    p: &MatmulPlan,
) -> Result<GpuBuffer> {
    const OP: &str = "matmul";
    let ctx = &d.ctx;
    let out = ctx.alloc(
        OP,
        &format!("output [{}, {}, {}]", p.batch, p.m, p.n),
        p.batch * p.m * p.n,
    )?;
    let dummy;
    let bias_buffer = match bias {
        Some(b) => b,
        None => {
            dummy = ctx.alloc(OP, "bias", 1)?;
            &dummy
        }
    };
    let params = [
        word(OP, "M", p.m)?,
        word(OP, "N", p.n)?,
        word(OP, "K", p.k)?,
        p.trans_b as u32,
        word(OP, "lhs batch stride", p.a_batch_stride)?,
        word(OP, "rhs batch stride", p.b_batch_stride)?,
        bias.is_some() as u32,
        0,
    ];
    word(OP, "output", p.batch * p.m * p.n)?;
    let grid = [
        word(OP, "column tiles", p.n.div_ceil(TILE))?,
        word(OP, "row tiles", p.m.div_ceil(TILE))?,
        word(OP, "batch", p.batch)?,
    ];
    ctx.dispatch(
        OP,
        &SHADER,
        "matmul",
        &[a, b, bias_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
