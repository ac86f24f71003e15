//! Parity of every op on both backends (CPU and WGSL) against the plain f64 references of
//! `tensor_support`, over awkward shapes: odd sizes, sizes that are not multiples of the
//! kernels' tiles (64 × 64 × 16 for GEMMs, 16 keys and 64 queries for attention, 256 for rows),
//! and batch > 1. Each body runs once per backend (`cpu` and `wgpu` tests); the WGSL ones fail,
//! never skip, when no adapter exists.

mod tensor_support;

use reimagen::tensor::{Device, Tensor};
use tensor_support::*;

/// (input NCHW, output channels, kernel size, stride, padding, with bias)
type ConvCase = ([usize; 4], usize, usize, usize, usize, bool);
/// (name, the op, its f64 reference)
type BinaryCase = (
    &'static str,
    fn(&Tensor, &Tensor) -> reimagen::tensor::Result<Tensor>,
    fn(f64, f64) -> f64,
);

on_both_backends!(matmul_batched_awkward, |dev| {
    for &(batch, m, k, n) in &[
        (3, 67, 45, 71),
        (1, 1, 1, 1),
        (2, 130, 17, 5),
        (1, 64, 64, 64),
        (2, 67, 36, 92),
        (1, 3, 4, 4),
        (2, 5, 129, 66),
    ] {
        let (a, av) = tensor(&[batch, m, k], 1, dev);
        let (b, bv) = tensor(&[batch, k, n], 2, dev);
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[batch, m, n]);
        let want = matmul_ref(&av, &bv, batch, m, k, n, false);
        assert_normwise(
            &format!("matmul {batch}×{m}×{k}×{n}"),
            &got(&c),
            &want,
            GEMM_TOL,
        );
    }
});

on_both_backends!(matmul_shared_rhs, |dev| {
    let (a, av) = tensor(&[2, 3, 19, 33], 3, dev);
    let (b, bv) = tensor(&[33, 70], 4, dev);
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[2, 3, 19, 70]);
    assert_normwise(
        "matmul shared rhs",
        &got(&c),
        &matmul_ref(&av, &bv, 6, 19, 33, 70, true),
        GEMM_TOL,
    );
});

on_both_backends!(linear_with_and_without_bias, |dev| {
    let (x, xv) = tensor(&[2, 5, 33], 5, dev);
    let (w, wv) = tensor(&[65, 33], 6, dev);
    let (b, bv) = tensor(&[65], 7, dev);
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(y.shape(), &[2, 5, 65]);
    assert_normwise(
        "linear+bias",
        &got(&y),
        &linear_ref(&xv, &wv, Some(&bv), 10, 33, 65),
        GEMM_TOL,
    );
    let (x, xv) = tensor(&[129, 64], 8, dev);
    let (w, wv) = tensor(&[3, 64], 9, dev);
    let y = x.linear(&w, None).unwrap();
    assert_normwise(
        "linear",
        &got(&y),
        &linear_ref(&xv, &wv, None, 129, 64, 3),
        GEMM_TOL,
    );
    // K a multiple of 4 (vec4 loads) with N and M off the tile.
    let (x, xv) = tensor(&[5, 40], 10, dev);
    let (w, wv) = tensor(&[67, 40], 11, dev);
    let y = x
        .linear(
            &w,
            Some(&b.narrow(0, 0, 65).unwrap().narrow(0, 0, 65).unwrap()),
        )
        .err();
    assert!(y.is_some(), "bias of the wrong length is refused");
    let y = x.linear(&w, None).unwrap();
    assert_normwise(
        "linear vec4",
        &got(&y),
        &linear_ref(&xv, &wv, None, 5, 40, 67),
        GEMM_TOL,
    );
});

on_both_backends!(conv2d_kernels_strides_padding, |dev| {
    // (input NCHW, cout, kernel, stride, padding, bias)
    let cases: &[ConvCase] = &[
        ([2, 5, 13, 11], 7, 3, 1, 1, true),
        ([2, 5, 13, 11], 7, 3, 2, 1, false),
        ([2, 6, 9, 7], 67, 1, 1, 0, true),
        ([1, 6, 9, 7], 3, 1, 2, 0, true),
        ([1, 3, 16, 12], 5, 4, 4, 0, true),
        ([3, 1, 5, 5], 2, 3, 1, 0, false),
        // Cin·kh·kw a multiple of 4: vec4 weight loads.
        ([2, 4, 7, 9], 67, 3, 1, 1, true),
        ([1, 8, 6, 5], 5, 1, 1, 0, false),
    ];
    for (i, &(shape, cout, kk, stride, pad, with_bias)) in cases.iter().enumerate() {
        let (x, xv) = tensor(&shape, 10 + i as u64, dev);
        let (w, wv) = tensor(&[cout, shape[1], kk, kk], 20 + i as u64, dev);
        let (b, bv) = tensor(&[cout], 30 + i as u64, dev);
        let y = x.conv2d(&w, with_bias.then_some(&b), stride, pad).unwrap();
        let (want, oshape) = conv2d_ref(
            &xv,
            &wv,
            with_bias.then_some(&bv[..]),
            shape,
            [cout, kk, kk],
            stride,
            pad,
        );
        assert_eq!(y.shape(), &oshape);
        assert_normwise(&format!("conv2d case {i}"), &got(&y), &want, GEMM_TOL);
    }
});

