//! [`Tensor`]: an f32 array with a shape, living on one [`Device`]; creation, moves between
//! devices and reading back. The ops are in `ops.rs`.
//!
//! Tensors are immutable and cheap to clone (the storage is shared); every op returns a new
//! tensor. All tensors are contiguous, row-major; `reshape` is free, `permute` copies.

use std::sync::Arc;

use super::device::Device;
use super::error::{Result, TensorError};
use super::wgpu::{GpuBuffer, WgpuDevice};

/// The element type of a tensor's storage. Ops compute in f32 whatever the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum DType {
    /// 32-bit float: every tensor, unless made with [`Tensor::weights_f16`].
    #[default]
    F32,
    /// IEEE half, two per 32-bit word: weights on a wgpu device, read by `linear`, `conv2d`
    /// and `embedding` (half the memory and bandwidth; accumulation stays f32).
    F16,
}

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
    pub(crate) dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?} {:?} on {})",
            self.shape,
            self.dtype,
            self.device().name()
        )
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
            Device::Cpu => Tensor::from_cpu(data, shape.to_vec()),
            Device::Wgpu(d) => {
                let words: &[u32] = bytemuck::cast_slice(&data);
                let buffer = d
                    .ctx
                    .upload("from_vec", &format!("tensor {shape:?}"), words)?;
                Tensor::from_gpu(d, buffer, shape.to_vec())
            }
        })
    }

    /// Weights stored as f16, for [`Tensor::linear`], [`Tensor::conv2d`] and [`Tensor::embedding`]. On a wgpu device
    /// they stay f16 (half the memory and bandwidth; the kernels unpack them and accumulate in
    /// f32). The CPU backend computes in f32, so there they are widened once, here; so are they on
    /// the rare downlevel adapter without `unpack2x16float`.
    ///
    /// # Errors
    /// When `values` does not have `shape`'s size, or it does not fit the adapter.
    pub fn weights_f16(values: &[half::f16], shape: &[usize], device: &Device) -> Result<Tensor> {
        if values.len() != numel(shape) {
            return Err(TensorError::shape(
                "weights_f16",
                format!("{} values cannot have shape {shape:?}", values.len()),
            ));
        }
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(
                values.iter().map(|v| v.to_f32()).collect(),
                shape.to_vec(),
            )),
            Device::Wgpu(d) if !d.ctx.f16_unpack => {
                let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
                Tensor::from_vec(wide, shape, device)
            }
            Device::Wgpu(d) => {
                let words: Vec<u32> = values
                    .chunks(2)
                    .map(|pair| {
                        let lo = pair[0].to_bits() as u32;
                        let hi = pair.get(1).map_or(0, |v| v.to_bits() as u32);
                        lo | (hi << 16)
                    })
                    .collect();
                let buffer =
                    d.ctx
                        .upload("weights_f16", &format!("f16 tensor {shape:?}"), &words)?;
                let mut t = Tensor::from_gpu(d, buffer, shape.to_vec());
                t.dtype = DType::F16;
                Ok(t)
            }
        }
    }

    /// The storage element type.
    pub fn dtype(&self) -> DType {
        self.dtype
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
            dtype: DType::F32,
        }
    }

    pub(crate) fn from_gpu(device: &WgpuDevice, buffer: GpuBuffer, shape: Vec<usize>) -> Tensor {
        Tensor {
            shape,
            storage: Storage::Wgpu(device.clone(), Arc::new(buffer)),
            dtype: DType::F32,
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
            Storage::Wgpu(d, buffer) if self.dtype == DType::F16 => {
                let words = d.ctx.read(buffer, self.numel().div_ceil(2))?;
                Ok(words
                    .iter()
                    .flat_map(|w| [*w as u16, (*w >> 16) as u16])
                    .take(self.numel())
                    .map(|bits| half::f16::from_bits(bits).to_f32())
                    .collect())
            }
            Storage::Wgpu(d, buffer) => {
                Ok(bytemuck::cast_slice(&d.ctx.read(buffer, self.numel())?).to_vec())
            }
        }
    }

    /// The same values on another device (a cheap clone when it is already there), in f32.
    ///
    /// # Errors
    /// A GPU backend error, or the tensor does not fit the target adapter.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if &self.device() == device && self.dtype == DType::F32 {
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
            dtype: self.dtype,
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
