//! The tensor runtime: [`Tensor`] and its ops, run on a [`Device`] — the CPU backend (`cpu/`:
//! a fast GEMM and rayon) or any GPU that wgpu finds, through the WGSL kernels of `shaders/`
//! (`wgpu/`). Models (CLIP, the Re-Imagen UNet) are written once against these ops.
//!
//! Every op is a triple: a WGSL kernel, its host module in `wgpu/`, and a CPU implementation in
//! `cpu/`, checked against plain f64 references in `tests/tensor_ops.rs`.
//!
//! ```
//! use reimagen::tensor::{Device, Tensor};
//! let device = Device::Cpu; // or Device::from_env()?, Device::gpu()?
//! let x = Tensor::from_vec((0..8).map(|i| i as f32).collect(), &[2, 4], &device)?;
//! let w = Tensor::from_vec(vec![0.5; 12], &[3, 4], &device)?;
//! let y = x.linear(&w, None)?.silu()?;
//! assert_eq!(y.shape(), &[2, 3]);
//! # Ok::<(), reimagen::tensor::TensorError>(())
//! ```
//!
//! Models are written with the layer kit of [`nn`] over a [`Weights`] view of their checkpoint;
//! see there.
//!
//! Not here: model code, tokenisers, anything about the knowledge base.

pub mod bench;
mod cpu;
mod device;
pub mod doctor;
mod error;
pub mod nn;
mod ops;
mod plan;
#[allow(clippy::module_inception)]
mod tensor;
mod weights;
mod wgpu;

pub use device::{DEVICE_ENV, Device, DeviceChoice};
pub use error::{Result, TensorError};
pub use plan::TimestepEmbedding;
pub use tensor::{DType, Tensor};
pub use weights::{Weights, WeightsDtype};
pub use wgpu::{
    AdapterSummary, ParamsLayout, PoolStats, SHADERS, Shader, WgpuDevice, quiet_headless_vulkan,
};
