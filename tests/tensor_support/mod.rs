//! Shared by the tensor tests: the devices under test, deterministic inputs, plain f64
//! references of every op (slow and obvious on purpose), and tolerance checks.
//!
//! Tolerances (documented in docs/kernels.md):
//! - GEMM-like ops (matmul, linear, conv2d, attention): normwise, max|Δ| ≤ 1e-4 · max|ref|;
//! - everything else element-wise, |Δ| ≤ 1e-5 + 1e-4 · |ref|;
//! - the timestep embedding, whose arguments reach 1e3 rad: |Δ| ≤ 2e-3.
#![allow(dead_code)]

use std::sync::OnceLock;

use reimagen::tensor::{Device, Tensor};

/// The GPU device every WGSL test runs on: the best adapter wgpu finds (lavapipe in CI).
/// Fails, never skips, when there is none, saying how to install one.
pub fn gpu() -> Device {
    static GPU: OnceLock<Device> = OnceLock::new();
    GPU.get_or_init(|| match Device::gpu() {
        Ok(d) => d,
        Err(e) => panic!("the WGSL tests need a wgpu adapter: {e}"),
    })
    .clone()
}

/// Runs one test body on the CPU backend and on the WGSL backend.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn cpu() {
                let body: fn(&reimagen::tensor::Device) = $body;
                body(&reimagen::tensor::Device::Cpu);
            }
            #[test]
            fn wgpu() {
                let body: fn(&reimagen::tensor::Device) = $body;
                body(&$crate::tensor_support::gpu());
            }
        }
    };
}

/// Deterministic values in [-1, 1) from a seed (xorshift).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64, device: &Device) -> (Tensor, Vec<f64>) {
    let n = shape.iter().product();
    let v = values(n, seed);
    let t = Tensor::from_vec(v.clone(), shape, device).expect("upload");
    (t, v.into_iter().map(f64::from).collect())
}

pub fn got(t: &Tensor) -> Vec<f64> {
    t.to_vec()
        .expect("read back")
        .into_iter()
        .map(f64::from)
        .collect()
}

pub fn assert_normwise(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0.0), |(bi, be), (i, e)| {
            if e > be || e.is_nan() {
                (i, e)
            } else {
                (bi, be)
            }
        });
    assert!(
        err <= tol * scale,
        "{what}: max |Δ| = {err:e} at {i} (got {}, want {}) > {tol:e} · {scale:e}",
        got[i],
        want[i]
    );
}

pub fn assert_elementwise(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: at {i} got {g}, want {w} (|Δ| = {:e})",
            (g - w).abs()
        );
    }
}

pub const GEMM_TOL: f64 = 1e-4;
pub const ATOL: f64 = 1e-5;
pub const RTOL: f64 = 1e-4;

// ---- f64 references ----

pub fn matmul_ref(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_shared: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * m * n];
    for z in 0..batch {
        let bo = if b_shared { 0 } else { z * k * n };
        for i in 0..m {
            for j in 0..n {
                out[(z * m + i) * n + j] = (0..k)
                    .map(|l| a[(z * m + i) * k + l] * b[bo + l * n + j])
                    .sum();
            }
        }
    }
    out
}

pub fn linear_ref(
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    rows: usize,
    k: usize,
    n: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            out[r * n + j] = (0..k).map(|l| x[r * k + l] * w[j * k + l]).sum::<f64>()
                + bias.map_or(0.0, |b| b[j]);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub fn conv2d_ref(
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    [n, cin, h, wd]: [usize; 4],
    [cout, kh, kw]: [usize; 3],
    stride: usize,
    pad: usize,
) -> (Vec<f64>, [usize; 4]) {
    let ho = (h + 2 * pad - kh) / stride + 1;
    let wo = (wd + 2 * pad - kw) / stride + 1;
    let mut out = vec![0.0; n * cout * ho * wo];
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = bias.map_or(0.0, |bb| bb[co]);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - pad as isize;
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    s += x[((b * cin + ci) * h + iy as usize) * wd + ix as usize]
                                        * w[((co * cin + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    out[((b * cout + co) * ho + oy) * wo + ox] = s;
                }
            }
        }
    }
    (out, [n, cout, ho, wo])
}

fn normalise(x: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter().map(|v| (v - mean) / (var + eps).sqrt()).collect()
}