on_both_backends!(group_norm_and_fused_silu, |dev| {
    for &(shape, groups, silu) in &[
        ([2usize, 12, 5, 7], 4usize, false),
        ([2, 12, 5, 7], 4, true),
        ([3, 6, 1, 1], 6, true),
        ([1, 8, 30, 30], 2, false),
    ] {
        let (x, xv) = tensor(&shape, 40, dev);
        let (g, gv) = tensor(&[shape[1]], 41, dev);
        let (b, bv) = tensor(&[shape[1]], 42, dev);
        let y = if silu {
            x.group_norm_silu(groups, &g, &b, 1e-5)
        } else {
            x.group_norm(groups, &g, &b, 1e-5)
        }
        .unwrap();
        let want = group_norm_ref(
            &xv,
            &gv,
            &bv,
            shape[0],
            shape[1],
            shape[2] * shape[3],
            groups,
            1e-5,
            silu,
        );
        assert_elementwise(
            &format!("group_norm {shape:?}/{groups} silu={silu}"),
            &got(&y),
            &want,
            ATOL * 10.0,
            RTOL,
        );
    }
});

on_both_backends!(layer_norm_rows, |dev| {
    for shape in [vec![3, 7, 77], vec![2, 300], vec![1, 1]] {
        let len = *shape.last().unwrap();
        let (x, xv) = tensor(&shape, 50, dev);
        let (g, gv) = tensor(&[len], 51, dev);
        let (b, bv) = tensor(&[len], 52, dev);
        let y = x.layer_norm(&g, &b, 1e-5).unwrap();
        assert_elementwise(
            &format!("layer_norm {shape:?}"),
            &got(&y),
            &layer_norm_ref(&xv, &gv, &bv, len, 1e-5),
            ATOL * 10.0,
            RTOL,
        );
    }
});

on_both_backends!(softmax_rows, |dev| {
    for shape in [vec![5, 1], vec![3, 4, 300], vec![2, 17]] {
        let len = *shape.last().unwrap();
        let (x, xv) = tensor(&shape, 60, dev);
        let x = x.scale(8.0).unwrap();
        let xv: Vec<f64> = xv.iter().map(|v| v * 8.0).collect();
        assert_elementwise(
            &format!("softmax {shape:?}"),
            &got(&x.softmax().unwrap()),
            &softmax_ref(&xv, len),
            ATOL,
            RTOL,
        );
    }
});

/// Attention against the f64 reference. `sharpen` multiplies the usual `1/√d` scale: at 8 the
/// scores spread over tens of units, so the softmax is peaked and the online softmax's running
/// maximum and rescaling are what the result depends on (a flat softmax averages them away).
fn attention_case(
    dev: &Device,
    [batch, lq, lk, d, dv]: [usize; 5],
    mask_batches: usize,
    causal: bool,
    sharpen: f32,
    seed: u64,
) {
    let (q, qv) = tensor(&[batch, lq, d], seed, dev);
    let (k, kv) = tensor(&[batch, lk, d], seed + 1, dev);
    let (v, vv) = tensor(&[batch, lk, dv], seed + 2, dev);
    let mask = (mask_batches > 0).then(|| {
        // Mostly zeros with some keys hidden, as a padding mask would.
        let n = mask_batches * lq * lk;
        let m: Vec<f32> = values(n, seed + 3)
            .into_iter()
            .map(|r| if r > 0.6 { -1e9 } else { r })
            .collect();
        (
            Tensor::from_vec(m.clone(), &[mask_batches, lq, lk], dev).unwrap(),
            m.into_iter().map(f64::from).collect::<Vec<_>>(),
        )
    });
    let scale = sharpen / (d as f32).sqrt();
    let out = q
        .attention(&k, &v, mask.as_ref().map(|m| &m.0), causal, scale)
        .unwrap();
    assert_eq!(out.shape(), &[batch, lq, dv]);
    let want = attention_ref(
        &qv,
        &kv,
        &vv,
        mask.as_ref().map(|m| (&m.1[..], mask_batches)),
        [batch, lq, lk, d, dv],
        scale as f64,
        causal,
    );
    assert_normwise(
        &format!(
            "attention {batch}×{lq}×{lk}×{d}×{dv} mask={mask_batches} causal={causal} \
             sharpen {sharpen}"
        ),
        &got(&out),
        &want,
        GEMM_TOL,
    );
}

