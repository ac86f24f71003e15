// Reductions over the last axis of [rows, len]: sum, mean, max and argmax (the first index of
// the maximum, as PyTorch), one value per row. One 256-invocation workgroup per row: each
// invocation folds a strided slice of the row, then a tree in workgroup memory (2 KiB) folds
// the 256 partials. Max and argmax carry (value, index) pairs and prefer the lower index on
// ties, so the result does not depend on the order of the fold.

struct Params {
    rows: u32,
    len: u32,
    op: u32,
    _pad: u32,
}

// op codes, mirrored by `Reduction` on the host
const SUM: u32 = 0u;
const MEAN: u32 = 1u;
const MAX: u32 = 2u;
const ARGMAX: u32 = 3u;
// An invocation that saw no element (rows shorter than 256).
const NONE: u32 = 0xFFFFFFFFu;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> values: array<f32, 256>;
var<workgroup> indices: array<u32, 256>;

// Whether (v, i) beats (best_v, best_i) as a maximum.
fn beats(v: f32, i: u32, best_v: f32, best_i: u32) -> bool {
    if (i == NONE) {
        return false;
    }
    if (best_i == NONE) {
        return true;
    }
    return v > best_v || (v == best_v && i < best_i);
}

@compute @workgroup_size(256, 1, 1)
fn reduce_last(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.len;
    let maximum = p.op == MAX || p.op == ARGMAX;
    var acc = 0.0;
    var best_i = NONE;
    for (var j = li; j < p.len; j += 256u) {
        let v = x[base + j];
        if (maximum) {
            if (beats(v, j, acc, best_i)) {
                acc = v;
                best_i = j;
            }
        } else {
            acc += v;
        }
    }
    values[li] = acc;
    indices[li] = best_i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            if (maximum) {
                if (beats(values[li + s], indices[li + s], values[li], indices[li])) {
                    values[li] = values[li + s];
                    indices[li] = indices[li + s];
                }
            } else {
                values[li] += values[li + s];
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        var r = values[0];
        if (p.op == MEAN) {
            r = r / f32(p.len);
        } else if (p.op == ARGMAX) {
            r = f32(indices[0]);
        }
        out[row] = r;
    }
}
