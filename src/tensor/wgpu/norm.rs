//! Host side of `shaders/norm.wgsl`: group norm (with fused SiLU) and layer norm, one workgroup
//! per group or row.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::GroupNormPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "norm.wgsl",
    source: include_str!("../../../shaders/norm.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `norm.wgsl` (both entry points).
    Params = "Params" {
        count: u32,
        len: u32,
        spatial: u32,
        channels_per_group: u32,
        groups: u32,
        silu: u32,
        eps: f32,
        _pad: u32,
    }
}

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
    let params = Params {
        count: word(OP, "groups", count)?,
        len: word(OP, "group", per_group * p.spatial)?,
        spatial: word(OP, "spatial", p.spatial.max(1))?,
        channels_per_group: per_group as u32,
        groups: p.groups as u32,
        silu: p.silu as u32,
        eps: p.eps,
        _pad: 0,
    };
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
    // The group-norm fields are unused by `layer_norm` (one "group" of one channel per row).
    let params = Params {
        count: word(OP, "rows", rows)?,
        len: word(OP, "row", len)?,
        spatial: 1,
        channels_per_group: 1,
        groups: 1,
        silu: 0,
        eps,
        _pad: 0,
    };
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