on_both_backends!(attention_online_softmax, |dev| {
    attention_case(dev, [3, 37, 21, 16, 24], 0, false, 1.0, 70);
    attention_case(dev, [3, 37, 21, 16, 24], 0, false, 8.0, 70);
    attention_case(dev, [2, 19, 19, 8, 8], 0, true, 8.0, 71);
    attention_case(dev, [2, 13, 33, 12, 12], 1, false, 8.0, 72);
    attention_case(dev, [2, 13, 33, 12, 12], 2, true, 8.0, 73);
    attention_case(dev, [1, 130, 70, 128, 128], 0, false, 1.0, 74);
    attention_case(dev, [1, 130, 70, 128, 128], 0, false, 8.0, 74);
    attention_case(dev, [4, 1, 1, 3, 5], 0, false, 8.0, 75);
});

/// Multi-head attention on `[B, L, H·D]`, heads read in place. `sharpen` multiplies the scale,
/// so that the scores span tens of units and the online softmax's running maximum changes and
/// dominates (a flat softmax would hide a wrong rescaling).
#[allow(clippy::too_many_arguments)]
fn multi_head_case(
    dev: &Device,
    [batch, lq, lk, heads, d, dv]: [usize; 6],
    padded: &[usize],
    causal: bool,
    sharpen: f32,
    seed: u64,
) {
    let (q, qv) = tensor(&[batch, lq, heads * d], seed, dev);
    let (k, kv) = tensor(&[batch, lk, heads * d], seed + 1, dev);
    let (v, vv) = tensor(&[batch, lk, heads * dv], seed + 2, dev);
    // padded[b] keys at the end of batch b are padding.
    let keep = (!padded.is_empty()).then(|| {
        let m: Vec<f32> = (0..batch * lk)
            .map(|x| {
                if x % lk < lk - padded[x / lk] {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        (
            Tensor::from_vec(m.clone(), &[batch, lk], dev).unwrap(),
            m.into_iter().map(f64::from).collect::<Vec<_>>(),
        )
    });
    let scale = sharpen / (d as f32).sqrt();
    let out = q
        .multi_head_attention(&k, &v, heads, keep.as_ref().map(|m| &m.0), causal, scale)
        .unwrap();
    assert_eq!(out.shape(), &[batch, lq, heads * dv]);
    let want = multi_head_attention_ref(
        &qv,
        &kv,
        &vv,
        keep.as_ref().map(|m| &m.1[..]),
        [batch, lq, lk, heads, d, dv],
        scale as f64,
        causal,
    );
    assert_normwise(
        &format!(
            "multi-head attention {batch}×{lq}×{lk} heads {heads}×{d}/{dv} padded {padded:?} \
             causal={causal} sharpen {sharpen}"
        ),
        &got(&out),
        &want,
        GEMM_TOL,
    );
}

on_both_backends!(multi_head_attention_splits_heads_in_place, |dev| {
    multi_head_case(dev, [2, 77, 77, 8, 8, 8], &[0, 70], true, 1.0, 300);
    multi_head_case(dev, [3, 19, 33, 3, 12, 5], &[], false, 8.0, 301);
    multi_head_case(dev, [2, 65, 17, 2, 16, 16], &[16, 3], false, 8.0, 302);
    multi_head_case(dev, [1, 50, 50, 5, 4, 4], &[7], true, 8.0, 303);
    // Every key of the second batch hidden: its queries average v uniformly.
    multi_head_case(dev, [2, 5, 6, 2, 8, 8], &[1, 6], false, 4.0, 304);
    multi_head_case(dev, [1, 3, 2, 1, 128, 128], &[], false, 8.0, 305);
    // One head is the plain op.
    let (q, _) = tensor(&[2, 9, 24], 306, dev);
    let (k, _) = tensor(&[2, 11, 24], 307, dev);
    let one = q.multi_head_attention(&k, &k, 1, None, false, 0.5).unwrap();
    let plain = q.attention(&k, &k, None, false, 0.5).unwrap();
    assert_normwise("one head", &got(&one), &got(&plain), 1e-6);
    // Shapes that do not split are refused, naming the op.
    let e = q
        .multi_head_attention(&k, &k, 5, None, false, 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("multi_head_attention") && e.contains("5 heads"),
        "{e}"
    );
    let bad_mask = Tensor::zeros(&[2, 9], dev).unwrap();
    let e = q
        .multi_head_attention(&k, &k, 2, Some(&bad_mask), false, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 11]"), "{e}");
});

on_both_backends!(activations, |dev| {
    let (x, xv) = tensor(&[1027], 80, dev);
    let x = x.scale(4.0).unwrap();
    let xv: Vec<f64> = xv.iter().map(|v| v * 4.0).collect();
    let map = |f: fn(f64) -> f64| xv.iter().map(|&v| f(v)).collect::<Vec<_>>();
    assert_elementwise("gelu", &got(&x.gelu().unwrap()), &map(gelu_ref), ATOL, RTOL);
    assert_elementwise(
        "quick_gelu",
        &got(&x.quick_gelu().unwrap()),
        &map(quick_gelu_ref),
        ATOL,
        RTOL,
    );
    assert_elementwise("silu", &got(&x.silu().unwrap()), &map(silu_ref), ATOL, RTOL);
    assert_elementwise(
        "clamp",
        &got(&x.clamp(-1.0, 0.5).unwrap()),
        &map(|v| v.clamp(-1.0, 0.5)),
        0.0,
        0.0,
    );
    assert_elementwise(
        "affine",
        &got(&x.affine(-0.5, 2.0).unwrap()),
        &map(|v| v * -0.5 + 2.0),
        ATOL,
        RTOL,
    );
});

on_both_backends!(broadcast_add_sub_mul, |dev| {
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3, 5, 7], &[3, 1, 7]),
        (&[4, 1], &[1, 5]),
        (&[3, 9], &[3, 9]),
        (&[2, 4, 3, 3], &[2, 4, 1, 1]),
        (&[6], &[1]),
    ];
    for (i, &(sa, sb)) in cases.iter().enumerate() {
        let (a, av) = tensor(sa, 90 + i as u64, dev);
        let (b, bv) = tensor(sb, 95 + i as u64, dev);
        let ops: [BinaryCase; 3] = [
            ("add", Tensor::add, |x, y| x + y),
            ("sub", Tensor::sub, |x, y| x - y),
            ("mul", Tensor::mul, |x, y| x * y),
        ];
        for (name, op, f) in ops {
            let c = op(&a, &b).unwrap();
            let (want, shape) = broadcast_ref(&av, sa, &bv, sb, f);
            assert_eq!(c.shape(), &shape[..]);
            assert_elementwise(
                &format!("{name} {sa:?} {sb:?}"),
                &got(&c),
                &want,
                ATOL,
                RTOL,
            );
        }
    }
});

