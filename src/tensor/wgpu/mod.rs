//! The WGSL backend: one wgpu device per [`WgpuDevice`], with a pipeline cache, a buffer pool and
//! batched submission. The kernels themselves live in `shaders/*.wgsl`; each has a host module
//! here (`matmul`, `conv2d`, …) that checks limits, packs the kernel's parameters and dispatches.
//!
//! Not here: shape checking (done once for both backends in `ops.rs`) and the CPU backend.
//!
//! Conventions every shader follows, so that one `dispatch` serves all of them: storage buffers
//! are bindings `0..n` of group 0 in the order the host passes them, and the kernel's parameters
//! are a uniform at binding `n`, written from a `#[repr(C)]` Rust mirror of the WGSL struct
//! (`wgsl_params!`; `tests/tensor_runtime.rs` checks every mirror's field names and size
//! against the shader with naga). Linear kernels run 256 invocations per workgroup and fold a 2D
//! grid back into a linear workgroup index so that they are not capped at 65 535 workgroups.

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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::error::{Result, TensorError};

/// A WGSL source file of `shaders/`, compiled at most once per device.
#[derive(Debug, Clone, Copy)]
pub struct Shader {
    /// File name under `shaders/`, e.g. `"matmul.wgsl"`.
    pub name: &'static str,
    /// The WGSL source.
    pub source: &'static str,
    /// The uniform parameter structs of its entry points, as the host writes them.
    pub params: &'static [ParamsLayout],
}

/// The layout of a Rust mirror of a WGSL parameter struct: what the naga test compares with
/// the shader, so that host and kernel agree field by field, not by word position.
#[derive(Debug, Clone, Copy)]
pub struct ParamsLayout {
    /// The struct's name in the shader, e.g. `"Params"`.
    pub wgsl_struct: &'static str,
    /// Its fields, in order.
    pub fields: &'static [&'static str],
    /// `size_of` the Rust mirror, in bytes.
    pub size: usize,
}

/// A `#[repr(C)]` mirror of a WGSL parameter struct (u32, f32 and `[[u32; 4]; N]` fields, no
/// implicit padding), written to the uniform buffer as its bytes.
pub(crate) trait Params: bytemuck::Pod {
    /// For the naga test.
    const LAYOUT: ParamsLayout;
}

/// Declares the Rust mirror of a WGSL parameter struct, with its [`ParamsLayout`].
macro_rules! wgsl_params {
    ($(#[$doc:meta])* $name:ident = $wgsl:literal { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        // Read by the kernel, not by Rust.
        #[allow(dead_code)]
        pub(crate) struct $name {
            $(pub(crate) $field: $ty),*
        }
        impl $crate::tensor::wgpu::Params for $name {
            const LAYOUT: $crate::tensor::wgpu::ParamsLayout = $crate::tensor::wgpu::ParamsLayout {
                wgsl_struct: $wgsl,
                fields: &[$(stringify!($field)),*],
                size: std::mem::size_of::<$name>(),
            };
        }
    };
}
pub(crate) use wgsl_params;

/// Every shader the runtime uses, in the order of `shaders/`.
pub const SHADERS: &[Shader] = &[
    attention::SHADER,
    conv2d::SHADER,
    elementwise::SHADER,
    embedding::SHADER,
    layout::SHADER,
    matmul::SHADER,
    norm::SHADER,
    random::SHADER,
    reduce::SHADER,
    resize::SHADER,
    softmax::SHADER,
];

/// Dispatches queued before the batch is submitted on its own.
const MAX_DISPATCHES_PER_SUBMIT: usize = 64;
/// Size of every parameter uniform (the largest kernel's parameters fit).
const PARAMS_BYTES: u64 = 256;
/// Invocations per workgroup of the linear (one thread per element or row) kernels.
pub(crate) const LINEAR_WORKGROUP: u32 = 256;

/// A handle on one wgpu adapter and device. Cheap to clone; clones share the device, its
/// pipeline cache and its buffer pool.
#[derive(Clone)]
pub struct WgpuDevice {
    pub(crate) ctx: Arc<GpuContext>,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuDevice({})", self.ctx.info.name)
    }
}

impl PartialEq for WgpuDevice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ctx, &other.ctx)
    }
}

