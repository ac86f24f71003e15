// Embeddings: `timestep` (sinusoidal, [cos | sin] halves, as in guided-diffusion and LDM:
// frequency_i = max_period^(-i / half)) and `gather` (rows of a table by token id; the table
// may be f16 weights).
// One invocation per output value.

struct TimestepParams {
    batch: u32,
    dim: u32,
    max_period: f32,
    flip_sin_to_cos: u32,
    freq_shift: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> t: array<f32>;
@group(0) @binding(1) var<storage, read_write> emb: array<f32>;
@group(0) @binding(2) var<uniform> tp: TimestepParams;

@compute @workgroup_size(256, 1, 1)
fn timestep(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= tp.batch * tp.dim) {
        return;
    }
    let b = i / tp.dim;
    let c = i % tp.dim;
    let half_dim = tp.dim / 2u;
    var v = 0.0;
    if (c < 2u * half_dim) {
        let j = c % half_dim;
        let freq = exp(-log(tp.max_period) * f32(j) / (f32(half_dim) - tp.freq_shift));
        let arg = t[b] * freq;
        // The first half is sin unless flipped.
        if ((c < half_dim) == (tp.flip_sin_to_cos == 1u)) {
            v = cos(arg);
        } else {
            v = sin(arg);
        }
    }
    emb[i] = v;
}

struct GatherParams {
    rows: u32,
    dim: u32,
    // the table holds f16 pairs packed in u32 words (see matmul.wgsl)
    table_is_half: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> table_half: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> gathered: array<f32>;
@group(0) @binding(4) var<uniform> gp: GatherParams;

fn load_table(i: u32) -> f32 {
    if (gp.table_is_half == 1u) {
        let pair = unpack2x16float(table_half[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return table[i];
}

@compute @workgroup_size(256, 1, 1)
fn gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if (i >= gp.rows * gp.dim) {
        return;
    }
    gathered[i] = load_table(ids[i / gp.dim] * gp.dim + i % gp.dim);
}
