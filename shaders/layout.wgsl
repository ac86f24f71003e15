// Data movement: `strided_copy` (permute, and any view with up to 8 axes made contiguous) and
// `copy_block` (one input into a slab of the output along an axis: concat, narrow, plain copy).
// One invocation per output element, 256 per workgroup.

struct StridedParams {
    len: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    shape: array<vec4<u32>, 2>,
    src_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> sp: StridedParams;

@compute @workgroup_size(256, 1, 1)
fn strided_copy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= sp.len) {
        return;
    }
    var rest = i;
    var offset = 0u;
    for (var d = sp.rank; d > 0u; d--) {
        let axis = d - 1u;
        let extent = sp.shape[axis / 4u][axis % 4u];
        offset += (rest % extent) * sp.src_strides[axis / 4u][axis % 4u];
        rest /= extent;
    }
    dst[i] = src[offset];
}

// Copies src viewed as [outer, len, inner] at axis offset src_offset (of src_axis) into dst
// viewed as [outer, dst_axis, inner] at axis offset dst_offset.
struct BlockParams {
    outer: u32,
    len: u32,
    inner: u32,
    src_axis: u32,
    src_offset: u32,
    dst_axis: u32,
    dst_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> block_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> block_dst: array<f32>;
@group(0) @binding(2) var<uniform> bp: BlockParams;

@compute @workgroup_size(256, 1, 1)
fn copy_block(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= bp.outer * bp.len * bp.inner) {
        return;
    }
    let e = i % bp.inner;
    let a = (i / bp.inner) % bp.len;
    let o = i / (bp.inner * bp.len);
    let s = (o * bp.src_axis + bp.src_offset + a) * bp.inner + e;
    let d = (o * bp.dst_axis + bp.dst_offset + a) * bp.inner + e;
    block_dst[d] = block_src[s];
}
