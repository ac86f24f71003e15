// Element-wise ops: `unary` (GELU, quick-GELU, SiLU, affine x·a + b, clamp to [a, b]) and `binary` (add, sub,
// mul) with NumPy broadcasting up to rank 8. One invocation per output element, 256 per
// workgroup, on a 2D grid folded back into a linear index.

struct UnaryParams {
    len: u32,
    op: u32,
    a: f32,
    b: f32,
}

// op codes, mirrored by `UnaryOp` on the host
const GELU: u32 = 0u;
const QUICK_GELU: u32 = 1u;
const SILU: u32 = 2u;
const AFFINE: u32 = 3u;
const CLAMP: u32 = 4u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> up: UnaryParams;

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): WGSL has no erf.
fn erf(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256, 1, 1)
fn unary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= up.len) {
        return;
    }
    let v = x[i];
    var r: f32;
    switch up.op {
        case GELU: {
            r = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
        }
        case QUICK_GELU: {
            r = v * sigmoid(1.702 * v);
        }
        case SILU: {
            r = v * sigmoid(v);
        }
        case CLAMP: {
            r = clamp(v, up.a, up.b);
        }
        default: {
            r = v * up.a + up.b;
        }
    }
    y[i] = r;
}

struct BinaryParams {
    len: u32,
    rank: u32,
    op: u32,
    _pad: u32,
    // output shape, and each input's strides (0 where it broadcasts), as 2 × vec4 = 8 axes
    shape: array<vec4<u32>, 2>,
    lhs_strides: array<vec4<u32>, 2>,
    rhs_strides: array<vec4<u32>, 2>,
}

const ADD: u32 = 0u;
const SUB: u32 = 1u;
const MUL: u32 = 2u;

@group(0) @binding(0) var<storage, read> lhs: array<f32>;
@group(0) @binding(1) var<storage, read> rhs: array<f32>;
@group(0) @binding(2) var<storage, read_write> z: array<f32>;
@group(0) @binding(3) var<uniform> bp: BinaryParams;

@compute @workgroup_size(256, 1, 1)
fn binary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= bp.len) {
        return;
    }
    var rest = i;
    var li_off = 0u;
    var ri_off = 0u;
    for (var d = bp.rank; d > 0u; d--) {
        let axis = d - 1u;
        let extent = bp.shape[axis / 4u][axis % 4u];
        let coord = rest % extent;
        rest /= extent;
        li_off += coord * bp.lhs_strides[axis / 4u][axis % 4u];
        ri_off += coord * bp.rhs_strides[axis / 4u][axis % 4u];
    }
    let l = lhs[li_off];
    let r = rhs[ri_off];
    var o: f32;
    switch bp.op {
        case ADD: {
            o = l + r;
        }
        case SUB: {
            o = l - r;
        }
        default: {
            o = l * r;
        }
    }
    z[i] = o;
}
