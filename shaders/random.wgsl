// Seeded standard normal noise, the same numbers as the CPU backend (`cpu/random.rs`) up to
// the precision of log/sqrt/cos/sin. The algorithm (docs/tensor.md, "Seeded noise"):
// element n belongs to block c = n / 4; Philox4x32-10 (Salmon et al., SC 2011) of the counter
// (c, 0, 0, 0) under the key (seed mod 2^32, seed / 2^32) gives four words r0..r3; each word
// becomes a uniform u = (r >> 8 + 0.5) / 2^24 in (0, 1); Box-Muller turns (u0, u1) into
// elements 4c, 4c+1 and (u2, u3) into 4c+2, 4c+3:
//   radius = sqrt(-2 ln ua), angle = π (2 ub - 1), z = (radius cos angle, radius sin angle).
// WGSL has no 64-bit integers, so Philox's 32 × 32 → 64-bit products are built from 16-bit
// halves. One invocation per block of four, 256 per workgroup, on a folded 2D grid.

struct Params {
    len: u32,
    key0: u32,
    key1: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

const M0: u32 = 0xD2511F53u;
const M1: u32 = 0xCD9E8D57u;
const W0: u32 = 0x9E3779B9u;
const W1: u32 = 0xBB67AE85u;
const PI: f32 = 3.14159265358979;

// (high, low) words of a · b.
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let ll = al * bl;
    let lh = al * bh;
    let hl = ah * bl;
    let hh = ah * bh;
    let mid = (ll >> 16u) + (lh & 0xFFFFu) + (hl & 0xFFFFu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = k + vec2<u32>(W0, W1);
        }
        let p0 = mul_hi_lo(M0, c.x);
        let p1 = mul_hi_lo(M1, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

fn uniform01(r: u32) -> f32 {
    return (f32(r >> 8u) + 0.5) * (1.0 / 16777216.0);
}

fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let radius = sqrt(-2.0 * log(uniform01(a)));
    let angle = PI * (2.0 * uniform01(b) - 1.0);
    return radius * vec2<f32>(cos(angle), sin(angle));
}

@compute @workgroup_size(256, 1, 1)
fn normal(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let block = (wid.x + wid.y * nwg.x) * 256u + li;
    let first = block * 4u;
    if (first >= p.len) {
        return;
    }
    let r = philox(vec4<u32>(block, 0u, 0u, 0u), vec2<u32>(p.key0, p.key1));
    var z = array<vec2<f32>, 2>(box_muller(r.x, r.y), box_muller(r.z, r.w));
    for (var e = 0u; e < 4u; e++) {
        if (first + e < p.len) {
            out[first + e] = z[e / 2u][e % 2u];
        }
    }
}