on_both_backends!(concat_narrow_permute, |dev| {
    let (a, av) = tensor(&[2, 3, 4, 5], 100, dev);
    let (b, bv) = tensor(&[2, 6, 4, 5], 101, dev);
    let c = Tensor::concat(&[&a, &b], 1).unwrap();
    assert_eq!(c.shape(), &[2, 9, 4, 5]);
    let mut want = Vec::new();
    for n in 0..2 {
        want.extend_from_slice(&av[n * 60..(n + 1) * 60]);
        want.extend_from_slice(&bv[n * 120..(n + 1) * 120]);
    }
    assert_eq!(got(&c), want, "concat along channels");
    assert_eq!(
        got(&c.narrow(1, 3, 6).unwrap()),
        got(&b),
        "narrow undoes concat"
    );
    let last = Tensor::concat(&[&a, &a], 3).unwrap();
    assert_eq!(last.shape(), &[2, 3, 4, 10]);
    assert_eq!(got(&last.narrow(3, 5, 5).unwrap()), av);

    let p = a.permute(&[0, 2, 1, 3]).unwrap();
    assert_eq!(p.shape(), &[2, 4, 3, 5]);
    let pv = got(&p);
    for n in 0..2 {
        for h in 0..4 {
            for c in 0..3 {
                for w in 0..5 {
                    assert_eq!(
                        pv[((n * 4 + h) * 3 + c) * 5 + w],
                        av[((n * 3 + c) * 4 + h) * 5 + w]
                    );
                }
            }
        }
    }
    let (m, mv) = tensor(&[7, 9], 102, dev);
    let t = m.transpose(0, 1).unwrap();
    let tv = got(&t);
    assert!((0..7).all(|i| (0..9).all(|j| tv[j * 7 + i] == mv[i * 9 + j])));
    assert_eq!(got(&m.copy().unwrap()), mv);
});

