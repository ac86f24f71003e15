//! `reimagen bench kernels`: throughput of the kernels that dominate CLIP and the UNet —
//! matmul (linear layers) at UNet-like shapes, a 3×3 conv2d at 64×64×128, attention, and copy
//! bandwidth — on one or more devices, with an optional PyTorch baseline
//! (`training/bench_torch.py`) run in the same invocation at the same shapes, reported as ratios.
//!
//! Each case is run once to warm up (pipelines compile, the pool fills), then timed in rounds in
//! which every device and PyTorch take turns; medians are reported. GPU timings wait for the
//! device after each run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::device::{Device, DeviceChoice};
use super::error::{Result, TensorError};
use super::tensor::Tensor;
use super::wgpu::AdapterSummary;

/// What to benchmark.
///
/// ```no_run
/// use reimagen::tensor::bench::{self, BenchOptions};
/// let options = BenchOptions {
///     devices: bench::parse_devices("cpu,gpu")?,
///     torch_python: Some("python3".into()),
///     ..BenchOptions::default()
/// };
/// let report = bench::run(&options)?;
/// println!("{report}");
/// # Ok::<(), reimagen::tensor::TensorError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Devices to run on, side by side. By default (empty), the CPU backend and, when wgpu finds
    /// an adapter, the best one (lavapipe included).
    pub devices: Vec<DeviceChoice>,
    /// Fewer rounds (3 instead of up to 10): for a quick look, or a slow software adapter.
    pub quick: bool,
    /// A Python with PyTorch to run `torch_script` with, for the baseline. By default none.
    pub torch_python: Option<String>,
    /// The baseline script. By default `training/bench_torch.py` (relative to the working folder).
    pub torch_script: PathBuf,
    /// The device PyTorch runs on: `"cpu"` or `"cuda"`. By default `"cpu"`.
    pub torch_device: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            devices: Vec::new(),
            quick: false,
            torch_python: None,
            torch_script: PathBuf::from("training/bench_torch.py"),
            torch_device: "cpu".to_string(),
        }
    }
}

/// One benchmark case, the same on every device and in the PyTorch script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseKind {
    /// `x [M, K] · wᵀ` with `w [N, K]` (a linear layer). 2·M·N·K flops.
    Matmul,
    /// 3×3, stride 1, padding 1, `[1, C, H, W] → [1, C', H, W]`. 2·C'·C·9·H·W flops.
    Conv2d,
    /// `[B·heads, L, D]` self-attention. 4·B·L²·D flops (q·kᵀ and p·v).
    Attention,
    /// A contiguous copy; bytes moved = 2 × size (read + write).
    Copy,
}

/// The cases `bench kernels` runs: name, kind and dimensions.
pub const CASES: &[(&str, CaseKind, [usize; 4])] = &[
    ("matmul_4096x320x320", CaseKind::Matmul, [4096, 320, 320, 0]),
    (
        "matmul_1024x1280x1280",
        CaseKind::Matmul,
        [1024, 1280, 1280, 0],
    ),
    (
        "matmul_4096x512x2048",
        CaseKind::Matmul,
        [4096, 512, 2048, 0],
    ),
    ("matmul_257x768x768", CaseKind::Matmul, [257, 768, 768, 0]),
    ("conv2d_3x3_64x64x128", CaseKind::Conv2d, [128, 64, 64, 128]),
    ("attention_8x1024x64", CaseKind::Attention, [8, 1024, 64, 0]),
    ("copy_64MiB", CaseKind::Copy, [16 << 20, 0, 0, 0]),
];

/// The work a case does: flops, or bytes moved for a copy.
pub fn case_work(kind: CaseKind, dims: [usize; 4]) -> f64 {
    let d = dims.map(|x| x as f64);
    match kind {
        CaseKind::Matmul => 2.0 * d[0] * d[1] * d[2],
        CaseKind::Conv2d => 2.0 * d[3] * d[0] * 9.0 * d[1] * d[2],
        CaseKind::Attention => 4.0 * d[0] * d[1] * d[1] * d[2],
        CaseKind::Copy => 2.0 * 4.0 * d[0],
    }
}

