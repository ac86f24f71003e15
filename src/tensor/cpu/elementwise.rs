//! CPU element-wise ops: GELU (erf form), quick-GELU, SiLU, affine, clamp, and broadcast
//! add/sub/mul.
//! Mirrors `shaders/elementwise.wgsl`, down to the erf approximation.

use rayon::prelude::*;

use super::PARALLEL_MIN;
use crate::tensor::plan::{BinaryOp, Broadcast, UnaryOp};

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the same as the WGSL kernel.
pub(crate) fn erf(v: f32) -> f32 {
    let a = v.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * (-a * a).exp()).copysign(v)
}

fn apply(v: f32, op: UnaryOp) -> f32 {
    match op {
        UnaryOp::Gelu => 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
        UnaryOp::Silu => v / (1.0 + (-v).exp()),
        UnaryOp::Affine(a, b) => v * a + b,
        UnaryOp::Clamp(lo, hi) => v.clamp(lo, hi),
    }
}

pub(crate) fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    if x.len() < PARALLEL_MIN {
        x.iter().map(|&v| apply(v, op)).collect()
    } else {
        x.par_iter().map(|&v| apply(v, op)).collect()
    }
}

pub(crate) fn binary(lhs: &[f32], rhs: &[f32], op: BinaryOp, p: &Broadcast) -> Vec<f32> {
    let len: usize = p.shape.iter().product();
    let f = |l: f32, r: f32| match op {
        BinaryOp::Add => l + r,
        BinaryOp::Sub => l - r,
        BinaryOp::Mul => l * r,
    };
    if lhs.len() == len && rhs.len() == len {
        return lhs.par_iter().zip(rhs).map(|(&l, &r)| f(l, r)).collect();
    }
    // Walk the innermost axis as a run, so the index arithmetic is per row, not per element.
    let rank = p.shape.len();
    let inner = p.shape.last().copied().unwrap_or(1).max(1);
    let (ls, rs) = (
        p.lhs_strides.last().copied().unwrap_or(0),
        p.rhs_strides.last().copied().unwrap_or(0),
    );
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(inner)
        .enumerate()
        .for_each(|(row, dst)| {
            let (mut lo, mut ro, mut rest) = (0, 0, row);
            for axis in (0..rank.saturating_sub(1)).rev() {
                let c = rest % p.shape[axis];
                rest /= p.shape[axis];
                lo += c * p.lhs_strides[axis];
                ro += c * p.rhs_strides[axis];
            }
            for (e, d) in dst.iter_mut().enumerate() {
                *d = f(lhs[lo + e * ls], rhs[ro + e * rs]);
            }
        });
    out
}
