//! Host side of `shaders/conv2d.wgsl`: conv2d as an implicit GEMM, one grid layer per image.

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::plan::ConvPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "conv2d.wgsl",
    source: include_str!("../../../shaders/conv2d.wgsl"),
};

const TILE: usize = 64;

/// `weight_is_half`: `weight` holds f16 pairs packed in u32 words.
pub(crate) fn conv2d(
    d: &WgpuDevice,
    x: &GpuBuffer,
    weight: &GpuBuffer,
    weight_is_half: bool,
    bias: Option<&GpuBuffer>,
    p: &ConvPlan,
) -> Result<GpuBuffer> {
    const OP: &str = "conv2d";
    let ctx = &d.ctx;
    let elements = p.images * p.cout * p.ho * p.wo;
    let out = ctx.alloc(
        OP,
        &format!("output [{}, {}, {}, {}]", p.images, p.cout, p.ho, p.wo),
        elements,
    )?;
    word(OP, "output", elements)?;
    word(OP, "input", p.images * p.cin * p.h * p.w)?;
    // Unused bindings get a stand-in of one vec4 (the smallest a vec4 array binding accepts).
    let dummy = ctx.alloc(OP, "unused binding", 4)?;
    let bias_buffer = bias.unwrap_or(&dummy);
    let (w_f32, w_f16) = if weight_is_half {
        (&dummy, weight)
    } else {
        (weight, &dummy)
    };
    let weight_vec4 =
        !weight_is_half && (p.cin * p.kh * p.kw).is_multiple_of(4) && p.cout * p.cin > 0;
    let w4 = if weight_vec4 { weight } else { &dummy };
    let params = [
        p.cin as u32,
        p.h as u32,
        p.w as u32,
        p.cout as u32,
        p.kh as u32,
        p.kw as u32,
        p.stride as u32,
        p.pad as u32,
        p.ho as u32,
        p.wo as u32,
        bias.is_some() as u32,
        weight_is_half as u32,
        weight_vec4 as u32,
        0,
        0,
        0,
    ];
    let grid = [
        word(OP, "pixel tiles", (p.ho * p.wo).div_ceil(TILE))?,
        word(OP, "channel tiles", p.cout.div_ceil(TILE))?,
        word(OP, "images", p.images)?,
    ];
    ctx.dispatch(
        OP,
        &SHADER,
        "conv2d",
        &[x, w_f32, w4, w_f16, bias_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