/// Counters of the buffer pool, to check that steady state allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// wgpu buffers created so far (storage, uniform and staging).
    pub buffers_created: u64,
    /// Buffer requests served from the pool.
    pub reused: u64,
    /// Buffers resting in the pool now.
    pub idle: u64,
    /// Compute pipelines compiled so far.
    pub pipelines_compiled: u64,
    /// Command buffers submitted so far.
    pub submits: u64,
    /// Dispatches recorded so far.
    pub dispatches: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum BufferKind {
    Storage,
    Uniform,
    Staging,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<(BufferKind, u64), Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// Commands recorded but not yet submitted, and buffers freed meanwhile: those go back to the
/// pool only after the submit, because a `queue.write_buffer` into a reused buffer would land
/// before the recorded commands that still read the old contents.
#[derive(Default)]
struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    quarantine: Vec<(BufferKind, u64, wgpu::Buffer)>,
}

pub(crate) struct GpuContext {
    /// Whether WGSL's `unpack2x16float` is available (not on some downlevel GL adapters); without
    /// it f16 weights are widened to f32 on upload.
    pub(crate) f16_unpack: bool,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) features: wgpu::Features,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
    pool: Mutex<Pool>,
    batch: Mutex<Batch>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// A pooled storage buffer holding one tensor's f32 values.
pub(crate) struct GpuBuffer {
    ctx: Arc<GpuContext>,
    buffer: Option<wgpu::Buffer>,
    class: u64,
    /// Bytes in use (4 × elements; at least 4).
    pub(crate) bytes: u64,
}

impl GpuBuffer {
    pub(crate) fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.raw(),
            offset: 0,
            size: wgpu::BufferSize::new(self.bytes),
        })
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.ctx.release(BufferKind::Storage, self.class, buffer);
        }
    }
}

/// Rounds a size up to a pool class: multiples of 256 bytes up to 4 KiB, then eight classes per
/// doubling (at most 12.5 % waste).
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let step = bytes.next_power_of_two() / 16;
    bytes.div_ceil(step) * step
}

/// Summary of an adapter, as `doctor` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits)"`.
    pub name: String,
    /// Vulkan, Metal, Dx12, Gl.
    pub backend: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu or Other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether WGSL `f16` is available (`SHADER_F16`).
    pub shader_f16: bool,
    /// Whether subgroup operations are available (`SUBGROUP`).
    pub subgroups: bool,
    /// Whether cooperative matrices (tensor cores) are exposed
    /// (`EXPERIMENTAL_COOPERATIVE_MATRIX`). Not used by the kernels yet.
    pub cooperative_matrix: bool,
    /// `max_storage_buffer_binding_size` in bytes (`max_storage_buffer_binding_size_bytes` in JSON).
    #[serde(rename = "max_storage_buffer_binding_size_bytes")]
    pub max_storage_buffer_binding_size: u64,
    /// `max_buffer_size` in bytes (`max_buffer_size_bytes` in JSON).
    #[serde(rename = "max_buffer_size_bytes")]
    pub max_buffer_size: u64,
    /// `max_compute_workgroup_storage_size` in bytes (`max_compute_workgroup_storage_size_bytes` in JSON).
    #[serde(rename = "max_compute_workgroup_storage_size_bytes")]
    pub max_compute_workgroup_storage_size: u32,
    /// `max_compute_invocations_per_workgroup`.
    pub max_compute_invocations_per_workgroup: u32,
    /// `max_compute_workgroups_per_dimension`.
    pub max_compute_workgroups_per_dimension: u32,
    /// Why the kernels cannot run on this adapter (no compute shaders, limits too small), if so.
    pub unusable: Option<String>,
}

impl AdapterSummary {
    pub(crate) fn new(
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        limits: &wgpu::Limits,
    ) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            cooperative_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            unusable: None,
        }
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // WGPU_BACKEND and friends still override.
    wgpu::Instance::new(desc.with_env())
}

/// Turns off Mesa's Vulkan device-select layer when there is no Wayland session, so that
/// opening a device on a headless machine does not print `error: XDG_RUNTIME_DIR is invalid or
/// not set in the environment.` (twice per adapter listing).
///
/// The layer is an implicit Vulkan layer that Mesa installs; when the instance enables
/// `VK_KHR_wayland_surface` (wgpu always asks for it) it connects to the Wayland display to find
/// the compositor's GPU, and libwayland prints that line when there is none. It only reorders
/// adapters, which [`WgpuDevice::best`] sorts itself, so setting its documented off switch
/// (`NODEVICE_SELECT=1`) changes nothing else. Nothing happens when a Wayland display is set,
/// or when the user set `NODEVICE_SELECT` or picks a device with `MESA_VK_DEVICE_SELECT`.
///
/// # Safety
/// It sets an environment variable: call it before any other thread runs (first thing in
/// `main`), as [`std::env::set_var`] requires.
pub unsafe fn quiet_headless_vulkan() {
    let set = |name: &str| std::env::var_os(name).is_some();
    if set("WAYLAND_DISPLAY")
        || set("WAYLAND_SOCKET")
        || set("NODEVICE_SELECT")
        || set("MESA_VK_DEVICE_SELECT")
    {
        return;
    }
    // SAFETY: the caller promises that no other thread exists yet.
    unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
}

