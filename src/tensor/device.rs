//! [`Device`]: where tensors live and ops run — the CPU backend or a wgpu adapter — and how one
//! is chosen (by API, or by `REIMAGEN_DEVICE=cpu|gpu|auto`).
//!
//! `auto` takes a hardware GPU when wgpu finds one and the CPU backend otherwise: a CPU-type
//! adapter such as lavapipe runs WGSL at a few GFLOP/s, far below the CPU backend, so it is used
//! only when asked for (`gpu`).

use std::str::FromStr;

use super::error::{Result, TensorError};
use super::wgpu::WgpuDevice;

/// The environment variable read by [`Device::from_env`].
pub const DEVICE_ENV: &str = "REIMAGEN_DEVICE";

/// Where tensors live and ops run. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Device {
    /// The CPU backend: a fast GEMM and rayon.
    #[default]
    Cpu,
    /// A wgpu adapter (Vulkan, Metal, DX12 or GL) running the WGSL kernels of `shaders/`.
    Wgpu(WgpuDevice),
}

/// A device preference, as given to `--device` or `REIMAGEN_DEVICE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU backend.
    Cpu,
    /// The best wgpu adapter of any type, lavapipe included; an error when there is none.
    Gpu,
    /// A hardware GPU when there is one, else the CPU backend.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = TensorError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" | "wgpu" => Ok(DeviceChoice::Gpu),
            "auto" | "" => Ok(DeviceChoice::Auto),
            _ => Err(TensorError::UnknownDevice {
                value: s.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
            DeviceChoice::Auto => "auto",
        })
    }
}

impl Device {
    /// The best wgpu adapter of any type (lavapipe included).
    ///
    /// # Errors
    /// [`TensorError::NoAdapter`] when wgpu finds none; the message says how to install one.
    pub fn gpu() -> Result<Device> {
        WgpuDevice::best().map(Device::Wgpu)
    }

    /// A hardware GPU when wgpu finds one (and it opens), else the CPU backend.
    pub fn auto() -> Device {
        match WgpuDevice::best_hardware() {
            Some(Ok(device)) => Device::Wgpu(device),
            Some(Err(e)) => {
                tracing::warn!("GPU adapter found but unusable, using the CPU backend: {e}");
                Device::Cpu
            }
            None => Device::Cpu,
        }
    }

    /// The device for a preference.
    ///
    /// # Errors
    /// For [`DeviceChoice::Gpu`], when no adapter exists or it refuses a device.
    pub fn from_choice(choice: DeviceChoice) -> Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Gpu => Device::gpu(),
            DeviceChoice::Auto => Ok(Device::auto()),
        }
    }

    /// The device named by `REIMAGEN_DEVICE` (`cpu`, `gpu` or `auto`); `auto` when unset.
    ///
    /// ```
    /// use reimagen::tensor::{Device, DeviceChoice};
    /// let choice: DeviceChoice = "cpu".parse()?;
    /// assert_eq!(Device::from_choice(choice)?, Device::Cpu);
    /// # Ok::<(), reimagen::tensor::TensorError>(())
    /// ```
    ///
    /// # Errors
    /// An unknown value, or `gpu` without an adapter.
    pub fn from_env() -> Result<Device> {
        let choice = match std::env::var(DEVICE_ENV) {
            Ok(v) => v.parse()?,
            Err(_) => DeviceChoice::Auto,
        };
        Device::from_choice(choice)
    }

    /// A short human name: `cpu`, or the adapter name and backend.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Wgpu(d) => {
                let a = d.adapter();
                format!("{} ({}, {})", a.name, a.backend, a.device_type)
            }
        }
    }

    /// Waits until all work queued on the device is done (a no-op on the CPU).
    ///
    /// # Errors
    /// A GPU backend error reported meanwhile.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Wgpu(d) => d.synchronize(),
        }
    }
}
