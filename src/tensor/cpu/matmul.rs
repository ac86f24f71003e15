//! CPU matmul / linear through the `gemm` crate: one GEMM per batch, multi-threaded inside.
//! Mirrors `shaders/matmul.wgsl`.

use gemm::Parallelism;

use crate::tensor::plan::MatmulPlan;

/// `dst (m×n, row stride n) = a (m×k) · b`, where b is k×n, or n×k when `trans_b`. With
/// `accumulate`, adds to what `dst` holds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    trans_b: bool,
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rhs_cs, rhs_rs) = if trans_b {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the asserts above keep every index the strides reach inside the three slices,
    // and `dst` is borrowed mutably, so it does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A matrix inside a slice: element (r, c) is `data[r · row + c · col]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

impl Strided<'_> {
    /// Whether an `rows × cols` matrix with these strides stays inside the slice.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row + (cols - 1) * self.col < self.data.len()
    }
}

/// `dst (m×n, row stride dst_row) = scale · a (m×k) · b (k×n)`, both read through their
/// strides (the attention heads of `[B, L, H·D]`, read in place; the scale is the attention's
/// 1/√d, applied by the GEMM instead of a pass over the scores).
pub(crate) fn gemm_strided(
    dst: &mut [f32],
    dst_row: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    [m, n, k]: [usize; 3],
    scale: f32,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_row >= n && (m - 1) * dst_row + n <= dst.len());
    assert!(a.holds(m, k) && b.holds(k, n));
    // SAFETY: the asserts keep every index the strides reach inside the three slices, and
    // `dst` is borrowed mutably, so it does not alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            false,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The parallelism for a GEMM of this size: threads only when there is work for them.
pub(crate) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k >= 1 << 18 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

pub(crate) fn matmul(a: &[f32], b: &[f32], bias: Option<&[f32]>, p: &MatmulPlan) -> Vec<f32> {
    let (m, n, k) = (p.m, p.n, p.k);
    let mut out = vec![0.0f32; p.batch * m * n];
    let inner = parallelism(m, n, k);
    let one = |(batch, dst): (usize, &mut [f32]), par: Parallelism| {
        if let Some(bias) = bias {
            for row in dst.chunks_mut(n) {
                row.copy_from_slice(bias);
            }
        }
        let a = &a[batch * p.a_batch_stride..][..m * k];
        let b = &b[batch * p.b_batch_stride..][..k * n];
        gemm_into(dst, a, b, m, n, k, p.trans_b, bias.is_some(), par);
    };
    let chunks = out.chunks_mut((m * n).max(1)).enumerate().take(p.batch);
    if matches!(inner, Parallelism::None) && p.batch > 1 {
        // Many small products (attention heads): one thread per product instead.
        use rayon::prelude::*;
        chunks
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(|c| one(c, Parallelism::None));
    } else {
        chunks.for_each(|c| one(c, inner));
    }
    out
}
