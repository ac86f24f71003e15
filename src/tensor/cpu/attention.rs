//! CPU attention: for each (batch, head, block of 64 queries), scores = q·kᵀ/√d by GEMM (the
//! scale applied by the GEMM), the mask where there is one, the unnormalised softmax, then · v by
//! GEMM and each output row scaled by 1 / its sum (`dv` multiplies a row instead of `Lk`). Heads are read in place from `[B, L, H·D]` through the GEMM's strides (no
//! permute copies), and only a 64 × Lk block of scores exists at a time, never Lq × Lk. Blocks
//! run in parallel with rayon, each GEMM on one thread. Scores are clamped at -1e30 as in
//! `shaders/attention.wgsl`.
//!
//! Not here: shape checks (`ops.rs`), the GPU kernel.

use gemm::Parallelism;
use rayon::prelude::*;

use super::matmul::{Strided, gemm_strided};
use super::softmax::exp_row;
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
                gemm_strided(scores, lk, queries, keys_t, [rows, lk, d], p.scale, none);
                let mut inv_sums = [0.0f32; QUERY_BLOCK];
                for (r, row) in scores.chunks_mut(lk).enumerate() {
                    let i = i0 + r;
                    let mask_row = mask.map(|m| &m[b * mask_batch + i * mask_row..][..lk]);
                    match (p.mask, mask_row) {
                        (AttentionMask::Additive { .. }, Some(m)) => {
                            for (s, &m) in row.iter_mut().zip(m) {
                                *s = (*s + m).max(FLOOR);
                            }
                        }
                        (AttentionMask::KeepKeys, Some(m)) => {
                            for (s, &m) in row.iter_mut().zip(m) {
                                *s = if m == 0.0 { FLOOR } else { s.max(FLOOR) };
                            }
                        }
                        // Scores of finite q and k are finite: nothing to floor.
                        _ => {}
                    }
                    if p.causal && i + 1 < lk {
                        row[i + 1..].fill(FLOOR);
                    }
                    inv_sums[r] = exp_row(row);
                }
                let mut block = vec![0.0f32; rows * dv];
                let weights = Strided {
                    data: scores,
                    row: lk,
                    col: 1,
                };
                gemm_strided(&mut block, dv, weights, values, [rows, dv, lk], 1.0, none);
                for (out, &inv) in block.chunks_exact_mut(dv.max(1)).zip(&inv_sums) {
                    out.iter_mut().for_each(|v| *v *= inv);
                }
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