on_both_backends!(resize_nearest_and_bilinear, |dev| {
    let (x, xv) = tensor(&[2, 3, 5, 7], 110, dev);
    let up = x.upsample_nearest2x().unwrap();
    assert_eq!(up.shape(), &[2, 3, 10, 14]);
    assert_eq!(got(&up), resize_ref(&xv, 6, 5, 7, 10, 14, false));
    assert_eq!(
        got(&x.resize_nearest(4, 3).unwrap()),
        resize_ref(&xv, 6, 5, 7, 4, 3, false)
    );
    for (ho, wo) in [(9, 13), (3, 4), (5, 7), (1, 1)] {
        let y = x.resize_bilinear(ho, wo).unwrap();
        assert_elementwise(
            &format!("bilinear {ho}×{wo}"),
            &got(&y),
            &resize_ref(&xv, 6, 5, 7, ho, wo, true),
            ATOL,
            RTOL,
        );
    }
});

on_both_backends!(timestep_embedding_and_gather, |dev| {
    let t = [0.0f32, 1.0, 10.0, 500.0, 999.0];
    let tt = Tensor::from_vec(t.to_vec(), &[5], dev).unwrap();
    let tv: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    for dim in [64, 33] {
        let e = tt.timestep_embedding(dim, 10_000.0).unwrap();
        assert_eq!(e.shape(), &[5, dim]);
        assert_elementwise(
            &format!("timestep dim {dim}"),
            &got(&e),
            &timestep_ref(&tv, dim, 10_000.0),
            2e-3,
            0.0,
        );
    }
    let (table, table_v) = tensor(&[50, 17], 120, dev);
    let ids = [3u32, 0, 49, 3];
    let g = table.embedding(&ids).unwrap();
    assert_eq!(g.shape(), &[4, 17]);
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| table_v[i as usize * 17..][..17].to_vec())
        .collect();
    assert_eq!(got(&g), want);
});

on_both_backends!(chained_ops_match_the_f64_reference, |dev| {
    // A UNet-like block: conv → group norm + SiLU → + time embedding → conv → attention over
    // pixels, against the same chain of f64 references (so neither backend is its own judge).
    let (x, xv) = tensor(&[2, 8, 9, 9], 130, dev);
    let (w1, w1v) = tensor(&[16, 8, 3, 3], 131, dev);
    let (g, gv) = tensor(&[16], 132, dev);
    let (b, bv) = tensor(&[16], 133, dev);
    let (temb, tembv) = tensor(&[2, 16, 1, 1], 134, dev);
    let h = x
        .conv2d(&w1, None, 1, 1)
        .unwrap()
        .group_norm_silu(4, &g, &b, 1e-5)
        .unwrap()
        .add(&temb)
        .unwrap();
    let seq = h.reshape(&[2, 16, 81]).unwrap().transpose(1, 2).unwrap();
    let a = seq.attention(&seq, &seq, None, false, 0.25).unwrap();

    let (hv, _) = conv2d_ref(&xv, &w1v, None, [2, 8, 9, 9], [16, 3, 3], 1, 1);
    let hv = group_norm_ref(&hv, &gv, &bv, 2, 16, 81, 4, 1e-5, true);
    let (hv, _) = broadcast_ref(&hv, &[2, 16, 9, 9], &tembv, &[2, 16, 1, 1], |p, q| p + q);
    let mut seqv = vec![0.0; hv.len()];
    for n in 0..2 {
        for c in 0..16 {
            for p in 0..81 {
                seqv[(n * 81 + p) * 16 + c] = hv[(n * 16 + c) * 81 + p];
            }
        }
    }
    let want = attention_ref(&seqv, &seqv, &seqv, None, [2, 81, 81, 16, 16], 0.25, false);
    assert_normwise("chained block", &got(&a), &want, GEMM_TOL);
});

/// f16 weights and the values they hold: the f32 values rounded to f16. The references are
/// computed with these rounded weights, so the f16 paths are held to the f32 tolerances (only
/// the storage is f16; products accumulate in f32).
fn f16_weights(shape: &[usize], seed: u64, dev: &Device) -> (Tensor, Vec<f64>) {
    let v = values(shape.iter().product(), seed);
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let t = Tensor::weights_f16(&h, shape, dev).unwrap();
    (t, h.into_iter().map(|x| x.to_f64()).collect())
}

