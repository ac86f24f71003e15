//! `reimagen bench kernels`.
