// Normalisations: group norm over [N, C, S] (optionally fused with SiLU) and layer norm over the
// last axis. One 256-invocation workgroup per group (N·G) or per row; mean first, then the
// variance of the deviations (two passes: stable for large means), both reduced in workgroup
// memory (1 KiB).

struct Params {
    // group norm: number of (image, group) pairs; layer norm: rows
    count: u32,
    // group norm: C/G × S, the contiguous length of one group; layer norm: the row length
    len: u32,
    // group norm: S, the spatial size (so channel = g·C/G + i / S)
    spatial: u32,
    // group norm: C/G
    channels_per_group: u32,
    groups: u32,
    silu: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> partial: array<f32, 256>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

fn mean_and_rstd(base: u32, li: u32) -> vec2<f32> {
    var s = 0.0;
    for (var i = li; i < p.len; i += 256u) {
        s += x[base + i];
    }
    let mean = reduce_sum(li, s) / f32(p.len);
    var q = 0.0;
    for (var i = li; i < p.len; i += 256u) {
        let d = x[base + i] - mean;
        q += d * d;
    }
    let variance = reduce_sum(li, q) / f32(p.len);
    return vec2<f32>(mean, inverseSqrt(variance + p.eps));
}

@compute @workgroup_size(256, 1, 1)
fn group_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    if (group >= p.count) {
        return;
    }
    let base = group * p.len;
    let stats = mean_and_rstd(base, li);
    let g = group % p.groups;
    for (var i = li; i < p.len; i += 256u) {
        let c = g * p.channels_per_group + i / p.spatial;
        var v = (x[base + i] - stats.x) * stats.y * gamma[c] + beta[c];
        if (p.silu == 1u) {
            v = v / (1.0 + exp(-v));
        }
        out[base + i] = v;
    }
}

@compute @workgroup_size(256, 1, 1)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.count) {
        return;
    }
    let base = row * p.len;
    let stats = mean_and_rstd(base, li);
    for (var i = li; i < p.len; i += 256u) {
        out[base + i] = (x[base + i] - stats.x) * stats.y * gamma[i] + beta[i];
    }
}