/// All adapters wgpu finds, best first (those the kernels can run on before the rest; then
/// discrete, integrated, virtual, other, CPU).
pub(crate) fn adapters() -> Vec<wgpu::Adapter> {
    // Vulkan, Metal and DX12 first; GL only when none of those has an adapter (initialising EGL
    // prints warnings on headless machines and GL adapters are the least capable).
    let mut adapters = pollster::block_on(
        instance(wgpu::Backends::PRIMARY).enumerate_adapters(wgpu::Backends::all()),
    );
    if adapters.is_empty() {
        adapters = pollster::block_on(
            instance(wgpu::Backends::GL).enumerate_adapters(wgpu::Backends::all()),
        );
    }
    adapters.sort_by_key(|a| (unfit(a).is_some(), rank(a.get_info().device_type)));
    adapters
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// What the kernels need: compute shaders, 256 invocations and 16 KiB of workgroup memory per
/// workgroup (WebGPU's defaults; some downlevel GL adapters have less). `None` when it fits.
pub(crate) fn unfit(adapter: &wgpu::Adapter) -> Option<String> {
    let limits = adapter.limits();
    let compute = adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS);
    if !compute {
        return Some("no compute shaders".to_string());
    }
    if limits.max_compute_invocations_per_workgroup < LINEAR_WORKGROUP
        || limits.max_compute_workgroup_size_x < LINEAR_WORKGROUP
        || limits.max_compute_workgroup_storage_size < 16 * 1024
    {
        return Some(format!(
            "compute limits too small: {} invocations/workgroup, {} bytes of workgroup memory \
             (the kernels need {LINEAR_WORKGROUP} and 16384)",
            limits.max_compute_invocations_per_workgroup, limits.max_compute_workgroup_storage_size
        ));
    }
    None
}

/// Whether an adapter runs on a real GPU (not a CPU rasteriser such as lavapipe).
pub(crate) fn is_hardware(t: wgpu::DeviceType) -> bool {
    rank(t) < 4
}

impl WgpuDevice {
    /// Opens the best adapter wgpu finds, of any type (lavapipe included).
    ///
    /// # Errors
    /// [`TensorError::NoAdapter`] when wgpu finds none, with how to install one.
    pub fn best() -> Result<Self> {
        let adapter = adapters()
            .into_iter()
            .next()
            .ok_or(TensorError::NoAdapter)?;
        Self::open(adapter)
    }

    /// Opens the best adapter that is a real GPU, if there is one.
    pub fn best_hardware() -> Option<Result<Self>> {
        let adapter = adapters()
            .into_iter()
            .find(|a| is_hardware(a.get_info().device_type) && unfit(a).is_none())?;
        Some(Self::open(adapter))
    }

    pub(crate) fn open(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        if let Some(reason) = unfit(&adapter) {
            return Err(TensorError::RequestDevice {
                adapter: info.name,
                reason,
            });
        }
        let f16_unpack = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        let features = adapter.features() & wgpu::Features::SHADER_F16;
        let desc = wgpu::DeviceDescriptor {
            label: Some("reimagen tensor runtime"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            TensorError::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        // The default handler panics; keep the message and report it from the op instead.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().expect("error sink").push(e.to_string());
        }));
        let limits = device.limits();
        Ok(WgpuDevice {
            ctx: Arc::new(GpuContext {
                f16_unpack,
                device,
                queue,
                info,
                limits,
                features,
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                pool: Mutex::default(),
                batch: Mutex::default(),
                errors,
            }),
        })
    }

    /// The adapter behind this device.
    pub fn adapter(&self) -> AdapterSummary {
        AdapterSummary::new(&self.ctx.info, self.ctx.features, &self.ctx.limits)
    }

    /// Counters of the buffer pool and pipeline cache.
    pub fn pool_stats(&self) -> PoolStats {
        let mut stats = self.ctx.pool.lock().expect("pool").stats;
        stats.idle = self
            .ctx
            .pool
            .lock()
            .expect("pool")
            .idle
            .values()
            .map(|v| v.len() as u64)
            .sum();
        stats
    }

    /// Submits everything recorded and waits for the GPU to finish it.
    ///
    /// # Errors
    /// [`TensorError::Backend`] if the driver reported an error meanwhile.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.flush()?;
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| TensorError::Backend {
                op: "synchronize",
                reason: e.to_string(),
            })?;
        self.ctx.take_error("synchronize")
    }
}

