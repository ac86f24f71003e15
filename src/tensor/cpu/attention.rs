//! CPU attention: for each (batch, head, block of 64 queries), scores = q·kᵀ by GEMM, softmax,
//! then · v by GEMM. Heads are read in place from `[B, L, H·D]` through the GEMM's strides (no
//! permute copies), and only a 64 × Lk block of scores exists at a time, never Lq × Lk. Blocks
//! run in parallel with rayon, each GEMM on one thread. Scores are clamped at -1e30 as in
//! `shaders/attention.wgsl`.
//!
//! Not here: shape checks (`ops.rs`), the GPU kernel.

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::{Strided, gemm_strided};
use super::softmax::softmax_row;
use crate::tensor::plan::{AttentionMask, AttentionPlan};

const QUERY_BLOCK: usize = 64;
const FLOOR: f32 = -1.0e30;

pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    p: &AttentionPlan,
) -> Vec<f32> {
    let (lq, lk, d, dv, heads) = (p.lq, p.lk, p.d, p.dv, p.heads);
    let (qk_row, v_row) = (heads * d, heads * dv);
    let (mask_batch, mask_row) = p.mask_strides();
    let tasks: Vec<(usize, usize, usize)> = (0..p.batch)
        .flat_map(|b| {
            (0..heads).flat_map(move |h| (0..lq).step_by(QUERY_BLOCK).map(move |i0| (b, h, i0)))
        })
        .collect();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(
            || vec![0.0f32; QUERY_BLOCK * lk],
            |scores, &(b, h, i0)| {
                let rows = QUERY_BLOCK.min(lq - i0);
                let scores = &mut scores[..rows * lk];
                let queries = Strided {
                    data: &q[(b * lq + i0) * qk_row + h * d..],
                    row: qk_row,
                    col: 1,
                };
                // kᵀ: element (c, j) is key j's channel c.
                let keys_t = Strided {
                    data: &k[b * lk * qk_row + h * d..],
                    row: 1,
                    col: qk_row,
                };
                let values = Strided {
                    data: &v[b * lk * v_row + h * dv..],
                    row: v_row,
                    col: 1,
                };
                let none = Parallelism::None;
                gemm_strided(scores, lk, queries, keys_t, [rows, lk, d], none);
                for (r, row) in scores.chunks_mut(lk).enumerate() {
                    let i = i0 + r;
                    let mask_row = mask.map(|m| &m[b * mask_batch + i * mask_row..][..lk]);
                    for (j, s) in row.iter_mut().enumerate() {
                        let mut val = *s * p.scale;
                        match (p.mask, mask_row) {
                            (AttentionMask::Additive { .. }, Some(m)) => val += m[j],
                            (AttentionMask::KeepKeys, Some(m)) if m[j] == 0.0 => val = FLOOR,
                            _ => {}
                        }
                        val = val.max(FLOOR);
                        if p.causal && j > i {
                            val = FLOOR;
                        }
                        *s = val;
                    }
                    softmax_row(row);
                }
                let mut block = vec![0.0f32; rows * dv];
                let weights = Strided {
                    data: scores,
                    row: lk,
                    col: 1,
                };
                gemm_strided(&mut block, dv, weights, values, [rows, dv, lk], none);
                block
            },
        )
        .collect();
    let mut out = vec![0.0f32; p.batch * lq * v_row];
    for (&(b, h, i0), block) in tasks.iter().zip(&blocks) {
        for (r, src) in block.chunks_exact(dv.max(1)).enumerate() {
            out[(b * lq + i0 + r) * v_row + h * dv..][..dv].copy_from_slice(src);
        }
    }
    out
}
