// conv2d as an implicit GEMM: for each image, out (Cout × Ho·Wo) = W (Cout × Cin·kh·kw) · X̂,
// where X̂ (the im2col matrix) is never built: its tile is gathered straight from the input,
// with zeros for padding. Any kernel size, stride and padding; NCHW layout.
//
// The weights may be f16 (`weight_is_half`), unpacked as in matmul.wgsl.
//
// Same tiling as matmul.wgsl: 64×64 output tile per 16×16 workgroup, 4×4 per invocation,
// K in steps of 16 through padded vec4 workgroup memory (8.5 KiB). Weights are loaded as vec4
// when Cin·kh·kw is a multiple of 4 (`weight_vec4`); the input gather is scalar.

struct Params {
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    ho: u32,
    wo: u32,
    has_bias: u32,
    weight_is_half: u32,
    weight_vec4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> weight_half: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

fn load_weight(i: u32) -> f32 {
    if (p.weight_is_half == 1u) {
        let pair = unpack2x16float(weight_half[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return weight[i];
}

const TILE: u32 = 64u;
const TK: u32 = 16u;
// Row stride of the staged tiles in vec4s: 16 plus one of padding, so that the transposing
// stores of a tile do not all land in one memory bank.
const ROW: u32 = 17u;

var<workgroup> w_tile: array<vec4<f32>, 272>;
var<workgroup> x_tile: array<vec4<f32>, 272>;

@compute @workgroup_size(16, 16, 1)
fn conv2d(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let image = wid.z;
    let m = p.cout;
    let n = p.ho * p.wo;
    let kdim = p.cin * p.kh * p.kw;
    let khw = p.kh * p.kw;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let x_base = image * p.cin * p.h * p.w;

    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    let tiles = (kdim + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t++) {
        let k0 = t * TK;
        if (p.weight_vec4 == 1u) {
            let r = li / 4u;
            let kq = (li % 4u) * 4u;
            let gr = row0 + r;
            var v = vec4<f32>(0.0);
            if (gr < m && k0 + kq < kdim) {
                v = weight4[(gr * kdim + k0 + kq) / 4u];
            }
            for (var j = 0u; j < 4u; j++) {
                w_tile[(kq + j) * ROW + r / 4u][r % 4u] = v[j];
            }
        } else {
            for (var s = 0u; s < 4u; s++) {
                let idx = li + s * 256u;
                let r = idx / TK;
                let c = idx % TK;
                let gr = row0 + r;
                let gc = k0 + c;
                var v = 0.0;
                if (gr < m && gc < kdim) {
                    v = load_weight(gr * kdim + gc);
                }
                w_tile[c * ROW + r / 4u][r % 4u] = v;
            }
        }
        for (var s = 0u; s < 4u; s++) {
            let idx = li + s * 256u;
            let kk = idx / TILE;
            let nn = idx % TILE;
            let gk = k0 + kk;
            let gn = col0 + nn;
            var v = 0.0;
            if (gk < kdim && gn < n) {
                let ci = gk / khw;
                let rem = gk % khw;
                let ky = rem / p.kw;
                let kx = rem % p.kw;
                let oy = gn / p.wo;
                let ox = gn % p.wo;
                // Signed arithmetic: padding makes the top-left taps negative.
                let iy = i32(oy * p.stride + ky) - i32(p.pad);
                let ix = i32(ox * p.stride + kx) - i32(p.pad);
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    v = x[x_base + (ci * p.h + u32(iy)) * p.w + u32(ix)];
                }
            }
            x_tile[kk * ROW + nn / 4u][nn % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let wv = w_tile[kk * ROW + lid.y];
            let xv = x_tile[kk * ROW + lid.x];
            acc[0] = fma(vec4<f32>(wv.x), xv, acc[0]);
            acc[1] = fma(vec4<f32>(wv.y), xv, acc[1]);
            acc[2] = fma(vec4<f32>(wv.z), xv, acc[2]);
            acc[3] = fma(vec4<f32>(wv.w), xv, acc[3]);
        }
        workgroupBarrier();
    }

    let out_base = image * m * n;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r < m) {
            for (var j = 0u; j < 4u; j++) {
                let c = col0 + lid.x * 4u + j;
                if (c < n) {
                    var v = acc[i][j];
                    if (p.has_bias == 1u) {
                        v += bias[r];
                    }
                    out[out_base + r * n + c] = v;
                }
            }
        }
    }
}
