//! Host side of `shaders/embedding.wgsl`: sinusoidal timestep embedding and row gather.

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;
use crate::tensor::plan::TimestepPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "embedding.wgsl",
    source: include_str!("../../../shaders/embedding.wgsl"),
    params: &[TimestepParams::LAYOUT, GatherParams::LAYOUT],
};

wgsl_params! {
    /// `TimestepParams` of `embedding.wgsl`.
    TimestepParams = "TimestepParams" {
        batch: u32,
        dim: u32,
        max_period: f32,
        flip_sin_to_cos: u32,
        freq_shift: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

wgsl_params! {
    /// `GatherParams` of `embedding.wgsl`.
    GatherParams = "GatherParams" {
        rows: u32,
        dim: u32,
        table_is_half: u32,
        _pad: u32,
    }
}

pub(crate) fn timestep(d: &WgpuDevice, t: &GpuBuffer, p: &TimestepPlan) -> Result<GpuBuffer> {
    const OP: &str = "timestep_embedding";
    let ctx = &d.ctx;
    let len = p.batch * p.dim;
    let out = ctx.alloc(OP, "output", len)?;
    word(OP, "output", len)?;
    let params = TimestepParams {
        batch: word(OP, "batch", p.batch)?,
        dim: word(OP, "dim", p.dim)?,
        max_period: p.options.max_period,
        flip_sin_to_cos: p.options.flip_sin_to_cos as u32,
        freq_shift: p.options.freq_shift,
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(OP, &SHADER, "timestep", &[t, &out], &params, grid)?;
    Ok(out)
}

/// `table_is_half`: the table holds f16 pairs packed in u32 words.
pub(crate) fn gather(
    d: &WgpuDevice,
    table: &GpuBuffer,
    table_is_half: bool,
    ids: &[u32],
    dim: usize,
) -> Result<GpuBuffer> {
    const OP: &str = "embedding";
    let ctx = &d.ctx;
    let len = ids.len() * dim;
    let out = ctx.alloc(OP, "output", len)?;
    let ids_buffer = ctx.upload(OP, "ids", ids)?;
    let dummy = ctx.alloc(OP, "unused binding", 1)?;
    let (f32_table, f16_table) = if table_is_half {
        (&dummy, table)
    } else {
        (table, &dummy)
    };
    let params = GatherParams {
        rows: word(OP, "ids", ids.len())?,
        dim: word(OP, "dim", dim)?,
        table_is_half: table_is_half as u32,
        _pad: 0,
    };
    let grid = ctx.elementwise_grid(OP, len)?;
    ctx.dispatch(
        OP,
        &SHADER,
        "gather",
        &[f32_table, f16_table, &ids_buffer, &out],
        &params,
        grid,
    )?;
    Ok(out)
}
