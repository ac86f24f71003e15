//! CPU seeded normal noise: Philox4x32-10 and Box-Muller, the algorithm of
//! `shaders/random.wgsl` (written out in docs/tensor.md, "Seeded noise"), parallel over blocks.
//!
//! Not here: shape checks (`ops.rs`).

use rayon::prelude::*;

use super::PARALLEL_MIN;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
pub(crate) fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// A word as a uniform in (0, 1): its top 24 bits, centred (exact in f32).
fn uniform01(r: u32) -> f32 {
    ((r >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

fn box_muller(a: u32, b: u32) -> [f32; 2] {
    let radius = (-2.0 * uniform01(a).ln()).sqrt();
    let angle = std::f32::consts::PI * (2.0 * uniform01(b) - 1.0);
    [radius * angle.cos(), radius * angle.sin()]
}

/// `len` standard normal values for `seed`.
pub(crate) fn normal(len: usize, seed: u64) -> Vec<f32> {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut out = vec![0.0f32; len];
    let fill = |(block, dst): (usize, &mut [f32])| {
        let r = philox([block as u32, 0, 0, 0], key);
        let [z0, z1] = box_muller(r[0], r[1]);
        let [z2, z3] = box_muller(r[2], r[3]);
        for (d, z) in dst.iter_mut().zip([z0, z1, z2, z3]) {
            *d = z;
        }
    };
    if len < PARALLEL_MIN {
        out.chunks_mut(4).enumerate().for_each(fill);
    } else {
        out.par_chunks_mut(4).enumerate().for_each(fill);
    }
    out
}
