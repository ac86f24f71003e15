//! CPU group norm (optionally fused with SiLU) and layer norm; mean first, then the variance of
//! the deviations, as `shaders/norm.wgsl`. Parallel over groups or rows. The SiLU's exponential
//! is the vectorising [`exp_approx`] (libm's scalar `expf` made group_norm_silu a tenth of a
//! UNet step), run 8-wide with AVX2 where the CPU has it.

use rayon::prelude::*;

use super::softmax::exp_approx;

use crate::tensor::plan::GroupNormPlan;

fn mean_and_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let len = x.len() as f32;
    let mean = x.iter().sum::<f32>() / len;
    let variance = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / len;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// `dst = src · scale + shift`, through SiLU when `silu`: one channel of a group norm.
fn normalize_channel(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected on this CPU.
        return unsafe { normalize_channel_avx2(dst, src, scale, shift, silu) };
    }
    normalize_channel_portable(dst, src, scale, shift, silu);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalize_channel_avx2(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) {
    normalize_channel_portable(dst, src, scale, shift, silu);
}

#[inline(always)]
fn normalize_channel_portable(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) {
    if silu {
        for (d, &s) in dst.iter_mut().zip(src) {
            let v = s * scale + shift;
            *d = v / (1.0 + exp_approx(-v));
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s * scale + shift;
        }
    }
}

pub(crate) fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], p: &GroupNormPlan) -> Vec<f32> {
    let per_group = p.channels / p.groups;
    let len = per_group * p.spatial;
    let mut out = vec![0.0f32; x.len()];
    if len == 0 {
        return out;
    }
    out.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .for_each(|(group, (dst, src))| {
            let (mean, rstd) = mean_and_rstd(src, p.eps);
            let g = group % p.groups;
            for (c, (dst, src)) in dst
                .chunks_mut(p.spatial)
                .zip(src.chunks(p.spatial))
                .enumerate()
            {
                let ch = g * per_group + c;
                let (scale, shift) = (rstd * gamma[ch], beta[ch] - mean * rstd * gamma[ch]);
                normalize_channel(dst, src, scale, shift, p.silu);
            }
        });
    out
}

pub(crate) fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    rows: usize,
    len: usize,
    eps: f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * len];
    out.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .for_each(|(dst, src)| {
            let (mean, rstd) = mean_and_rstd(src, eps);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = (src[i] - mean) * rstd * gamma[i] + beta[i];
            }
        });
    out
}