on_both_backends!(f16_weights_in_linear_conv2d_and_embedding, |dev| {
    let (x, xv) = tensor(&[3, 37], 140, dev);
    // An odd element count, so the last packed word is half empty.
    let (w, wv) = f16_weights(&[67, 37], 141, dev);
    let (b, bv) = tensor(&[67], 142, dev);
    if matches!(dev, Device::Wgpu(_)) {
        assert_eq!(w.dtype(), reimagen::tensor::DType::F16);
    }
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_normwise(
        "f16 linear",
        &got(&y),
        &linear_ref(&xv, &wv, Some(&bv), 3, 37, 67),
        GEMM_TOL,
    );
    // The rounding is real: the f32 weights give another product.
    let (_, unrounded) = tensor(&[67, 37], 141, dev);
    assert_ne!(wv, unrounded);
    assert_eq!(got(&w), wv, "f16 weights read back exactly");

    let (x, xv) = tensor(&[2, 5, 9, 7], 143, dev);
    let (w, wv) = f16_weights(&[7, 5, 3, 3], 144, dev);
    let y = x.conv2d(&w, None, 2, 1).unwrap();
    let (want, _) = conv2d_ref(&xv, &wv, None, [2, 5, 9, 7], [7, 3, 3], 2, 1);
    assert_normwise("f16 conv2d", &got(&y), &want, GEMM_TOL);

    // An f16 embedding table.
    let (table, table_v) = f16_weights(&[11, 6], 145, dev);
    let rows = table.embedding(&[10, 0, 3]).unwrap();
    let want: Vec<f64> = [10usize, 0, 3]
        .iter()
        .flat_map(|&i| table_v[i * 6..][..6].to_vec())
        .collect();
    assert_eq!(got(&rows), want, "f16 embedding rows");

    // Other ops read f32 only, and say so.
    if matches!(dev, Device::Wgpu(_)) {
        let e = w.add(&w).unwrap_err().to_string();
        assert!(e.contains("f16"), "{e}");
        assert!(
            x.reshape(&[70, 9])
                .unwrap()
                .matmul(&w.reshape(&[9, 35]).unwrap())
                .is_err()
        );
    }
});

on_both_backends!(l2_normalize_rows, |dev| {
    for shape in [vec![3, 512], vec![2, 5, 7], vec![4, 300]] {
        let len = *shape.last().unwrap();
        let (x, xv) = tensor(&shape, 150, dev);
        let want: Vec<f64> = xv
            .chunks(len)
            .flat_map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(move |v| v / n).collect::<Vec<_>>()
            })
            .collect();
        let y = x.l2_normalize(1e-12).unwrap();
        assert_elementwise(
            &format!("l2_normalize {shape:?}"),
            &got(&y),
            &want,
            ATOL,
            RTOL,
        );
    }
    let zero = Tensor::zeros(&[1, 4], dev)
        .unwrap()
        .l2_normalize(1e-12)
        .unwrap();
    assert_eq!(zero.to_vec().unwrap(), [0.0; 4], "a zero row stays zero");
});

on_both_backends!(empty_tensors_pass_through, |dev| {
    let a = Tensor::zeros(&[0, 5], dev).unwrap();
    let b = Tensor::zeros(&[5, 3], dev).unwrap();
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[0, 3]);
    assert!(c.to_vec().unwrap().is_empty());
    assert!(a.silu().unwrap().to_vec().unwrap().is_empty());
    assert_eq!(Tensor::concat(&[&a, &a], 0).unwrap().shape(), &[0, 5]);
    // K = 0: the product is all zeros (plus the bias).
    let x = Tensor::zeros(&[2, 0], dev).unwrap();
    let w = Tensor::zeros(&[3, 0], dev).unwrap();
    let bias = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3], dev).unwrap();
    assert_eq!(
        x.linear(&w, Some(&bias)).unwrap().to_vec().unwrap(),
        [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    );
});

/// A seeded sweep over random small shapes for the tiled kernels, past the hand-picked cases.
fn sweep_sizes(seed: u64, n: usize) -> Vec<usize> {
    values(n, seed)
        .into_iter()
        .map(|v| ((v + 1.0) * 0.5 * 1000.0) as usize)
        .collect()
}