/// One case on one device.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CaseResult {
    /// Case name, e.g. `matmul_4096x320x320`.
    pub name: String,
    /// What it measures.
    pub kind: CaseKind,
    /// Median wall time of one run, in milliseconds.
    pub median_ms: f64,
    /// GFLOP/s at the median, for the compute cases (absent for copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// GB/s moved at the median, for copies (absent for the compute cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Timed runs.
    pub runs: usize,
}

impl CaseResult {
    /// The case's rate in its own unit: GFLOP/s, or GB/s for a copy.
    pub fn rate(&self) -> f64 {
        self.gflops.or(self.gbps).unwrap_or(0.0)
    }
}

/// All cases on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceResults {
    /// `cpu`, or the adapter's name.
    pub device: String,
    /// The adapter, for wgpu devices.
    pub adapter: Option<AdapterSummary>,
    /// One per case.
    pub cases: Vec<CaseResult>,
}

/// The PyTorch baseline, as `training/bench_torch.py --json` prints it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TorchBaseline {
    /// `torch.__version__`.
    pub torch_version: String,
    /// `cpu` or `cuda`, and the GPU's name for cuda.
    pub device: String,
    /// `torch.get_num_threads()`.
    pub threads: usize,
    /// One per case, same names as ours.
    pub cases: Vec<CaseResult>,
}

/// What `bench kernels` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Threads of the CPU backend.
    pub cpu_threads: usize,
    /// Per device.
    pub devices: Vec<DeviceResults>,
    /// The PyTorch baseline, when asked for.
    pub torch: Option<TorchBaseline>,
    /// Why the baseline is missing, when it was asked for and failed.
    pub torch_error: Option<String>,
}

impl BenchReport {
    /// Rate of `case` on the `device_index`-th device divided by PyTorch's.
    pub fn ratio_vs_torch(&self, device_index: usize, case: &str) -> Option<f64> {
        let ours = self
            .devices
            .get(device_index)?
            .cases
            .iter()
            .find(|c| c.name == case)?;
        let theirs = self.torch.as_ref()?.cases.iter().find(|c| c.name == case)?;
        Some(ours.rate() / theirs.rate())
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn inputs(kind: CaseKind, dims: [usize; 4], device: &Device) -> Result<Vec<Tensor>> {
    let fill = |shape: &[usize], seed: u32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // Cheap deterministic values in [-0.5, 0.5): the timing does not depend on them.
        let data: Vec<f32> = (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, device)
    };
    Ok(match kind {
        CaseKind::Matmul => vec![fill(&[dims[0], dims[1]], 1)?, fill(&[dims[2], dims[1]], 2)?],
        CaseKind::Conv2d => vec![
            fill(&[1, dims[0], dims[1], dims[2]], 3)?,
            fill(&[dims[3], dims[0], 3, 3], 4)?,
        ],
        CaseKind::Attention => (0..3)
            .map(|s| fill(&[dims[0], dims[1], dims[2]], 5 + s))
            .collect::<Result<_>>()?,
        CaseKind::Copy => vec![fill(&[dims[0]], 8)?],
    })
}

fn run_case(kind: CaseKind, dims: [usize; 4], x: &[Tensor]) -> Result<Tensor> {
    match kind {
        CaseKind::Matmul => x[0].linear(&x[1], None),
        CaseKind::Conv2d => x[0].conv2d(&x[1], None, 1, 1),
        CaseKind::Attention => {
            x[0].attention(&x[1], &x[2], None, false, 1.0 / (dims[2] as f32).sqrt())
        }
        CaseKind::Copy => x[0].copy(),
    }
}

/// `training/bench_torch.py --serve`, kept running for the whole benchmark so that its runs
/// can alternate with ours.
pub(crate) struct TorchServer {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    script: String,
}

#[derive(serde::Deserialize)]
struct TorchHeader {
    torch_version: String,
    device: String,
    threads: usize,
}

#[derive(serde::Deserialize)]
struct TorchTimes {
    times: Vec<f64>,
}

impl TorchServer {
    fn start(
        python: &str,
        options: &BenchOptions,
    ) -> std::result::Result<(Self, TorchHeader), String> {
        let server = TorchServer::spawn(
            python,
            &options.torch_script,
            &["--device", &options.torch_device],
        )?;
        server.header()
    }