pub fn silu_ref(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

#[allow(clippy::too_many_arguments)]
pub fn group_norm_ref(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    n: usize,
    c: usize,
    spatial: usize,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Vec<f64> {
    let per = c / groups * spatial;
    let mut out = Vec::with_capacity(x.len());
    for (gi, chunk) in x.chunks(per).enumerate().take(n * groups) {
        let g = gi % groups;
        for (i, v) in normalise(chunk, eps).into_iter().enumerate() {
            let ch = g * (c / groups) + i / spatial;
            let y = v * gamma[ch] + beta[ch];
            out.push(if silu { silu_ref(y) } else { y });
        }
    }
    out
}

pub fn layer_norm_ref(x: &[f64], gamma: &[f64], beta: &[f64], len: usize, eps: f64) -> Vec<f64> {
    x.chunks(len)
        .flat_map(|row| {
            normalise(row, eps)
                .into_iter()
                .enumerate()
                .map(|(i, v)| v * gamma[i] + beta[i])
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn softmax_ref(x: &[f64], len: usize) -> Vec<f64> {
    x.chunks(len)
        .flat_map(|row| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn attention_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<(&[f64], usize)>,
    [batch, lq, lk, d, dv]: [usize; 5],
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * lq * dv];
    for b in 0..batch {
        for i in 0..lq {
            let mut scores: Vec<f64> = (0..lk)
                .map(|j| {
                    let mut s: f64 = (0..d)
                        .map(|c| q[(b * lq + i) * d + c] * k[(b * lk + j) * d + c])
                        .sum::<f64>()
                        * scale;
                    if let Some((m, mb)) = mask {
                        let base = if mb > 1 { b * lq * lk } else { 0 };
                        s += m[base + i * lk + j];
                    }
                    if causal && j > i {
                        s = f64::NEG_INFINITY;
                    }
                    s
                })
                .collect();
            let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            scores.iter_mut().for_each(|s| *s = (*s - mx).exp());
            let sum: f64 = scores.iter().sum();
            for c in 0..dv {
                out[(b * lq + i) * dv + c] = (0..lk)
                    .map(|j| scores[j] * v[(b * lk + j) * dv + c])
                    .sum::<f64>()
                    / sum;
            }
        }
    }
    out
}

/// erf by its Maclaurin series (f64; |x| ≤ 3 is all the tests use).
pub fn erf_ref(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

pub fn gelu_ref(v: f64) -> f64 {
    0.5 * v * (1.0 + erf_ref(v / std::f64::consts::SQRT_2))
}

pub fn quick_gelu_ref(v: f64) -> f64 {
    v / (1.0 + (-1.702 * v).exp())
}

/// Broadcast binary op over shapes of equal rank.
pub fn broadcast_ref(
    a: &[f64],
    ashape: &[usize],
    b: &[f64],
    bshape: &[usize],
    f: fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let rank = ashape.len().max(bshape.len());
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (ashape, bshape) = (pad(ashape), pad(bshape));
    let shape: Vec<usize> = ashape
        .iter()
        .zip(&bshape)
        .map(|(&x, &y)| x.max(y))
        .collect();
    let n: usize = shape.iter().product();
    let index = |coord: &[usize], s: &[usize]| {
        coord
            .iter()
            .zip(s)
            .fold(0, |acc, (&c, &d)| acc * d + if d == 1 { 0 } else { c })
    };
    let mut out = Vec::with_capacity(n);
    for lin in 0..n {
        let mut coord = vec![0; rank];
        let mut rest = lin;
        for ax in (0..rank).rev() {
            coord[ax] = rest % shape[ax];
            rest /= shape[ax];
        }
        out.push(f(a[index(&coord, &ashape)], b[index(&coord, &bshape)]));
    }
    (out, shape)
}

pub fn resize_ref(
    x: &[f64],
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    bilinear: bool,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        let src = &x[p * h * w..][..h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                if !bilinear {
                    out.push(src[(oy * h / ho).min(h - 1) * w + (ox * w / wo).min(w - 1)]);
                    continue;
                }
                let fy = ((oy as f64 + 0.5) * h as f64 / ho as f64 - 0.5).max(0.0);
                let fx = ((ox as f64 + 0.5) * w as f64 / wo as f64 - 0.5).max(0.0);
                let (y0, x0) = (
                    (fy.floor() as usize).min(h - 1),
                    (fx.floor() as usize).min(w - 1),
                );
                let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                let (dy, dx) = (fy - y0 as f64, fx - x0 as f64);
                let top = src[y0 * w + x0] * (1.0 - dx) + src[y0 * w + x1] * dx;
                let bottom = src[y1 * w + x0] * (1.0 - dx) + src[y1 * w + x1] * dx;
                out.push(top * (1.0 - dy) + bottom * dy);
            }
        }
    }
    out
}

pub fn timestep_ref(t: &[f64], dim: usize, max_period: f64) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; t.len() * dim];
    for (b, &tv) in t.iter().enumerate() {
        for j in 0..half {
            let arg = tv * (-max_period.ln() * j as f64 / half as f64).exp();
            out[b * dim + j] = arg.cos();
            out[b * dim + half + j] = arg.sin();
        }
    }
    out
}

/// Multi-head attention with the heads side by side: q `[B, Lq, H·D]`, k `[B, Lk, H·D]`,
/// v `[B, Lk, H·Dv]`; `keep` `[B, Lk]` (0 hides a key). A query that sees no key averages v
/// uniformly over all keys, as the kernels define it.
#[allow(clippy::too_many_arguments)]
pub fn multi_head_attention_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    keep: Option<&[f64]>,
    [batch, lq, lk, heads, d, dv]: [usize; 6],
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * lq * heads * dv];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..lq {
                let visible =
                    |j: usize| !(causal && j > i) && keep.is_none_or(|m| m[b * lk + j] != 0.0);
                let scores: Vec<Option<f64>> = (0..lk)
                    .map(|j| {
                        visible(j).then(|| {
                            (0..d)
                                .map(|c| {
                                    q[(b * lq + i) * heads * d + h * d + c]
                                        * k[(b * lk + j) * heads * d + h * d + c]
                                })
                                .sum::<f64>()
                                * scale
                        })
                    })
                    .collect();
                let weights: Vec<f64> = if scores.iter().all(Option::is_none) {
                    vec![1.0; lk]
                } else {
                    let mx = scores
                        .iter()
                        .flatten()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max);
                    scores
                        .iter()
                        .map(|s| s.map_or(0.0, |s| (s - mx).exp()))
                        .collect()
                };
                let sum: f64 = weights.iter().sum();
                for c in 0..dv {
                    out[(b * lq + i) * heads * dv + h * dv + c] = (0..lk)
                        .map(|j| weights[j] * v[(b * lk + j) * heads * dv + h * dv + c])
                        .sum::<f64>()
                        / sum;
                }
            }
        }
    }
    out
}

