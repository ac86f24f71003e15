//! The CPU backend: each module mirrors a WGSL kernel of `shaders/` and its host module in
//! `wgpu/`, working on plain slices. GEMMs go through the `gemm` crate (AVX2/AVX-512 picked at
//! run time); everything else is parallel over rows, groups or images with rayon.
//!
//! Not here: shape checks (in `ops.rs`) and the slow f64 references (in the tests).

pub(crate) mod attention;
pub(crate) mod conv2d;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod layout;
pub(crate) mod matmul;
pub(crate) mod norm;
pub(crate) mod random;
pub(crate) mod reduce;
pub(crate) mod resize;
pub(crate) mod softmax;

/// Below this many elements an op runs on one thread: rayon's fork-join costs more.
pub(crate) const PARALLEL_MIN: usize = 1 << 14;
