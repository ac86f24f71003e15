//! CPU softmax and L2 normalisation over the last axis, parallel over rows. Mirrors
//! `shaders/softmax.wgsl`.
//!
//! The exponential is a branch-free polynomial ([`exp_approx`], relative error < 2e-7) written
//! so that LLVM vectorises the row loops: attention spends most of its non-GEMM time here, and
//! libm's scalar `expf` was the bottleneck.

use rayon::prelude::*;

/// e^x for x ≤ 0-ish softmax arguments (any x in [-87, 88]; below, it returns ~1e-38, not 0).
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a branch or SSE4.1.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on r ∈ [-ln2/2, ln2/2].
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of one row in place.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let inv = exp_row(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// The unnormalised softmax of one row in place — `e^(x − max)` — returning 1 / their sum, so
/// that a caller can normalise something shorter than the row (attention scales its output
/// rows, `dv` values, instead of the `Lk` weights). Vectorised 8-wide with AVX2 where the CPU
/// has it (the build targets baseline x86-64, whose 4-wide SSE2 halves the rate); the same
/// arithmetic either way (no FMA contraction), so the result does not depend on the CPU.
pub(crate) fn exp_row(row: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected on this CPU.
        return unsafe { exp_row_avx2(row) };
    }
    exp_row_portable(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_row_avx2(row: &mut [f32]) -> f32 {
    exp_row_portable(row)
}

#[inline(always)]
fn exp_row_portable(row: &mut [f32]) -> f32 {
    // Eight running maxima vectorise; one fold over the row does not (NaN rules).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c.iter_mut()) {
            *v = exp_approx(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_approx(*v - max);
        sum += *v;
    }
    1.0 / sum
}

pub(crate) fn softmax(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    let mut out = x[..rows * len].to_vec();
    out.par_chunks_mut(len).for_each(softmax_row);
    out
}

pub(crate) fn l2_normalize(x: &[f32], rows: usize, len: usize, eps: f32) -> Vec<f32> {
    let mut out = x[..rows * len].to_vec();
    out.par_chunks_mut(len).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let inv = 1.0 / norm.max(eps);
        row.iter_mut().for_each(|v| *v *= inv);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::exp_approx;

    #[test]
    fn exp_approx_is_close_to_libm() {
        let mut worst = 0.0f64;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (a, e) = (exp_approx(x) as f64, (x as f64).exp());
            worst = worst.max(((a - e) / e).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert!(exp_approx(-1e30) < 1e-37);
    }
}