/// Writes a safetensors file of `(name, dtype, shape, little-endian bytes)`.
pub fn write_safetensors(
    path: &std::path::Path,
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| x.to_le_bytes()).collect()
}

/// Philox4x32-10 (Salmon et al., SC 2011), written from the paper for the tests: 64-bit
/// products, rounds with the key bumped by the Weyl constants.
pub fn philox_ref(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [
                k[0].wrapping_add(0x9E37_79B9),
                k[1].wrapping_add(0xBB67_AE85),
            ];
        }
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// The documented noise (docs/tensor.md, "Seeded noise") in f64: block n / 4, Philox of
/// (block, 0, 0, 0) under (seed low, seed high), uniforms (r >> 8 + 0.5) / 2^24, Box-Muller.
pub fn normal_ref(len: usize, seed: u64) -> Vec<f64> {
    let key = [seed as u32, (seed >> 32) as u32];
    let uniform = |r: u32| ((r >> 8) as f64 + 0.5) / 16_777_216.0;
    (0..len.div_ceil(4))
        .flat_map(|block| {
            let r = philox_ref([block as u32, 0, 0, 0], key);
            [(r[0], r[1]), (r[2], r[3])].into_iter().flat_map(|(a, b)| {
                let radius = (-2.0 * uniform(a).ln()).sqrt();
                let angle = std::f64::consts::PI * (2.0 * uniform(b) - 1.0);
                [radius * angle.cos(), radius * angle.sin()]
            })
        })
        .take(len)
        .collect()
}

/// diffusers' `get_timestep_embedding` in f64: frequencies `max_period^(−j / (half − shift))`,
/// `[sin | cos]`, swapped to `[cos | sin]` with `flip`, a zero column when `dim` is odd.
pub fn timestep_ref_with(
    t: &[f64],
    dim: usize,
    max_period: f64,
    flip: bool,
    shift: f64,
) -> Vec<f64> {
    let half = dim / 2;
    let mut out = vec![0.0; t.len() * dim];
    for (b, &tv) in t.iter().enumerate() {
        for j in 0..half {
            let arg = tv * (-max_period.ln() * j as f64 / (half as f64 - shift)).exp();
            let (first, second) = if flip {
                (arg.cos(), arg.sin())
            } else {
                (arg.sin(), arg.cos())
            };
            out[b * dim + j] = first;
            out[b * dim + half + j] = second;
        }
    }
    out
}
