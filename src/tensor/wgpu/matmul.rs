//! Host side of `shaders/matmul.wgsl`: batched matmul and linear (transposed weights, bias).

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::MatmulPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "matmul.wgsl",
    source: include_str!("../../../shaders/matmul.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `matmul.wgsl`.
    Params = "Params" {
        m: u32,
        n: u32,
        k: u32,
        trans_b: u32,
        a_batch_stride: u32,
        b_batch_stride: u32,
        has_bias: u32,
        b_is_half: u32,
        a_vec4: u32,
        b_vec4: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

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
    // Every binding the kernel declares must be bound; the unused ones get a stand-in of one
    // vec4 (the smallest a vec4 array binding accepts).
    let dummy = ctx.alloc(OP, "unused binding", 4)?;
    let bias_buffer = bias.unwrap_or(&dummy);
    let (b_f32, b_f16) = if b_is_half { (&dummy, b) } else { (b, &dummy) };
    // vec4 loads need the contiguous axis (and so every row start and batch stride) to be a
    // multiple of 4 values.
    let a_vec4 = p.k.is_multiple_of(4) && p.m * p.k > 0;
    let b_vec4 = !b_is_half
        && p.n * p.k > 0
        && if p.trans_b {
            p.k.is_multiple_of(4)
        } else {
            p.n.is_multiple_of(4)
        };
    let a4 = if a_vec4 { a } else { &dummy };
    let b4 = if b_vec4 { b } else { &dummy };
    let params = Params {
        m: word(OP, "M", p.m)?,
        n: word(OP, "N", p.n)?,
        k: word(OP, "K", p.k)?,
        trans_b: p.trans_b as u32,
        a_batch_stride: word(OP, "lhs batch stride", p.a_batch_stride)?,
        b_batch_stride: word(OP, "rhs batch stride", p.b_batch_stride)?,
        has_bias: bias.is_some() as u32,
        b_is_half: b_is_half as u32,
        a_vec4: a_vec4 as u32,
        b_vec4: b_vec4 as u32,
        _pad0: 0,
        _pad1: 0,
    };
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
        &[a, a4, b_f32, b4, b_f16, bias_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
