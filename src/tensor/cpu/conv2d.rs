//! CPU conv2d, three ways by shape (`shaders/conv2d.wgsl` does all of them as one implicit GEMM):
//! - 1×1, stride 1, no padding: one GEMM on the input as it is;
//! - stride 1 (the 3×3 convs of the UNet): "shifted GEMMs" — the input is zero-padded once, and
//!   each kernel tap (ky, kx) is a GEMM of that tap's weights with the padded input viewed from
//!   offset `ky·Wp + kx`, accumulated into a "wide" output whose rows are `Wp` long (the `Wp − Wo`
//!   extra columns are dropped at the end). No im2col matrix, 9× less scratch;
//! - otherwise (stride 2): im2col into a scratch matrix, then one GEMM.

use rayon::prelude::*;

use super::matmul::{gemm_into, parallelism};
use crate::tensor::plan::ConvPlan;

fn im2col(x: &[f32], p: &ConvPlan, cols: &mut [f32]) {
    let n = p.ho * p.wo;
    cols.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let ci = row / (p.kh * p.kw);
        let ky = (row / p.kw) % p.kh;
        let kx = row % p.kw;
        let plane = &x[ci * p.h * p.w..][..p.h * p.w];
        for oy in 0..p.ho {
            let iy = (oy * p.stride + ky) as isize - p.pad as isize;
            let out_row = &mut dst[oy * p.wo..][..p.wo];
            if iy < 0 || iy >= p.h as isize {
                out_row.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * p.w..][..p.w];
            for (ox, o) in out_row.iter_mut().enumerate() {
                let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                *o = if ix >= 0 && ix < p.w as isize {
                    src[ix as usize]
                } else {
                    0.0
                };
            }
        }
    });
}

/// Stride-1 conv of one image by one GEMM per kernel tap over the padded input.
fn conv_shifted(x: &[f32], weight: &[f32], bias: Option<&[f32]>, p: &ConvPlan, dst: &mut [f32]) {
    let (hp, wp) = (p.h + 2 * p.pad, p.w + 2 * p.pad);
    let plane = hp * wp;
    // The last tap of the last row reads up to kw − 1 values past the last plane.
    let mut padded = vec![0.0f32; p.cin * plane + p.kw];
    padded[..p.cin * plane]
        .par_chunks_mut(plane)
        .zip(x.par_chunks(p.h * p.w))
        .for_each(|(dst, src)| {
            for (y, row) in src.chunks(p.w).enumerate() {
                dst[(y + p.pad) * wp + p.pad..][..p.w].copy_from_slice(row);
            }
        });
    let n = p.ho * wp;
    let mut wide = vec![0.0f32; p.cout * n];
    let taps = p.kh * p.kw;
    let par = parallelism(p.cout, n, p.cin);
    for ky in 0..p.kh {
        for kx in 0..p.kw {
            let tap = ky * p.kw + kx;
            let offset = ky * wp + kx;
            assert!(offset + (p.cin - 1) * plane + n <= padded.len());
            // SAFETY: lhs reads weight[co·Cin·taps + ci·taps + tap] for co < Cout, ci < Cin,
            // inside `weight` (Cout·Cin·taps values); rhs reads padded[offset + ci·plane + j]
            // for j < n, inside `padded` by the assert; `wide` is Cout × n and not aliased.
            unsafe {
                gemm::gemm(
                    p.cout,
                    n,
                    p.cin,
                    wide.as_mut_ptr(),
                    1,
                    n as isize,
                    tap > 0,
                    weight.as_ptr().add(tap),
                    taps as isize,
                    (p.cin * taps) as isize,
                    padded.as_ptr().add(offset),
                    1,
                    plane as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    }
    dst.par_chunks_mut(p.ho * p.wo)
        .zip(wide.par_chunks(n))
        .enumerate()
        .for_each(|(co, (out, wide))| {
            let b = bias.map_or(0.0, |b| b[co]);
            for (o, w) in out.chunks_mut(p.wo).zip(wide.chunks(wp)) {
                for (o, &w) in o.iter_mut().zip(w) {
                    *o = w + b;
                }
            }
        });
}

pub(crate) fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, p: &ConvPlan) -> Vec<f32> {
    let m = p.cout;
    if p.stride == 1 && p.kh * p.kw > 1 && p.cin > 0 {
        let mut out = vec![0.0f32; p.images * m * p.ho * p.wo];
        let image_len = p.cin * p.h * p.w;
        for (image, dst) in out
            .chunks_mut((m * p.ho * p.wo).max(1))
            .enumerate()
            .take(p.images)
        {
            conv_shifted(&x[image * image_len..][..image_len], weight, bias, p, dst);
        }
        return out;
    }
    let n = p.ho * p.wo;
    let k = p.cin * p.kh * p.kw;
    let direct = p.kh == 1 && p.kw == 1 && p.stride == 1 && p.pad == 0;
    let mut cols = if direct {
        Vec::new()
    } else {
        vec![0.0f32; k * n]
    };
    let mut out = vec![0.0f32; p.images * m * n];
    for (image, dst) in out.chunks_mut((m * n).max(1)).enumerate().take(p.images) {
        if let Some(bias) = bias {
            for (row, &b) in dst.chunks_mut(n.max(1)).zip(bias) {
                row.fill(b);
            }
        }
        let x = &x[image * p.cin * p.h * p.w..][..p.cin * p.h * p.w];
        let rhs = if direct {
            x
        } else {
            im2col(x, p, &mut cols);
            &cols
        };
        gemm_into(
            dst,
            weight,
            rhs,
            m,
            n,
            k,
            false,
            bias.is_some(),
            parallelism(m, n, k),
        );
    }
    out
}