on_both_backends!(random_shape_sweep, |dev| {
    for case in 0..12u64 {
        let r = sweep_sizes(1000 + case, 12);
        let (batch, m, k, n) = (1 + r[0] % 3, 1 + r[1] % 90, 1 + r[2] % 90, 1 + r[3] % 90);
        let (a, av) = tensor(&[batch, m, k], case, dev);
        let (b, bv) = tensor(&[batch, k, n], case + 50, dev);
        let want = matmul_ref(&av, &bv, batch, m, k, n, false);
        let what = format!("sweep matmul {batch}×{m}×{k}×{n}");
        assert_normwise(&what, &got(&a.matmul(&b).unwrap()), &want, GEMM_TOL);

        let (cin, cout, h, w) = (1 + r[4] % 9, 1 + r[5] % 70, 1 + r[6] % 12, 1 + r[7] % 12);
        let kk = if r[8].is_multiple_of(2) { 1 } else { 3 };
        let (stride, pad) = (1 + r[9] % 2, if kk == 3 { r[10] % 2 } else { 0 });
        if h + 2 * pad >= kk && w + 2 * pad >= kk {
            let (x, xv) = tensor(&[2, cin, h, w], case + 100, dev);
            let (wt, wv) = tensor(&[cout, cin, kk, kk], case + 150, dev);
            let y = x.conv2d(&wt, None, stride, pad).unwrap();
            let (want, _) = conv2d_ref(&xv, &wv, None, [2, cin, h, w], [cout, kk, kk], stride, pad);
            let what = format!("sweep conv2d {cin}→{cout} {h}×{w} k{kk} s{stride} p{pad}");
            assert_normwise(&what, &got(&y), &want, GEMM_TOL);
        }

        let (lq, lk, d) = (1 + r[11] % 80, 1 + r[1] % 40, 1 + r[2] % 70);
        attention_case(
            dev,
            [2, lq, lk, d, d],
            0,
            r[3].is_multiple_of(2) && lq == lk,
            8.0,
            2000 + case,
        );
    }
});

#[test]
fn philox_reference_matches_the_known_answers() {
    // Random123's known-answer vectors for philox4x32-10.
    assert_eq!(
        philox_ref([0; 4], [0; 2]),
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
    );
    assert_eq!(
        philox_ref([u32::MAX; 4], [u32::MAX; 2]),
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
    );
    assert_eq!(
        philox_ref(
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0]
        ),
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
    );
}

/// Seeded noise against the f64 reference of the documented algorithm: |Δ| ≤ 1e-4 + 1e-4·|z|
/// (f32 ln/cos/sin; WGSL allows cos/sin an absolute error of 2⁻¹¹ on [−π, π], which no adapter
/// we test reaches).
const NOISE_TOL: f64 = 1e-4;

on_both_backends!(randn_follows_the_documented_algorithm, |dev| {
    for (len, seed) in [
        (1, 0u64),
        (7, 1),
        (1027, 42),
        (4096, u64::MAX),
        (65_539, 7 << 40),
    ] {
        let z = Tensor::randn(&[len], seed, dev).unwrap();
        assert_elementwise(
            &format!("randn {len} seed {seed}"),
            &got(&z),
            &normal_ref(len, seed),
            NOISE_TOL,
            NOISE_TOL,
        );
    }
    // The shape does not change the stream; the seed does.
    let a = got(&Tensor::randn(&[3, 5, 7], 9, dev).unwrap());
    assert_eq!(a, got(&Tensor::randn(&[105], 9, dev).unwrap()));
    let b = got(&Tensor::randn(&[105], 10, dev).unwrap());
    assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 3);
    // And it is standard normal.
    let n = 200_000;
    let z = got(&Tensor::randn(&[n], 1234, dev).unwrap());
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
        "mean {mean}, variance {var}"
    );
});

#[test]
fn randn_is_the_same_on_both_backends() {
    let (cpu, gpu) = (Device::Cpu, gpu());
    let a = got(&Tensor::randn(&[4, 77, 13], 2026, &cpu).unwrap());
    let b = got(&Tensor::randn(&[4, 77, 13], 2026, &gpu).unwrap());
    assert_elementwise("randn cpu vs wgpu", &b, &a, NOISE_TOL, NOISE_TOL);
}

on_both_backends!(broadcast_to_repeats_leading_and_unit_axes, |dev| {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1, 7], &[2, 3, 5, 7]),
        (&[1], &[4, 3]),
        (&[5], &[5]),
        (&[2, 1, 1], &[2, 3, 65]),
    ];
    for (i, &(from, to)) in cases.iter().enumerate() {
        let (x, xv) = tensor(from, 400 + i as u64, dev);
        let zeros = vec![0.0; to.iter().product()];
        let (want, _) = broadcast_ref(&xv, from, &zeros, to, |a, _| a);
        let y = x.broadcast_to(to).unwrap();
        assert_eq!(y.shape(), to);
        assert_eq!(got(&y), want, "broadcast {from:?} → {to:?}");
    }
    let (x, _) = tensor(&[1, 4], 409, dev);
    assert_eq!(x.broadcast_to(&[0, 4]).unwrap().shape(), &[0, 4]);
    let (x, _) = tensor(&[3, 2], 410, dev);
    for bad in [&[3, 3][..], &[2], &[1, 3, 2, 1]] {
        let e = x.broadcast_to(bad).unwrap_err().to_string();
        assert!(e.contains("broadcast_to") && e.contains("[3, 2]"), "{e}");
    }
});

