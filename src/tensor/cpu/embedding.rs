//! CPU embeddings: sinusoidal timestep embedding and row gather. Mirrors `shaders/embedding.wgsl`.

pub(crate) fn timestep(t: &[f32], dim: usize, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0.0f32; t.len() * dim];
    for (row, &tv) in out.chunks_mut(dim.max(1)).zip(t) {
        for j in 0..half {
            let freq = (-max_period.ln() * j as f32 / half as f32).exp();
            let arg = tv * freq;
            row[j] = arg.cos();
            row[half + j] = arg.sin();
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
