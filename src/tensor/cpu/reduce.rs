//! CPU reductions over the last axis: sum, mean, max, argmax (first index of the maximum).
//! Mirrors `shaders/reduce.wgsl`; sums accumulate in f64.
//!
//! Not here: shape checks (`ops.rs`).

use rayon::prelude::*;

use super::PARALLEL_MIN;
use crate::tensor::plan::Reduction;

fn reduce_row(row: &[f32], op: Reduction) -> f32 {
    match op {
        Reduction::Sum => row.iter().map(|&v| f64::from(v)).sum::<f64>() as f32,
        Reduction::Mean => {
            (row.iter().map(|&v| f64::from(v)).sum::<f64>() / row.len() as f64) as f32
        }
        Reduction::Max | Reduction::ArgMax => {
            let (mut best, mut at) = (row[0], 0);
            for (j, &v) in row.iter().enumerate().skip(1) {
                if v > best {
                    (best, at) = (v, j);
                }
            }
            if op == Reduction::Max {
                best
            } else {
                at as f32
            }
        }
    }
}

pub(crate) fn reduce_last(x: &[f32], len: usize, op: Reduction) -> Vec<f32> {
    if x.len() < PARALLEL_MIN {
        x.chunks(len).map(|row| reduce_row(row, op)).collect()
    } else {
        x.par_chunks(len).map(|row| reduce_row(row, op)).collect()
    }
}