    /// Starts `python script --serve ARGS… --threads N` (N: the CPU backend's threads), with
    /// OpenMP told not to spin between requests. `bench clip` serves its own cases with it.
    pub(crate) fn spawn(
        python: &str,
        script: &std::path::Path,
        args: &[&str],
    ) -> std::result::Result<Self, String> {
        use std::process::{Command, Stdio};
        let name = script.display().to_string();
        let mut child = Command::new(python)
            .arg(script)
            .arg("--serve")
            .args(args)
            .args(["--threads", &rayon::current_num_threads().to_string()])
            // OpenMP threads otherwise spin for up to 200 ms after each run, taking the cores
            // from our next turn (and ours would do the same to PyTorch's); see `SETTLE`.
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env("KMP_BLOCKTIME", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{python} {name}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(TorchServer {
            child,
            stdin,
            stdout,
            script: name,
        })
    }

    /// Reads the header line the script prints first.
    pub(crate) fn header<H: serde::de::DeserializeOwned>(
        mut self,
    ) -> std::result::Result<(Self, H), String> {
        let header = self.read_line()?;
        let header: H = serde_json::from_str(&header)
            .map_err(|e| format!("{}: bad header: {e}", self.script))?;
        Ok((self, header))
    }

    fn read_line(&mut self) -> std::result::Result<String, String> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("{} exited (see its error above)", self.script)),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("{}: {e}", self.script)),
        }
    }

    /// Seconds per run of `case`, `runs` times.
    pub(crate) fn time(
        &mut self,
        case: &str,
        runs: usize,
    ) -> std::result::Result<Vec<f64>, String> {
        use std::io::Write;
        let request = serde_json::json!({ "case": case, "runs": runs }).to_string();
        let stdin = self.stdin.as_mut().ok_or("closed")?;
        writeln!(stdin, "{request}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("{}: {e}", self.script))?;
        let line = self.read_line()?;
        let reply: TorchTimes =
            serde_json::from_str(&line).map_err(|e| format!("{}: bad reply: {e}", self.script))?;
        Ok(reply.times)
    }
}

impl Drop for TorchServer {
    fn drop(&mut self) {
        // Closing stdin ends the server's loop.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A pause before each timed turn, so that the previous turn's worker threads (rayon, llvmpipe,
/// OpenMP) have gone to sleep and do not compete with this one.
pub(crate) const SETTLE: Duration = Duration::from_millis(20);

pub(crate) fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Wgpu(d) => d.adapter().name,
    }
}

fn case_result(name: &str, kind: CaseKind, dims: [usize; 4], times: Vec<f64>) -> CaseResult {
    let runs = times.len();
    let t = median(times);
    let rate = case_work(kind, dims) * 1e-9 / t;
    let copy = kind == CaseKind::Copy;
    CaseResult {
        name: name.to_string(),
        kind,
        median_ms: t * 1e3,
        gflops: (!copy).then_some(rate),
        gbps: copy.then_some(rate),
        runs,
    }
}