impl GpuContext {
    fn take_error(&self, op: &'static str) -> Result<()> {
        let mut errors = self.errors.lock().expect("error sink");
        if errors.is_empty() {
            Ok(())
        } else {
            let reason = errors.join("; ");
            errors.clear();
            Err(TensorError::Backend { op, reason })
        }
    }

    fn acquire(&self, kind: BufferKind, class: u64) -> Result<wgpu::Buffer> {
        let mut pool = self.pool.lock().expect("pool");
        if let Some(buffer) = pool.idle.get_mut(&(kind, class)).and_then(Vec::pop) {
            pool.stats.reused += 1;
            return Ok(buffer);
        }
        pool.stats.buffers_created += 1;
        drop(pool);
        let usage = match kind {
            BufferKind::Storage => {
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST
            }
            BufferKind::Uniform => wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            BufferKind::Staging => wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Ok(buffer),
            Some(e) => Err(TensorError::Backend {
                op: "alloc",
                reason: format!("{class} bytes: {e}"),
            }),
        }
    }

    fn release(&self, kind: BufferKind, class: u64, buffer: wgpu::Buffer) {
        let mut batch = self.batch.lock().expect("batch");
        if batch.encoder.is_some() {
            batch.quarantine.push((kind, class, buffer));
            return;
        }
        drop(batch);
        let mut pool = self.pool.lock().expect("pool");
        pool.idle.entry((kind, class)).or_default().push(buffer);
    }

    /// Checks that `elements` f32 values fit one storage binding of this adapter.
    pub(crate) fn check_fits(&self, op: &'static str, what: &str, elements: usize) -> Result<u64> {
        // The kernels index with u32; refuse before asking the driver for such a buffer.
        word(op, what, elements)?;
        let bytes = (elements as u64).max(1) * 4;
        let limit = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if size_class(bytes) > limit {
            return Err(TensorError::TooLarge {
                op,
                what: what.to_string(),
                needed: bytes,
                limit,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(bytes)
    }

    /// A storage buffer for `elements` f32 values, from the pool when one of its class is idle.
    pub(crate) fn alloc(
        self: &Arc<Self>,
        op: &'static str,
        what: &str,
        elements: usize,
    ) -> Result<GpuBuffer> {
        let bytes = self.check_fits(op, what, elements)?;
        let class = size_class(bytes);
        let buffer = self.acquire(BufferKind::Storage, class)?;
        Ok(GpuBuffer {
            ctx: self.clone(),
            buffer: Some(buffer),
            class,
            bytes,
        })
    }

    /// A storage buffer holding `data` (f32 or u32 words).
    pub(crate) fn upload(
        self: &Arc<Self>,
        op: &'static str,
        what: &str,
        data: &[u32],
    ) -> Result<GpuBuffer> {
        let buffer = self.alloc(op, what, data.len())?;
        if !data.is_empty() {
            self.queue
                .write_buffer(buffer.raw(), 0, bytemuck::cast_slice(data));
        }
        Ok(buffer)
    }

    /// The pipeline of `entry` in `shader`, compiled on first use. Compilation errors are caught
    /// in an error scope and returned, not left to wgpu's panicking default handler.
    fn pipeline(
        &self,
        op: &'static str,
        shader: &Shader,
        entry: &'static str,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (shader.name, entry);
        if let Some(p) = self.pipelines.lock().expect("pipelines").get(&key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut modules = self.modules.lock().expect("modules");
        let module = modules.entry(shader.name).or_insert_with(|| {
            self.device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                })
        });
        let pipeline = Arc::new(self.device.create_compute_pipeline(
            &wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            },
        ));
        drop(modules);
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.modules.lock().expect("modules").remove(shader.name);
            return Err(TensorError::Backend {
                op,
                reason: format!("{} entry point {entry}: {e}", shader.name),
            });
        }
        self.pool.lock().expect("pool").stats.pipelines_compiled += 1;
        self.pipelines
            .lock()
            .expect("pipelines")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch of `entry` in `shader`: storage `buffers` at bindings `0..n`,
    /// `params` (the mirror of the entry point's WGSL struct) as a uniform at binding `n`.
    /// Submits when the batch is full.
    pub(crate) fn dispatch<P: Params>(
        &self,
        op: &'static str,
        shader: &Shader,
        entry: &'static str,
        buffers: &[&GpuBuffer],
        params: &P,
        grid: [u32; 3],
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if let Some(&g) = grid.iter().find(|&&g| g > max) {
            return Err(TensorError::TooLarge {
                op,
                what: format!("dispatch grid {grid:?}"),
                needed: g as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        if grid.contains(&0) {
            return Ok(());
        }
        const { assert!(std::mem::size_of::<P>() <= PARAMS_BYTES as usize) };
        let mut bytes = [0u8; PARAMS_BYTES as usize];
        bytes[..std::mem::size_of::<P>()].copy_from_slice(bytemuck::bytes_of(params));
        let uniform = self.acquire(BufferKind::Uniform, PARAMS_BYTES)?;
        self.queue.write_buffer(&uniform, 0, &bytes);

        let pipeline = self.pipeline(op, shader, entry)?;
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.binding(),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: buffers.len() as u32,
            resource: uniform.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &layout,
            entries: &entries,
        });

        let mut batch = self.batch.lock().expect("batch");
        let encoder = batch.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        }
        batch.dispatches += 1;
        batch
            .quarantine
            .push((BufferKind::Uniform, PARAMS_BYTES, uniform));
        let full = batch.dispatches >= MAX_DISPATCHES_PER_SUBMIT;
        drop(batch);
        self.pool.lock().expect("pool").stats.dispatches += 1;
        if full {
            self.flush()?;
        }
        self.take_error(op)
    }

    /// Submits the recorded commands and hands quarantined buffers back to the pool.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut batch = self.batch.lock().expect("batch");
        let Some(encoder) = batch.encoder.take() else {
            return Ok(());
        };
        self.queue.submit(Some(encoder.finish()));
        batch.dispatches = 0;
        let quarantine = std::mem::take(&mut batch.quarantine);
        drop(batch);
        let mut pool = self.pool.lock().expect("pool");
        pool.stats.submits += 1;
        for (kind, class, buffer) in quarantine {
            pool.idle.entry((kind, class)).or_default().push(buffer);
        }
        drop(pool);
        self.take_error("submit")
    }

