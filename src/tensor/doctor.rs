//! `reimagen doctor`: what the tensor runtime can run on here — the adapters wgpu finds (name,
//! backend, type, f16, subgroups, limits), the CPU backend's threads, and the device `auto`
//! (and `REIMAGEN_DEVICE`) picks. [`report`] gathers it; the CLI prints it as text or JSON.

use super::device::{DEVICE_ENV, DeviceChoice};
use super::wgpu::{AdapterSummary, adapters, is_hardware, unfit};

/// What `reimagen doctor` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DoctorReport {
    /// Every adapter wgpu finds, best first.
    pub adapters: Vec<AdapterSummary>,
    /// Threads the CPU backend uses (rayon).
    pub cpu_threads: usize,
    /// The value of `REIMAGEN_DEVICE`, if set.
    pub env_device: Option<String>,
    /// What `auto` picks: `"cpu"`, or the adapter's name.
    pub auto_picks: String,
    /// What `REIMAGEN_DEVICE` (or `auto` when unset) picks, or why it cannot.
    pub env_picks: String,
    /// Advice when something is missing (e.g. no Vulkan driver).
    pub hints: Vec<String>,
}

/// Looks at the adapters and the environment. Opens no device.
///
/// ```
/// let report = reimagen::tensor::doctor::report();
/// println!("{report}"); // or serde_json::to_string(&report)
/// assert!(report.cpu_threads >= 1);
/// ```
pub fn report() -> DoctorReport {
    let found = adapters();
    let summaries: Vec<AdapterSummary> = found
        .iter()
        .map(|a| AdapterSummary {
            unusable: unfit(a),
            ..AdapterSummary::new(&a.get_info(), a.features(), &a.limits())
        })
        .collect();
    let auto_picks = found
        .iter()
        .find(|a| is_hardware(a.get_info().device_type) && unfit(a).is_none())
        .map_or_else(|| "cpu".to_string(), |a| a.get_info().name);
    let env_device = std::env::var(DEVICE_ENV).ok();
    let env_picks = match env_device.as_deref().map(str::parse::<DeviceChoice>) {
        None | Some(Ok(DeviceChoice::Auto)) => auto_picks.clone(),
        Some(Ok(DeviceChoice::Cpu)) => "cpu".to_string(),
        Some(Ok(DeviceChoice::Gpu)) => match summaries.first() {
            Some(a) => a.name.clone(),
            None => format!("error: {}", super::TensorError::NoAdapter),
        },
        Some(Err(e)) => format!("error: {e}"),
    };
    let mut hints = Vec::new();
    if summaries.is_empty() {
        hints.push(format!("{}", super::TensorError::NoAdapter));
    } else if auto_picks == "cpu" {
        hints.push(
            "only CPU-type adapters (e.g. lavapipe): `auto` uses the CPU backend, which is much faster \
             than WGSL on a software rasteriser; REIMAGEN_DEVICE=gpu forces the adapter"
                .to_string(),
        );
    }
    DoctorReport {
        adapters: summaries,
        cpu_threads: rayon::current_num_threads(),
        env_device,
        auto_picks,
        env_picks,
        hints,
    }
}

/// Renders bytes as MiB/GiB for people.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl std::fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "CPU backend: {} threads", self.cpu_threads)?;
        if self.adapters.is_empty() {
            writeln!(f, "wgpu adapters: none")?;
        } else {
            writeln!(f, "wgpu adapters ({}):", self.adapters.len())?;
        }
        for (i, a) in self.adapters.iter().enumerate() {
            writeln!(
                f,
                "  [{i}] {} — {} {} ({})",
                a.name, a.backend, a.device_type, a.driver
            )?;
            writeln!(
                f,
                "      shader-f16: {}, subgroups: {}, cooperative-matrix: {}, storage binding ≤ {}, buffer ≤ {}, workgroup memory {} KiB, \
                 {} invocations/workgroup, {} workgroups/dimension",
                yes(a.shader_f16),
                yes(a.subgroups),
                yes(a.cooperative_matrix),
                size(a.max_storage_buffer_binding_size),
                size(a.max_buffer_size),
                a.max_compute_workgroup_storage_size / 1024,
                a.max_compute_invocations_per_workgroup,
                a.max_compute_workgroups_per_dimension,
            )?;
        }
        for (i, a) in self.adapters.iter().enumerate() {
            if let Some(why) = &a.unusable {
                writeln!(f, "  [{i}] unusable by the kernels: {why}")?;
            }
        }
        writeln!(f, "auto picks: {}", self.auto_picks)?;
        match &self.env_device {
            Some(v) => writeln!(f, "{DEVICE_ENV}={v} picks: {}", self.env_picks)?,
            None => writeln!(f, "{DEVICE_ENV} unset (auto)")?,
        }
        for h in &self.hints {
            writeln!(f, "hint: {h}")?;
        }
        Ok(())
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
