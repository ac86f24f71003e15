// Scaled dot-product attention with an online softmax (flash-style): out = softmax(q·kᵀ·scale +
// mask) · v, for each of H heads side by side in the last axis: q [B, Lq, H·D], k [B, Lk, H·D],
// v [B, Lk, H·Dv], out [B, Lq, H·Dv] (H = 1 for heads folded into B). Each head is read in
// place through the row strides H·D and H·Dv. The Lq × Lk score matrix is never stored: each
// invocation owns one query row, walks the keys in blocks of 16 staged in workgroup memory
// (2 × 16 × 128 × 4 B = 16 KiB), and keeps a running maximum, a running sum and the output row
// in registers, rescaling them once per block. One grid row (y) per (batch, head).
//
// The optional mask is either additive (`mask_kind` 1, [Bm, Lq, Lk] with Bm = 1 or B) or a
// key-padding mask (`mask_kind` 2, [B, Lk], shared by heads and queries: 0 hides a key); its
// element for (b, i, j) is at b · mask_batch_stride + i · mask_row_stride + j. `causal` hides
// keys j > i. Scores are clamped at -1e30, so a row whose keys are all masked averages v
// uniformly (the CPU backend does the same). D and Dv are at most 128.

struct Params {
    lq: u32,
    lk: u32,
    d: u32,
    dv: u32,
    scale: f32,
    causal: u32,
    heads: u32,
    mask_kind: u32,
    mask_batch_stride: u32,
    mask_row_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

const QUERIES: u32 = 64u;
const KEYS: u32 = 16u;
const MAX_D: u32 = 128u;
const FLOOR: f32 = -1.0e30;

var<workgroup> k_block: array<f32, 2048>;
var<workgroup> v_block: array<f32, 2048>;

@compute @workgroup_size(64, 1, 1)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let batch = wid.y / p.heads;
    let head = wid.y % p.heads;
    let qk_row = p.heads * p.d;
    let v_row = p.heads * p.dv;
    let i = wid.x * QUERIES + li;
    let in_range = i < p.lq;

    var qrow: array<f32, 128>;
    var acc: array<f32, 128>;
    for (var c = 0u; c < MAX_D; c++) {
        acc[c] = 0.0;
        qrow[c] = 0.0;
    }
    if (in_range) {
        let q_base = (batch * p.lq + i) * qk_row + head * p.d;
        for (var c = 0u; c < p.d; c++) {
            qrow[c] = q[q_base + c] * p.scale;
        }
    }
    var running_max = FLOOR;
    var running_sum = 0.0;
    let mask_base = batch * p.mask_batch_stride + i * p.mask_row_stride;
    let k_base = batch * p.lk * qk_row + head * p.d;
    let v_base = batch * p.lk * v_row + head * p.dv;

    let blocks = (p.lk + KEYS - 1u) / KEYS;
    for (var blk = 0u; blk < blocks; blk++) {
        let j0 = blk * KEYS;
        for (var e = li; e < KEYS * p.d; e += QUERIES) {
            let j = j0 + e / p.d;
            var val = 0.0;
            if (j < p.lk) {
                val = k[k_base + j * qk_row + e % p.d];
            }
            k_block[e] = val;
        }
        for (var e = li; e < KEYS * p.dv; e += QUERIES) {
            let j = j0 + e / p.dv;
            var val = 0.0;
            if (j < p.lk) {
                val = v[v_base + j * v_row + e % p.dv];
            }
            v_block[e] = val;
        }
        workgroupBarrier();
        if (in_range) {
            var scores: array<f32, 16>;
            var block_max = FLOOR;
            for (var jj = 0u; jj < KEYS; jj++) {
                let j = j0 + jj;
                var s = FLOOR;
                if (j < p.lk) {
                    var score = 0.0;
                    for (var c = 0u; c < p.d; c++) {
                        score = fma(qrow[c], k_block[jj * p.d + c], score);
                    }
                    if (p.mask_kind == 1u) {
                        score += mask[mask_base + j];
                    }
                    s = max(score, FLOOR);
                    if (p.mask_kind == 2u && mask[mask_base + j] == 0.0) {
                        s = FLOOR;
                    }
                    if (p.causal == 1u && j > i) {
                        s = FLOOR;
                    }
                }
                scores[jj] = s;
                block_max = max(block_max, s);
            }
            let new_max = max(running_max, block_max);
            let correction = exp(running_max - new_max);
            running_sum *= correction;
            for (var c = 0u; c < p.dv; c++) {
                acc[c] *= correction;
            }
            for (var jj = 0u; jj < KEYS; jj++) {
                if (j0 + jj < p.lk) {
                    let w = exp(scores[jj] - new_max);
                    running_sum += w;
                    for (var c = 0u; c < p.dv; c++) {
                        acc[c] = fma(w, v_block[jj * p.dv + c], acc[c]);
                    }
                }
            }
            running_max = new_max;
        }
        workgroupBarrier();
    }

    if (in_range) {
        let o_base = (batch * p.lq + i) * v_row + head * p.dv;
        let inv = 1.0 / running_sum;
        for (var c = 0u; c < p.dv; c++) {
            out[o_base + c] = acc[c] * inv;
        }
    }
}