    /// Copies `elements` 32-bit words of a buffer back to the host (submits everything
    /// recorded first).
    pub(crate) fn read(&self, buffer: &GpuBuffer, elements: usize) -> Result<Vec<u32>> {
        if elements == 0 {
            return Ok(Vec::new());
        }
        let bytes = elements as u64 * 4;
        let class = size_class(bytes);
        let staging = self.acquire(BufferKind::Staging, class)?;
        {
            let mut batch = self.batch.lock().expect("batch");
            let encoder = batch.encoder.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
            });
            encoder.copy_buffer_to_buffer(buffer.raw(), 0, &staging, 0, bytes);
        }
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| TensorError::Backend {
                op: "readback",
                reason: e.to_string(),
            })?;
        let mapped = rx.recv().map_err(|e| TensorError::Backend {
            op: "readback",
            reason: e.to_string(),
        })?;
        mapped.map_err(|e| TensorError::Backend {
            op: "readback",
            reason: e.to_string(),
        })?;
        let out =
            {
                let view = staging.slice(..bytes).get_mapped_range().map_err(|e| {
                    TensorError::Backend {
                        op: "readback",
                        reason: e.to_string(),
                    }
                })?;
                bytemuck::cast_slice::<u8, u32>(&view).to_vec()
            };
        staging.unmap();
        self.release(BufferKind::Staging, class, staging);
        self.take_error("readback")?;
        Ok(out)
    }

    /// A linear grid of `workgroups` workgroups, folded into x and y so that neither passes the
    /// per-dimension limit. Kernels rebuild the index as `wid.x + wid.y * nwg.x`.
    pub(crate) fn linear_grid(&self, op: &'static str, workgroups: u64) -> Result<[u32; 3]> {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        let x = workgroups.min(max).max(1);
        let y = workgroups.div_ceil(x);
        if y > max {
            return Err(TensorError::TooLarge {
                op,
                what: format!("{workgroups} workgroups"),
                needed: workgroups,
                limit: max * max,
                limit_name: "max_compute_workgroups_per_dimension (squared)",
            });
        }
        Ok([x as u32, y as u32, 1])
    }

    /// The grid for one invocation per element, 256 per workgroup.
    pub(crate) fn elementwise_grid(&self, op: &'static str, elements: usize) -> Result<[u32; 3]> {
        self.linear_grid(op, (elements as u64).div_ceil(LINEAR_WORKGROUP as u64))
    }
}

/// A `u32` parameter from a size, or a clear error when it does not fit.
pub(crate) fn word(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| TensorError::TooLarge {
        op,
        what: what.to_string(),
        needed: n as u64,
        limit: u32::MAX as u64,
        limit_name: "u32 indices in WGSL",
    })
}
