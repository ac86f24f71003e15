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

/// `b_is_half`: `b` holds f16 pairs packed in u32 words.
pub(crate) fn matmul(
    d: &WgpuDevice,
    a: &GpuBuffer,
    b: &GpuBuffer,
    b_is_half: bool,
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
    // Every binding the kernel declares must be bound; the unused ones get a 1-value stand-in.
    let dummy = ctx.alloc(OP, "unused binding", 1)?;
    let bias_buffer = bias.unwrap_or(&dummy);
    let (b_f32, b_f16) = if b_is_half { (&dummy, b) } else { (b, &dummy) };
    let params = [
        word(OP, "M", p.m)?,
        word(OP, "N", p.n)?,
        word(OP, "K", p.k)?,
        p.trans_b as u32,
        word(OP, "lhs batch stride", p.a_batch_stride)?,
        word(OP, "rhs batch stride", p.b_batch_stride)?,
        bias.is_some() as u32,
        b_is_half as u32,
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
        &[a, b_f32, b_f16, bias_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
