//! Host side of `shaders/random.wgsl`: seeded normal noise, one invocation per block of four.
//!
//! Not here: shape checks (`ops.rs`), the CPU version (`cpu/random.rs`).

use super::{GpuBuffer, Params as _, Shader, WgpuDevice, wgsl_params, word};
use crate::tensor::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "random.wgsl",
    source: include_str!("../../../shaders/random.wgsl"),
    params: &[Params::LAYOUT],
};

wgsl_params! {
    /// `Params` of `random.wgsl`.
    Params = "Params" {
        len: u32,
        key0: u32,
        key1: u32,
        _pad: u32,
    }
}

pub(crate) fn normal(d: &WgpuDevice, len: usize, seed: u64) -> Result<GpuBuffer> {
    const OP: &str = "randn";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", len)?;
    // The kernel computes the first index of a block, 4 · block, in u32.
    word(OP, "output", len + 3)?;
    let params = Params {
        len: word(OP, "output", len)?,
        key0: seed as u32,
        key1: (seed >> 32) as u32,
        _pad: 0,
    };
    let grid = ctx.elementwise_grid(OP, len.div_ceil(4))?;
    ctx.dispatch(OP, &SHADER, "normal", &[&out], &params, grid)?;
    Ok(out)
}
