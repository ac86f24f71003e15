//! CPU data movement: strided copies (permute) and block copies (concat, narrow, copy).
//! Mirrors `shaders/layout.wgsl`.

use rayon::prelude::*;

use crate::tensor::plan::BlockCopy;

pub(crate) fn strided_copy(src: &[f32], shape: &[usize], src_strides: &[usize]) -> Vec<f32> {
    let len: usize = shape.iter().product();
    let rank = shape.len();
    if rank == 0 {
        return src[..len].to_vec();
    }
    let inner = shape[rank - 1].max(1);
    let inner_stride = src_strides[rank - 1];
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(inner)
        .enumerate()
        .for_each(|(row, dst)| {
            let (mut offset, mut rest) = (0, row);
            for axis in (0..rank - 1).rev() {
                offset += (rest % shape[axis]) * src_strides[axis];
                rest /= shape[axis];
            }
            for (e, d) in dst.iter_mut().enumerate() {
                *d = src[offset + e * inner_stride];
            }
        });
    out
}

pub(crate) fn copy_block(src: &[f32], dst: &mut [f32], p: &BlockCopy) {
    let run = p.len * p.inner;
    if run == 0 {
        return;
    }
    let copy = |o: usize, dst: &mut [f32]| {
        let s = (o * p.src_axis + p.src_offset) * p.inner;
        dst.copy_from_slice(&src[s..s + run]);
    };
    if p.outer == 1 {
        let d = p.dst_offset * p.inner;
        let dst = &mut dst[d..d + run];
        // One large run: split it so both cores copy (this is what the bandwidth bench times).
        dst.par_chunks_mut(1 << 16)
            .zip(src[p.src_offset * p.inner..][..run].par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        return;
    }
    dst.par_chunks_mut(p.dst_axis * p.inner)
        .enumerate()
        .for_each(|(o, slab)| copy(o, &mut slab[p.dst_offset * p.inner..][..run]));
}
