//! CPU embeddings: sinusoidal timestep embedding (diffusers' options) and row gather. Mirrors
//! `shaders/embedding.wgsl`.
//!
//! Not here: shape checks (`ops.rs`).

use crate::tensor::plan::TimestepPlan;

pub(crate) fn timestep(t: &[f32], p: &TimestepPlan) -> Vec<f32> {
    let (dim, o) = (p.dim, p.options);
    let half = dim / 2;
    let mut out = vec![0.0f32; t.len() * dim];
    for (row, &tv) in out.chunks_mut(dim.max(1)).zip(t) {
        for j in 0..half {
            let freq = (-o.max_period.ln() * j as f32 / (half as f32 - o.freq_shift)).exp();
            let arg = tv * freq;
            let (first, second) = if o.flip_sin_to_cos {
                (arg.cos(), arg.sin())
            } else {
                (arg.sin(), arg.cos())
            };
            row[j] = first;
            row[half + j] = second;
        }
    }
    out
}

pub(crate) fn gather(table: &[f32], ids: &[u32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        out.extend_from_slice(&table[id as usize * dim..][..dim]);
    }
    out
}
