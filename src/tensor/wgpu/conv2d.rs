//! Host side of `shaders/conv2d.wgsl`: conv2d as an implicit GEMM, one grid layer per image.

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::ops::ConvPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "conv2d.wgsl",
    source: include_str!("../../../shaders/conv2d.wgsl"),
};

const TILE: usize = 64;

pub(crate) fn conv2d(
    d: &WgpuDevice,
    x: &GpuBuffer,
    weight: &GpuBuffer,
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
    let dummy;
    let bias_buffer = match bias {
        Some(b) => b,
        None => {
            dummy = ctx.alloc(OP, "bias", 1)?;
            &dummy
        }
    };
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
        &[x, weight, bias_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
