//! Host side of `shaders/resize.wgsl`: nearest and bilinear resizing of NCHW planes.

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;
use crate::tensor::plan::{ResizeMode, ResizePlan};

pub(crate) const SHADER: Shader = Shader {
    name: "resize.wgsl",
    source: include_str!("../../../shaders/resize.wgsl"),
};

pub(crate) fn resize(d: &WgpuDevice, x: &GpuBuffer, p: &ResizePlan) -> Result<GpuBuffer> {
    const OP: &str = "resize";
    let ctx = &d.ctx;
    let len = p.planes * p.ho * p.wo;
    let out = ctx.alloc(OP, "output", len)?;
    word(OP, "output", len)?;
    word(OP, "input", p.planes * p.h * p.w)?;
    let params = [
        p.planes as u32,
        p.h as u32,
        p.w as u32,
        p.ho as u32,
        p.wo as u32,
        0,
        0,
        0,
    ];
    let entry = match p.mode {
        ResizeMode::Nearest => "nearest",
        ResizeMode::Bilinear => "bilinear",
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, entry, &[x, &out], &params, grid)?;
    Ok(out)
}
