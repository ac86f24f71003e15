//! CPU conv2d: im2col into a scratch matrix, then one GEMM per image; a 1×1 stride-1 unpadded
//! conv is a GEMM on the input as it is. Mirrors `shaders/conv2d.wgsl` (which gathers the im2col
//! tile on the fly instead).

use rayon::prelude::*;

use super::matmul::{gemm_into, parallelism};
use crate::tensor::ops::ConvPlan;

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

pub(crate) fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, p: &ConvPlan) -> Vec<f32> {
    let m = p.cout;
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
