// Spatial resizing of [N, C, H, W] images to [N, C, Ho, Wo]: `nearest` (PyTorch's `nearest`:
// source = floor(dst · in / out), which for ×2 is the usual pixel doubling) and `bilinear`
// (half-pixel centres, align_corners = false, edges clamped). One invocation per output value.

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

fn coords(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> vec4<u32> {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    let ox = i % p.wo;
    let oy = (i / p.wo) % p.ho;
    let plane = i / (p.wo * p.ho);
    return vec4<u32>(i, ox, oy, plane);
}

@compute @workgroup_size(256, 1, 1)
fn nearest(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let c = coords(wid, nwg, li);
    if (c.w >= p.planes) {
        return;
    }
    let sy = min(c.z * p.h / p.ho, p.h - 1u);
    let sx = min(c.y * p.w / p.wo, p.w - 1u);
    out[c.x] = x[(c.w * p.h + sy) * p.w + sx];
}

@compute @workgroup_size(256, 1, 1)
fn bilinear(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let c = coords(wid, nwg, li);
    if (c.w >= p.planes) {
        return;
    }
    let fy = max((f32(c.z) + 0.5) * f32(p.h) / f32(p.ho) - 0.5, 0.0);
    let fx = max((f32(c.y) + 0.5) * f32(p.w) / f32(p.wo) - 0.5, 0.0);
    let y0 = min(u32(floor(fy)), p.h - 1u);
    let x0 = min(u32(floor(fx)), p.w - 1u);
    let y1 = min(y0 + 1u, p.h - 1u);
    let x1 = min(x0 + 1u, p.w - 1u);
    let dy = fy - f32(y0);
    let dx = fx - f32(x0);
    let base = c.w * p.h * p.w;
    let top = mix(x[base + y0 * p.w + x0], x[base + y0 * p.w + x1], dx);
    let bottom = mix(x[base + y1 * p.w + x0], x[base + y1 * p.w + x1], dx);
    out[c.x] = mix(top, bottom, dy);
}
