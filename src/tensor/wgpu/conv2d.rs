//! Host side of `shaders/conv2d.wgsl`: conv2d as an implicit GEMM, one grid layer per image.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::ConvPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "conv2d.wgsl",
    source: include_str!("../../../shaders/conv2d.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `conv2d.wgsl`.
    Params = "Params" {
        cin: u32,
        h: u32,
        w: u32,
        cout: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        ho: u32,
        wo: u32,
        has_bias: u32,
        weight_is_half: u32,
        weight_vec4: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

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
    let params = Params {
        cin: p.cin as u32,
        h: p.h as u32,
        w: p.w as u32,
        cout: p.cout as u32,
        kh: p.kh as u32,
        kw: p.kw as u32,
        stride: p.stride as u32,
        pad: p.pad as u32,
        ho: p.ho as u32,
        wo: p.wo as u32,
        has_bias: bias.is_some() as u32,
        weight_is_half: weight_is_half as u32,
        weight_vec4: weight_vec4 as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
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
