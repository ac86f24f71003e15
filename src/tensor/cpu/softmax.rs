//! CPU softmax over the last axis, parallel over rows. Mirrors `shaders/softmax.wgsl`.

use rayon::prelude::*;

/// Softmax of one row in place.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

pub(crate) fn softmax(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    let mut out = x[..rows * len].to_vec();
    out.par_chunks_mut(len).for_each(softmax_row);
    out
}
