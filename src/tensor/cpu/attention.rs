//! CPU attention: for each batch and block of 64 queries, scores = q·kᵀ by GEMM, softmax,
//! then · v by GEMM. Only a 64 × Lk block of scores exists at a time, never Lq × Lk. Blocks run
//! in parallel with rayon, each GEMM on one thread. Scores are clamped at -1e30 as in
//! `shaders/attention.wgsl`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::gemm_into;
use super::softmax::softmax_row;
use crate::tensor::ops::AttentionPlan;

const QUERY_BLOCK: usize = 64;
const FLOOR: f32 = -1.0e30;

pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    p: &AttentionPlan,
) -> Vec<f32> {
    let (lq, lk, d, dv) = (p.lq, p.lk, p.d, p.dv);
    let mut out = vec![0.0f32; p.batch * lq * dv];
    let blocks_per_batch = lq.div_ceil(QUERY_BLOCK);
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(p.batch * blocks_per_batch);
    for (b, batch_out) in out.chunks_mut((lq * dv).max(1)).enumerate().take(p.batch) {
        for (blk, chunk) in batch_out.chunks_mut(QUERY_BLOCK * dv).enumerate() {
            tasks.push((b, blk * QUERY_BLOCK, chunk));
        }
    }
    tasks.into_par_iter().for_each_init(
        || vec![0.0f32; QUERY_BLOCK * lk],
        |scores, (b, i0, dst)| {
            let rows = dst.len() / dv;
            let scores = &mut scores[..rows * lk];
            let qb = &q[(b * lq + i0) * d..][..rows * d];
            let kb = &k[b * lk * d..][..lk * d];
            let vb = &v[b * lk * dv..][..lk * dv];
            gemm_into(scores, qb, kb, rows, lk, d, true, false, Parallelism::None);
            let mask_rows = mask.map(|m| {
                let base = if p.mask_batches > 1 { b * lq * lk } else { 0 };
                &m[base + i0 * lk..][..rows * lk]
            });
            for (r, row) in scores.chunks_mut(lk).enumerate() {
                let i = i0 + r;
                for (j, s) in row.iter_mut().enumerate() {
                    let mut val = *s * p.scale;
                    if let Some(m) = mask_rows {
                        val += m[r * lk + j];
                    }
                    val = val.max(FLOOR);
                    if p.causal && j > i {
                        val = FLOOR;
                    }
                    *s = val;
                }
                softmax_row(row);
            }
            gemm_into(
                dst,
                scores,
                vb,
                rows,
                dv,
                lk,
                false,
                false,
                Parallelism::None,
            );
        },
    );
    out
}
