//! `TensorError`, the one error type of the tensor runtime.
//!
//! User mistakes (a shape that does not fit an op, a bad weights file, a tensor too large for the
//! adapter) are kept apart from backend failures (the GPU driver reported an error). Every message
//! names the op, tensor or file it is about. Conversion into the crate error lives outside this
//! module.

use std::path::PathBuf;

/// What went wrong in the tensor runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// The shapes given to an op do not fit together.
    #[error("{op}: {reason}")]
    Shape {
        /// The op, e.g. `"matmul"`.
        op: &'static str,
        /// What does not fit, naming the tensors.
        reason: String,
    },
    /// An op was given an f16 tensor where it reads only f32 (f16 is for `linear`, `conv2d` and `embedding`
    /// weights).
    #[error(
        "{op}: {what} is f16; only the weights of linear, conv2d and embedding may be f16 (widen it with `to_device`)"
    )]
    Dtype {
        /// The op.
        op: &'static str,
        /// The tensor, e.g. `"input [2, 3]"`.
        what: String,
    },
    /// The tensors given to an op live on different devices.
    #[error(
        "{op}: tensors live on different devices ({left} and {right}); move one with `to_device`"
    )]
    DeviceMismatch {
        /// The op.
        op: &'static str,
        /// Device of the first tensor.
        left: String,
        /// Device of the other tensor.
        right: String,
    },
    /// A tensor or a dispatch does not fit the adapter's limits.
    #[error("{op}: {what} needs {needed} but the adapter allows at most {limit} ({limit_name})")]
    TooLarge {
        /// The op.
        op: &'static str,
        /// The tensor or grid, e.g. `"output [4096, 4096]"`.
        what: String,
        /// What it needs (bytes or workgroups).
        needed: u64,
        /// The adapter's limit.
        limit: u64,
        /// The name of the wgpu limit, e.g. `max_storage_buffer_binding_size`.
        limit_name: &'static str,
    },
    /// No GPU adapter was found when one was required.
    #[error(
        "no GPU adapter found by wgpu (Vulkan, Metal, DX12, GL). On Debian/Ubuntu install a Vulkan \
         driver, e.g. `apt-get install -y mesa-vulkan-drivers libvulkan1` (lavapipe runs on the CPU), \
         or choose the CPU backend with REIMAGEN_DEVICE=cpu"
    )]
    NoAdapter,
    /// The adapter refused to give a device.
    #[error("adapter {adapter}: could not create a device: {reason}")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },
    /// `REIMAGEN_DEVICE` or a `--device` flag holds an unknown value.
    #[error("unknown device {value:?}: expected cpu, gpu or auto")]
    UnknownDevice {
        /// The value given.
        value: String,
    },
    /// The GPU backend reported an error while running an op.
    #[error("GPU backend error during {op}: {reason}")]
    Backend {
        /// The op (or `"readback"`, `"submit"`).
        op: &'static str,
        /// The driver's or wgpu's message.
        reason: String,
    },
    /// A weights file could not be read.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A weights file is malformed or holds something this runtime does not read.
    #[error("{}: {reason}", path.display())]
    Weights {
        /// The file.
        path: PathBuf,
        /// Why, naming the tensor where there is one.
        reason: String,
    },
    /// A checkpoint's tensor does not have the shape the model's config implies.
    #[error("tensor {name:?} in {} has shape {found:?}, expected {expected:?}", path.display())]
    WeightShape {
        /// The full tensor name, prefix included.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A tensor name was asked for that the weights do not hold.
    #[error("tensor {name:?} is not in {}", path.display())]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The weights file or index.
        path: PathBuf,
    },
}

impl TensorError {
    pub(crate) fn shape(op: &'static str, reason: impl Into<String>) -> Self {
        TensorError::Shape {
            op,
            reason: reason.into(),
        }
    }
}

/// Result alias of the tensor runtime.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;