/// Runs the benchmark. Case by case, every device and PyTorch take turns — one run each per
/// round, after one warm-up each — so that a change in machine load hits all of them alike;
/// each reports the median of its runs (at least 3, at most 10 (3 with `quick`), no new round
/// after 5 s).
///
/// # Errors
/// When a device cannot be opened (e.g. `gpu` without an adapter) or an op fails. A failing
/// PyTorch baseline is not an error: it is reported in `torch_error`.
pub fn run(options: &BenchOptions) -> Result<BenchReport> {
    let mut devices: Vec<Device> = Vec::new();
    if options.devices.is_empty() {
        devices.push(Device::Cpu);
        if let Ok(d) = Device::gpu() {
            devices.push(d);
        }
    } else {
        for &choice in &options.devices {
            devices.push(Device::from_choice(choice)?);
        }
    }
    let (mut server, mut torch, mut torch_error) = (None, None, None);
    if let Some(python) = &options.torch_python {
        match TorchServer::start(python, options) {
            Ok((s, header)) => {
                server = Some(s);
                torch = Some(TorchBaseline {
                    torch_version: header.torch_version,
                    device: header.device,
                    threads: header.threads,
                    cases: Vec::new(),
                });
            }
            Err(e) => torch_error = Some(e),
        }
    }
    let max_rounds = if options.quick { 3 } else { 10 };
    let mut results: Vec<Vec<CaseResult>> = vec![Vec::new(); devices.len()];
    for &(name, kind, dims) in CASES {
        let x: Vec<Vec<Tensor>> = devices
            .iter()
            .map(|d| inputs(kind, dims, d))
            .collect::<Result<_>>()?;
        for (d, x) in devices.iter().zip(&x) {
            drop(run_case(kind, dims, x)?);
            d.synchronize()?;
        }
        let mut torch_times = Vec::new();
        if let Some(s) = server.as_mut()
            && let Err(e) = s.time(name, 1)
        {
            torch_error = Some(e);
            server = None;
        }
        let mut times = vec![Vec::new(); devices.len()];
        let start = Instant::now();
        for round in 0..max_rounds {
            if round >= 3 && start.elapsed() > Duration::from_secs(5) {
                break;
            }
            for ((d, x), t) in devices.iter().zip(&x).zip(&mut times) {
                std::thread::sleep(SETTLE);
                let begin = Instant::now();
                let y = run_case(kind, dims, x)?;
                d.synchronize()?;
                t.push(begin.elapsed().as_secs_f64());
                drop(y);
            }
            if let Some(s) = server.as_mut() {
                std::thread::sleep(SETTLE);
                match s.time(name, 1) {
                    Ok(t) => torch_times.extend(t),
                    Err(e) => {
                        torch_error = Some(e);
                        server = None;
                    }
                }
            }
        }
        for (r, t) in results.iter_mut().zip(times) {
            r.push(case_result(name, kind, dims, t));
        }
        if let Some(t) = torch.as_mut()
            && !torch_times.is_empty()
        {
            t.cases.push(case_result(name, kind, dims, torch_times));
        }
    }
    if torch_error.is_some() {
        torch = None;
    }
    Ok(BenchReport {
        cpu_threads: rayon::current_num_threads(),
        devices: devices
            .iter()
            .zip(results)
            .map(|(d, cases)| DeviceResults {
                device: device_name(d),
                adapter: match d {
                    Device::Cpu => None,
                    Device::Wgpu(w) => Some(w.adapter()),
                },
                cases,
            })
            .collect(),
        torch,
        torch_error,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "CPU backend threads: {}", self.cpu_threads)?;
        for (i, d) in self.devices.iter().enumerate() {
            writeln!(f, "[{i}] {}", d.device)?;
        }
        if let Some(t) = &self.torch {
            writeln!(
                f,
                "[torch] PyTorch {} on {} ({} threads)",
                t.torch_version, t.device, t.threads
            )?;
        }
        if let Some(e) = &self.torch_error {
            writeln!(f, "[torch] baseline failed: {e}")?;
        }
        write!(f, "{:<24}", "case (GFLOP/s; copy GB/s)")?;
        for i in 0..self.devices.len() {
            write!(f, " {:>14}", format!("[{i}] rate (ms)"))?;
        }
        if self.torch.is_some() {
            write!(f, " {:>16}", "[torch] rate (ms)")?;
            for i in 0..self.devices.len() {
                write!(f, " {:>10}", format!("[{i}]/torch"))?;
            }
        }
        writeln!(f)?;
        for &(name, _, _) in CASES {
            write!(f, "{name:<24}")?;
            for d in &self.devices {
                match d.cases.iter().find(|c| c.name == name) {
                    Some(c) => write!(
                        f,
                        " {:>14}",
                        format!("{:.1} ({:.1})", c.rate(), c.median_ms)
                    )?,
                    None => write!(f, " {:>14}", "-")?,
                }
            }
            if let Some(t) = &self.torch {
                match t.cases.iter().find(|c| c.name == name) {
                    Some(c) => write!(
                        f,
                        " {:>16}",
                        format!("{:.1} ({:.1})", c.rate(), c.median_ms)
                    )?,
                    None => write!(f, " {:>16}", "-")?,
                }
                for i in 0..self.devices.len() {
                    match self.ratio_vs_torch(i, name) {
                        Some(r) => write!(f, " {:>10}", format!("{r:.2}×"))?,
                        None => write!(f, " {:>10}", "-")?,
                    }
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Parses `--device`-style lists: `cpu,gpu`.
///
/// # Errors
/// An unknown device name.
pub fn parse_devices(list: &str) -> Result<Vec<DeviceChoice>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.parse())
        .collect::<Result<Vec<_>, TensorError>>()
}
