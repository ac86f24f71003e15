//! Host side of `shaders/norm.wgsl`: group norm (with fused SiLU) and layer norm, one workgroup
//! per group or row.

use super::{GpuBuffer, Shader, WgpuDevice, bits, word};
use crate::tensor::error::Result;
use crate::tensor::plan::GroupNormPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "norm.wgsl",
    source: include_str!("../../../shaders/norm.wgsl"),
};

pub(crate) fn group_norm(
    d: &WgpuDevice,
    x: &GpuBuffer,
    gamma: &GpuBuffer,
    beta: &GpuBuffer,
    p: &GroupNormPlan,
) -> Result<GpuBuffer> {
    const OP: &str = "group_norm";
    let ctx = &d.ctx;
    let elements = p.images * p.channels * p.spatial;
    let out = ctx.alloc(OP, "output", elements)?;
    word(OP, "input", elements)?;
    let count = p.images * p.groups;
    let per_group = p.channels / p.groups;
    let params = [
        word(OP, "groups", count)?,
        word(OP, "group", per_group * p.spatial)?,
        word(OP, "spatial", p.spatial.max(1))?,
        per_group as u32,
        p.groups as u32,
        p.silu as u32,
        bits(p.eps),
        0,
    ];
    let grid = ctx.linear_grid(OP, count as u64)?;
    ctx.dispatch(
        OP,
        &SHADER,
        "group_norm",
        &[x, gamma, beta, &out],
        &params,
        grid,
    )?;
    Ok(out)
}

pub(crate) fn layer_norm(
    d: &WgpuDevice,
    x: &GpuBuffer,
    gamma: &GpuBuffer,
    beta: &GpuBuffer,
    rows: usize,
    len: usize,
    eps: f32,
) -> Result<GpuBuffer> {
    const OP: &str = "layer_norm";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", rows * len)?;
    word(OP, "input", rows * len)?;
    let params = [rows as u32, len as u32, 1, 1, 1, 0, bits(eps), 0];
    let grid = ctx.linear_grid(OP, rows as u64)?;
    ctx.dispatch(
        OP,
        &SHADER,
        "layer_norm",
        &[x, gamma, beta, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
