//! Host side of `shaders/resize.wgsl`: nearest and bilinear resizing of NCHW planes.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::{ResizeMode, ResizePlan};

pub(crate) const SHADER: Shader = Shader {
    name: "resize.wgsl",
    source: include_str!("../../../shaders/resize.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `resize.wgsl` (both entry points).
    Params = "Params" {
        planes: u32,
        h: u32,
        w: u32,
        ho: u32,
        wo: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

pub(crate) fn resize(d: &WgpuDevice, x: &GpuBuffer, p: &ResizePlan) -> Result<GpuBuffer> {
    const OP: &str = "resize";
    let ctx = &d.ctx;
    let len = p.planes * p.ho * p.wo;
    let out = ctx.alloc(OP, "output", len)?;
    word(OP, "output", len)?;
    word(OP, "input", p.planes * p.h * p.w)?;
    let params = Params {
        planes: p.planes as u32,
        h: p.h as u32,
        w: p.w as u32,
        ho: p.ho as u32,
        wo: p.wo as u32,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let entry = match p.mode {
        ResizeMode::Nearest => "nearest",
        ResizeMode::Bilinear => "bilinear",
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, entry, &[x, &out], &params, grid)?;
    Ok(out)
}
