//! [`Tensor`]: an f32 array with a shape, living on one [`Device`]; creation, moves between
//! devices and reading back. The ops are in `ops.rs`.
//!
//! Tensors are immutable and cheap to clone (the storage is shared); every op returns a new
//! tensor. All tensors are contiguous, row-major; `reshape` is free, `permute` copies.

use std::sync::Arc;

use super::device::Device;
use super::error::{Result, TensorError};
use super::wgpu::{GpuBuffer, WgpuDevice};

#[derive(Clone)]
pub(crate) enum Storage {
    Cpu(Arc<Vec<f32>>),
    Wgpu(WgpuDevice, Arc<GpuBuffer>),
}

/// An f32 tensor on a [`Device`].
///
/// ```
/// use reimagen::tensor::{Device, Tensor};
/// let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2], &Device::Cpu)?;
/// let b = a.matmul(&a)?;
/// assert_eq!(b.to_vec()?, vec![7.0, 10.0, 15.0, 22.0]);
/// # Ok::<(), reimagen::tensor::TensorError>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?} on {})", self.shape, self.device().name())
    }
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor holding `data` (row-major) with `shape`, on `device`.
    ///
    /// # Errors
    /// When `data` does not have `shape`'s number of elements, or it does not fit the adapter.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return Err(TensorError::shape(
                "from_vec",
                format!("{} values cannot have shape {shape:?}", data.len()),
            ));
        }
        Ok(match device {
            Device::Cpu => Tensor {
                shape: shape.to_vec(),
                storage: Storage::Cpu(Arc::new(data)),
            },
            Device::Wgpu(d) => {
                let words: &[u32] = bytemuck::cast_slice(&data);
                let buffer = d
                    .ctx
                    .upload("from_vec", &format!("tensor {shape:?}"), words)?;
                Tensor {
                    shape: shape.to_vec(),
                    storage: Storage::Wgpu(d.clone(), Arc::new(buffer)),
                }
            }
        })
    }

    /// A tensor of zeros.
    ///
    /// # Errors
    /// When it does not fit the adapter.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![0.0; numel(shape)], shape, device)
    }

    pub(crate) fn from_cpu(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(data.len(), numel(&shape));
        Tensor {
            shape,
            storage: Storage::Cpu(Arc::new(data)),
        }
    }

    pub(crate) fn from_gpu(device: &WgpuDevice, buffer: GpuBuffer, shape: Vec<usize>) -> Tensor {
        Tensor {
            shape,
            storage: Storage::Wgpu(device.clone(), Arc::new(buffer)),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Wgpu(d, _) => Device::Wgpu(d.clone()),
        }
    }

    /// The values, row-major (waits for the GPU when the tensor lives there).
    ///
    /// # Errors
    /// A GPU backend error.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(data) => Ok(data.as_ref().clone()),
            Storage::Wgpu(d, buffer) => d.ctx.read(buffer, self.numel()),
        }
    }

    /// The same values on another device (a cheap clone when it is already there).
    ///
    /// # Errors
    /// A GPU backend error, or the tensor does not fit the target adapter.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if &self.device() == device {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_vec()?, &self.shape, device)
    }

    /// The same values with another shape of the same size (no copy).
    ///
    /// # Errors
    /// When the sizes differ.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(TensorError::shape(
                "reshape",
                format!("cannot reshape {:?} into {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    pub(crate) fn cpu_data(&self) -> &[f32] {
        match &self.storage {
            Storage::Cpu(data) => data,
            Storage::Wgpu(..) => unreachable!("checked by `backend`"),
        }
    }

    pub(crate) fn gpu_buffer(&self) -> &GpuBuffer {
        match &self.storage {
            Storage::Wgpu(_, b) => b,
            Storage::Cpu(_) => unreachable!("checked by `backend`"),
        }
    }
}
