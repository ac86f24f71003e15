//! CPU nearest and bilinear resizing of NCHW planes. Mirrors `shaders/resize.wgsl`, in f32.

use rayon::prelude::*;

use crate::tensor::plan::{ResizeMode, ResizePlan};

pub(crate) fn resize(x: &[f32], p: &ResizePlan) -> Vec<f32> {
    let mut out = vec![0.0f32; p.planes * p.ho * p.wo];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(p.ho * p.wo)
        .enumerate()
        .for_each(|(plane, dst)| {
            let src = &x[plane * p.h * p.w..][..p.h * p.w];
            for oy in 0..p.ho {
                for ox in 0..p.wo {
                    dst[oy * p.wo + ox] = match p.mode {
                        ResizeMode::Nearest => {
                            let sy = (oy * p.h / p.ho).min(p.h - 1);
                            let sx = (ox * p.w / p.wo).min(p.w - 1);
                            src[sy * p.w + sx]
                        }
                        ResizeMode::Bilinear => {
                            let fy = ((oy as f32 + 0.5) * p.h as f32 / p.ho as f32 - 0.5).max(0.0);
                            let fx = ((ox as f32 + 0.5) * p.w as f32 / p.wo as f32 - 0.5).max(0.0);
                            let y0 = (fy.floor() as usize).min(p.h - 1);
                            let x0 = (fx.floor() as usize).min(p.w - 1);
                            let (y1, x1) = ((y0 + 1).min(p.h - 1), (x0 + 1).min(p.w - 1));
                            let (dy, dx) = (fy - y0 as f32, fx - x0 as f32);
                            let lerp = |a: f32, b: f32, t: f32| a * (1.0 - t) + b * t;
                            let top = lerp(src[y0 * p.w + x0], src[y0 * p.w + x1], dx);
                            let bottom = lerp(src[y1 * p.w + x0], src[y1 * p.w + x1], dx);
                            lerp(top, bottom, dy)
                        }
                    };
                }
            }
        });
    out
}
