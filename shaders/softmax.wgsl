// Row-wise ops over the last axis — softmax and L2 normalisation: one 256-invocation workgroup
// per row; the row's maximum and sums are reduced in workgroup memory (1 KiB).

struct Params {
    rows: u32,
    len: u32,
    // read by l2_normalize only
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.len;
    var m = -3.0e38;
    for (var i = li; i < p.len; i += 256u) {
        m = max(m, x[base + i]);
    }
    partial[li] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] = max(partial[li], partial[li + s]);
        }
        workgroupBarrier();
    }
    let row_max = partial[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = li; i < p.len; i += 256u) {
        sum += exp(x[base + i] - row_max);
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / partial[0];
    for (var i = li; i < p.len; i += 256u) {
        out[base + i] = exp(x[base + i] - row_max) * inv;
    }
}

// L2 normalisation over the last axis (CLIP's embeddings): x / max(‖x‖, eps), as PyTorch's
// F.normalize. Same layout as softmax: one workgroup per row.
@compute @workgroup_size(256, 1, 1)
fn l2_normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.len;
    var sum = 0.0;
    for (var i = li; i < p.len; i += 256u) {
        sum += x[base + i] * x[base + i];
    }
    partial[li] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / max(sqrt(partial[0]), p.eps);
    for (var i = li; i < p.len; i += 256u) {
        out[base + i] = x[base + i] * inv;
    }
}
