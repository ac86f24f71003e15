//! Host side of `shaders/embedding.wgsl`: sinusoidal timestep embedding and row gather.

use super::{GpuBuffer, Shader, WgpuDevice, bits, word};
use crate::tensor::error::Result;
use crate::tensor::plan::TimestepPlan;

pub(crate) const SHADER: Shader = Shader {
    name: "embedding.wgsl",
    source: include_str!("../../../shaders/embedding.wgsl"),
};

pub(crate) fn timestep(d: &WgpuDevice, t: &GpuBuffer, p: &TimestepPlan) -> Result<GpuBuffer> {
    const OP: &str = "timestep_embedding";
    let ctx = &d.ctx;
    let len = p.batch * p.dim;
    let out = ctx.alloc(OP, "output", len)?;
    word(OP, "output", len)?;
    let params = [
        word(OP, "batch", p.batch)?,
        word(OP, "dim", p.dim)?,
        bits(p.options.max_period),
        p.options.flip_sin_to_cos as u32,
        bits(p.options.freq_shift),
        0,
        0,
        0,
    ];
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
    let params = [
        word(OP, "ids", ids.len())?,
        word(OP, "dim", dim)?,
        table_is_half as u32,
        0,
    ];
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
