// Batched matmul / linear: out[b] = A[b] (M×K) · B[b] (K×N, or N×K when trans_b) + bias (N).
// B may be f16 weights (`b_is_half`): two per u32 word, unpacked with core WGSL's
// unpack2x16float, so no SHADER_F16 is needed; products accumulate in f32.
//
// Tiled and register-blocked: a 16×16 workgroup computes a 64×64 output tile, each invocation a
// 4×4 block held in four vec4 accumulators. K advances in steps of 16 through workgroup memory,
// which is stored as vec4 columns so that the inner loop reads A and B four values at a time.
// Global loads are vec4 (one per invocation per tile and operand) when the contiguous axis is a
// multiple of 4 (`a_vec4`, `b_vec4`; the host binds the same buffers a second time as vec4
// arrays), else scalar; both are coalesced along the contiguous axis.
// Workgroup memory: 2 × 16 × 64 × 4 B = 8 KiB.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_b: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    has_bias: u32,
    b_is_half: u32,
    a_vec4: u32,
    b_vec4: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b_half: array<u32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

fn load_b(i: u32) -> f32 {
    if (p.b_is_half == 1u) {
        let pair = unpack2x16float(b_half[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return b[i];
}

const TILE: u32 = 64u;
const TK: u32 = 16u;
// Row stride of the staged tiles in vec4s: 16 plus one of padding, so that the transposing
// stores of a tile do not all land in one memory bank.
const ROW: u32 = 17u;

// a_tile[k * 16 + i] holds A rows 4i..4i+3 at column k of the tile; b_tile[k * 16 + j] holds B
// columns 4j..4j+3 at row k.
var<workgroup> a_tile: array<vec4<f32>, 272>;
var<workgroup> b_tile: array<vec4<f32>, 272>;

fn stage_a(li: u32, a_base: u32, row0: u32, k0: u32) {
    if (p.a_vec4 == 1u) {
        // 64 rows × 4 quads of K: one vec4 each.
        let r = li / 4u;
        let kq = (li % 4u) * 4u;
        let gr = row0 + r;
        var v = vec4<f32>(0.0);
        if (gr < p.m && k0 + kq < p.k) {
            v = a4[(a_base + gr * p.k + k0 + kq) / 4u];
        }
        for (var j = 0u; j < 4u; j++) {
            a_tile[(kq + j) * ROW + r / 4u][r % 4u] = v[j];
        }
        return;
    }
    for (var s = 0u; s < 4u; s++) {
        let idx = li + s * 256u;
        let r = idx / TK;
        let c = idx % TK;
        let gr = row0 + r;
        let gc = k0 + c;
        var v = 0.0;
        if (gr < p.m && gc < p.k) {
            v = a[a_base + gr * p.k + gc];
        }
        a_tile[c * ROW + r / 4u][r % 4u] = v;
    }
}

fn stage_b(li: u32, b_base: u32, col0: u32, k0: u32) {
    if (p.b_vec4 == 1u && p.trans_b == 0u) {
        // 16 rows of K × 16 quads of N: the vec4 is a b_tile entry as it is.
        let kk = li / 16u;
        let nq = li % 16u;
        let gk = k0 + kk;
        let gn = col0 + nq * 4u;
        var v = vec4<f32>(0.0);
        if (gk < p.k && gn < p.n) {
            v = b4[(b_base + gk * p.n + gn) / 4u];
        }
        b_tile[kk * ROW + nq] = v;
        return;
    }
    if (p.b_vec4 == 1u) {
        // Transposed: 64 columns of N × 4 quads of K.
        let nn = li / 4u;
        let kq = (li % 4u) * 4u;
        let gn = col0 + nn;
        var v = vec4<f32>(0.0);
        if (gn < p.n && k0 + kq < p.k) {
            v = b4[(b_base + gn * p.k + k0 + kq) / 4u];
        }
        for (var j = 0u; j < 4u; j++) {
            b_tile[(kq + j) * ROW + nn / 4u][nn % 4u] = v[j];
        }
        return;
    }
    for (var s = 0u; s < 4u; s++) {
        let idx = li + s * 256u;
        var kk: u32;
        var nn: u32;
        if (p.trans_b == 1u) {
            nn = idx / TK;
            kk = idx % TK;
        } else {
            kk = idx / TILE;
            nn = idx % TILE;
        }
        let gk = k0 + kk;
        let gn = col0 + nn;
        var v = 0.0;
        if (gk < p.k && gn < p.n) {
            if (p.trans_b == 1u) {
                v = load_b(b_base + gn * p.k + gk);
            } else {
                v = load_b(b_base + gk * p.n + gn);
            }
        }
        b_tile[kk * ROW + nn / 4u][nn % 4u] = v;
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let batch = wid.z;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let a_base = batch * p.a_batch_stride;
    let b_base = batch * p.b_batch_stride;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * TK;
        stage_a(li, a_base, row0, k0);
        stage_b(li, b_base, col0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = a_tile[kk * ROW + lid.y];
            let bv = b_tile[kk * ROW + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        workgroupBarrier();
    }

    let out_base = batch * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r < p.m) {
            for (var j = 0u; j < 4u; j++) {
                let c = col0 + lid.x * 4u + j;
                if (c < p.n) {
                    var v = acc[i][j];
                    if (p.has_bias == 1u) {
                        v += bias[c];
                    }
                    out[out_base + r * p.n + c] = v;
                }
            }
        }
    }
}