on_both_backends!(last_axis_sum_mean_max_argmax, |dev| {
    for shape in [
        vec![3, 7],
        vec![2, 5, 300],
        vec![4, 1],
        vec![1, 1000],
        vec![257],
    ] {
        let len = *shape.last().unwrap();
        let (x, xv) = tensor(&shape, 500, dev);
        let mut kept = shape.clone();
        *kept.last_mut().unwrap() = 1;
        let rows: Vec<&[f64]> = xv.chunks(len).collect();
        let sums: Vec<f64> = rows.iter().map(|r| r.iter().sum()).collect();
        let scale: Vec<f64> = rows
            .iter()
            .map(|r| r.iter().map(|v| v.abs()).sum())
            .collect();
        let what = |name: &str| format!("{name} {shape:?}");
        let sum = x.sum_last().unwrap();
        assert_eq!(sum.shape(), &kept[..]);
        for (i, (g, w)) in got(&sum).iter().zip(&sums).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * scale[i] + 1e-6,
                "{}: {g} vs {w}",
                what("sum")
            );
        }
        for (i, g) in got(&x.mean_last().unwrap()).iter().enumerate() {
            let w = sums[i] / len as f64;
            assert!(
                (g - w).abs() <= (1e-6 * scale[i] + 1e-6) / len as f64,
                "{}: {g} vs {w}",
                what("mean")
            );
        }
        let max: Vec<f64> = rows
            .iter()
            .map(|r| r.iter().copied().fold(f64::MIN, f64::max))
            .collect();
        assert_eq!(got(&x.max_last().unwrap()), max, "{}", what("max"));
        let argmax: Vec<f64> = rows
            .iter()
            .zip(&max)
            .map(|(r, m)| r.iter().position(|v| v == m).unwrap() as f64)
            .collect();
        assert_eq!(got(&x.argmax_last().unwrap()), argmax, "{}", what("argmax"));
    }
    // Ties go to the first index, as PyTorch; a row of equal values gives 0.
    let mut v = vec![0.5f32; 600];
    v[300 + 41] = 2.0;
    v[300 + 250] = 2.0;
    v[300 + 299] = 2.0;
    let x = Tensor::from_vec(v, &[2, 300], dev).unwrap();
    assert_eq!(x.argmax_last().unwrap().to_vec().unwrap(), [0.0, 41.0]);
    assert_eq!(x.max_last().unwrap().to_vec().unwrap(), [0.5, 2.0]);
    let e = Tensor::zeros(&[3, 0], dev)
        .unwrap()
        .sum_last()
        .unwrap_err()
        .to_string();
    assert!(e.contains("sum_last"), "{e}");
});

on_both_backends!(timestep_embedding_matches_diffusers_options, |dev| {
    use reimagen::tensor::TimestepEmbedding;
    let t = [0.0f32, 1.0, 10.0, 500.0, 999.0];
    let tt = Tensor::from_vec(t.to_vec(), &[5], dev).unwrap();
    let tv: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    for dim in [64, 33, 320] {
        for (flip, shift) in [(false, 1.0), (true, 0.0), (false, 0.0), (true, 1.0)] {
            let options = TimestepEmbedding {
                max_period: 10_000.0,
                flip_sin_to_cos: flip,
                freq_shift: shift,
            };
            let e = tt.timestep_embedding_with(dim, &options).unwrap();
            assert_eq!(e.shape(), &[5, dim]);
            assert_elementwise(
                &format!("timestep dim {dim} flip {flip} shift {shift}"),
                &got(&e),
                &timestep_ref_with(&tv, dim, 10_000.0, flip, shift as f64),
                2e-3,
                0.0,
            );
        }
    }
    // diffusers' defaults: [sin | cos], shift 1.
    let d = TimestepEmbedding::default();
    assert!(!d.flip_sin_to_cos && d.freq_shift == 1.0 && d.max_period == 10_000.0);
    // A shift that leaves no frequency is refused.
    let options = TimestepEmbedding {
        freq_shift: 1.0,
        ..d
    };
    let e = tt
        .timestep_embedding_with(2, &options)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timestep_embedding") && e.contains("freq_shift"),
        "{e}"
    );
});
