//! Host side of `shaders/random.wgsl`: seeded normal noise, one invocation per block of four.
//!
//! Not here: shape checks (`ops.rs`), the CPU version (`cpu/random.rs`).

use super::{GpuBuffer, Shader, WgpuDevice, word};
use crate::tensor::error::Result;

pub(crate) const SHADER: Shader = Shader {
    name: "random.wgsl",
    source: include_str!("../../../shaders/random.wgsl"),
};

pub(crate) fn normal(d: &WgpuDevice, len: usize, seed: u64) -> Result<GpuBuffer> {
    const OP: &str = "randn";
    let ctx = &d.ctx;
    let out = ctx.alloc(OP, "output", len)?;
    // The kernel computes the first index of a block, 4 · block, in u32.
    word(OP, "output", len + 3)?;
    let params = [
        word(OP, "output", len)?,
        seed as u32,
        (seed >> 32) as u32,
        0,
    ];
    let grid = ctx.elementwise_grid(OP, len.div_ceil(4))?;
    ctx.dispatch(OP, &SHADER, "normal", &[&out], &params, grid)?;
    Ok(out)
}
