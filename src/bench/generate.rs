//! `reimagen bench generate`: how fast the Re-Imagen cascade runs, per stage and device, beside
//! the PyTorch reference (`training/reimagen/`) running the same weights in the same run
//! (`training/bench_generate.py`).
//!
//! The model is a cascade folder, or by default the CPU cascade the project ships
//! (`training/reimagen/configs/`: base32_cpu → sr32to64_cpu → sr64to256_cpu, text from the
//! shipped CLIP `models/clip`) with random f16 weights written here, in Rust, to a temporary
//! folder, so the benchmark runs on a machine without PyTorch. Measured, per stage and device:
//!
//! - **UNet steps/s**: one step is the call the sampler makes per step: every guidance branch
//!   of the default (interleaved) guidance batched — `2 × batch` rows — with K neighbours whose
//!   keys are ready (the warm cache), through [`UNetBranches`]; median of the runs, with the
//!   fastest and slowest;
//! - **neighbour encoding**: K neighbours' captions and images through the text tower and the
//!   DStack at t = 0, and their attention keys (what a cold cache costs once per generation);
//! - **seconds per image** for the selected stages as a cascade (`ReImagen::generate` with the
//!   default guidance and sampler, `--steps` per stage, cold cache);
//! - **peak resident memory** (VmHWM) per device: the high-water mark is reset through
//!   `/proc/self/clear_refs` before each device's phase, after the previous phase's models are
//!   dropped, so each figure is that phase's peak (weights, activations, the adapter's memory).
//!
//! PyTorch's runs alternate with the first device's (rule of `bench kernels`: a change in load
//! hits both alike); `vs torch` is steps/s over PyTorch's steps/s.
//!
//! Not here: the model (`generate/reimagen/`), the PyTorch server plumbing (`tensor/bench.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::generate::reimagen::{
    NeighbourContext, NeighbourFeatures, TextCondition, UNet, UNetBranches, UNetConfig, box_resize,
    image_tensor,
};
use crate::generate::sampler::BranchModel;
use crate::generate::{
    CancelToken, GenerateError, GenerationRequest, Generator, Guidance, Neighbour, NoObserver,
    ReImagen,
};
use crate::tensor::bench::{SETTLE, TorchServer, device_name, median};
use crate::tensor::{Device, DeviceChoice, Tensor, TensorError};

/// The shipped CPU cascade: stage name, resolution and its training config (the `model` part is
/// the stage's config.json).
const SHIPPED_STAGES: [(&str, usize, &str); 3] = [
    (
        "base32",
        32,
        include_str!("../../training/reimagen/configs/base32_cpu.json"),
    ),
    (
        "sr64",
        64,
        include_str!("../../training/reimagen/configs/sr32to64_cpu.json"),
    ),
    (
        "sr256",
        256,
        include_str!("../../training/reimagen/configs/sr64to256_cpu.json"),
    ),
];

/// The timestep every timed step runs at (the time does not depend on it).
const STEP_T: i64 = 500;

/// Settings of a `bench generate` run.
#[derive(Clone, Debug)]
pub struct GenerateBenchOptions {
    /// A cascade folder (cascade.json); `None`: the shipped CPU cascade with random weights.
    pub model: Option<PathBuf>,
    /// The CLIP folder the random cascade's stages name (`models/clip`).
    pub clip: PathBuf,
    /// Devices; empty: the CPU backend and, when wgpu finds one, the best adapter.
    pub devices: Vec<DeviceChoice>,
    /// Stages to time, by name; empty: all.
    pub stages: Vec<String>,
    /// Steps per stage of the cascade measurement (the generator's default: 50).
    pub steps: usize,
    /// Images per generation (a step's UNet call has `branches × batch` rows).
    pub batch: usize,
    /// Neighbours per generation.
    pub k: usize,
    /// Timed steps per stage on the CPU backend (and for PyTorch).
    pub runs: usize,
    /// Timed steps per stage on a wgpu adapter (a software adapter is slow).
    pub gpu_runs: usize,
    /// Whether to run the cascade (seconds per image).
    pub cascade: bool,
    /// A Python with PyTorch and the training requirements, for the baseline; none by default.
    pub torch_python: Option<String>,
    /// The baseline script (`training/bench_generate.py`, relative to the working folder).
    pub torch_script: PathBuf,
}

impl Default for GenerateBenchOptions {
    fn default() -> Self {
        GenerateBenchOptions {
            model: None,
            clip: PathBuf::from(crate::bench::clip::SHIPPED),
            devices: Vec::new(),
            stages: Vec::new(),
            steps: 50,
            batch: 1,
            k: 2,
            runs: 5,
            gpu_runs: 2,
            cascade: true,
            torch_python: None,
            torch_script: PathBuf::from("training/bench_generate.py"),
        }
    }
}

/// A stage of the cascade under test.
#[derive(Clone, Debug, Serialize)]
pub struct StageSizes {
    /// Its name in cascade.json.
    pub name: String,
    /// Output side in pixels.
    pub resolution: usize,
    /// The low-resolution input's side (SR stages).
    pub low_res: Option<usize>,
    /// `block_channels`.
    pub block_channels: Vec<usize>,
    /// Parameters of the UNet (the text tower not counted).
    pub parameters: usize,
}

/// One stage's UNet step on one device (or PyTorch).
#[derive(Clone, Debug, Serialize)]
pub struct StepCase {
    /// The stage.
    pub stage: String,
    /// `cpu`, the adapter's name, or `torch`.
    pub device: String,
    /// Rows of each UNet call (branches × batch).
    pub rows: usize,
    /// UNet calls (sampler steps) per second at the median.
    pub steps_per_sec: f64,
    /// Median time of one step, milliseconds.
    pub step_ms_median: f64,
    /// Fastest step, milliseconds.
    pub step_ms_min: f64,
    /// Slowest step, milliseconds.
    pub step_ms_max: f64,
    /// Timed steps.
    pub runs: usize,
    /// `steps_per_sec` over PyTorch's on the same stage, when it ran.
    pub vs_torch: Option<f64>,
}

/// Encoding K neighbours at one stage on one device (or PyTorch).
#[derive(Clone, Debug, Serialize)]
pub struct EncodeCase {
    /// The stage.
    pub stage: String,
    /// `cpu`, the adapter's name, or `torch`.
    pub device: String,
    /// Neighbours encoded.
    pub neighbours: usize,
    /// Median time of encoding them all (text tower, DStack at t = 0, attention keys), ms.
    pub encode_ms_median: f64,
    /// Timed encodes.
    pub runs: usize,
}

/// The selected stages run as a cascade on one device.
#[derive(Clone, Debug, Serialize)]
pub struct CascadeCase {
    /// The device.
    pub device: String,
    /// The stages run, lowest resolution first.
    pub stages: Vec<String>,
    /// Steps per stage.
    pub steps_per_stage: usize,
    /// Wall time of the generation, seconds (text, neighbours, every step, decoding).
    pub secs_total: f64,
    /// `secs_total / batch`.
    pub secs_per_image: f64,
}

/// Peak resident memory of one device's phase.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryCase {
    /// The device.
    pub device: String,
    /// VmHWM at the end of the phase, MiB.
    pub peak_rss_mib: f64,
    /// Whether the high-water mark was reset at the start of the phase (otherwise it is the
    /// process's peak so far).
    pub reset: bool,
}

/// What `bench generate` measured.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateBenchReport {
    /// The cascade folder, or the random shipped CPU cascade.
    pub model: String,
    /// The stages timed.
    pub stages: Vec<StageSizes>,
    /// Images per generation.
    pub batch: usize,
    /// Neighbours per generation.
    pub neighbours: usize,
    /// Guidance branches batched per step (the default interleaved guidance: 2).
    pub branches: usize,
    /// Threads of the CPU backend.
    pub cpu_threads: usize,
    /// PyTorch's version and threads, when it ran.
    pub torch: Option<String>,
    /// Why the baseline is missing, when it was asked for and failed.
    pub torch_error: Option<String>,
    /// Peak RSS of the PyTorch process (it runs apart), MiB.
    pub torch_peak_rss_mib: Option<f64>,
    /// One per stage and device, PyTorch last.
    pub steps: Vec<StepCase>,
    /// One per stage and device.
    pub encode: Vec<EncodeCase>,
    /// One per device, when the selected stages form a cascade.
    pub cascade: Vec<CascadeCase>,
    /// Why the cascade was not run (the stages are not a cascade, or it was not asked for).
    pub cascade_skipped: Option<String>,
    /// One per device.
    pub memory: Vec<MemoryCase>,
}

impl std::fmt::Display for GenerateBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model {}", self.model)?;
        for s in &self.stages {
            writeln!(
                f,
                "  stage {:<8} {:>4} px{}, channels {:?}, {:.2} M parameters",
                s.name,
                s.resolution,
                s.low_res.map_or(String::new(), |r| format!(" from {r}")),
                s.block_channels,
                s.parameters as f64 / 1e6
            )?;
        }
        writeln!(
            f,
            "batch {}, K = {} neighbours, {} guidance branches per step; CPU backend threads: {}",
            self.batch, self.neighbours, self.branches, self.cpu_threads
        )?;
        if let Some(t) = &self.torch {
            writeln!(f, "torch: {t}")?;
        }
        if let Some(e) = &self.torch_error {
            writeln!(f, "torch: baseline failed: {e}")?;
        }
        writeln!(
            f,
            "{:<8} {:<36} {:>5} {:>9} {:>10} {:>19} {:>5} {:>9}",
            "stage", "device", "rows", "steps/s", "median ms", "min–max ms", "runs", "vs torch"
        )?;
        for c in &self.steps {
            writeln!(
                f,
                "{:<8} {:<36} {:>5} {:>9.2} {:>10.1} {:>19} {:>5} {:>9}",
                c.stage,
                c.device,
                c.rows,
                c.steps_per_sec,
                c.step_ms_median,
                format!("{:.1}–{:.1}", c.step_ms_min, c.step_ms_max),
                c.runs,
                c.vs_torch.map_or("-".to_string(), |r| format!("{r:.2}×"))
            )?;
        }
        for e in &self.encode {
            writeln!(
                f,
                "neighbour encoding {:<8} {:<36} K = {}: {:.1} ms (median of {})",
                e.stage, e.device, e.neighbours, e.encode_ms_median, e.runs
            )?;
        }
        for c in &self.cascade {
            writeln!(
                f,
                "cascade {} on {}, {} steps per stage: {:.2} s per image ({:.2} s in all)",
                c.stages.join(" → "),
                c.device,
                c.steps_per_stage,
                c.secs_per_image,
                c.secs_total
            )?;
        }
        if let Some(why) = &self.cascade_skipped {
            writeln!(f, "cascade: not run ({why})")?;
        }
        for m in &self.memory {
            writeln!(
                f,
                "peak RSS on {}: {:.0} MiB{}",
                m.device,
                m.peak_rss_mib,
                if m.reset {
                    " (this phase)"
                } else {
                    " (process so far)"
                }
            )?;
        }
        if let Some(m) = self.torch_peak_rss_mib {
            writeln!(f, "peak RSS of the PyTorch process: {m:.0} MiB")?;
        }
        Ok(())
    }
}

fn tensor_err(e: TensorError) -> Error {
    Error::Generate(GenerateError::Tensor(e))
}

fn model_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Generate(GenerateError::Model {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// Every tensor of a stage of `cfg`, by the spec's name (docs/generator.md §4), with its shape,
/// in the spec's order.
pub fn unet_tensors(cfg: &UNetConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let ch = &cfg.block_channels;
    let (c0, e, dt) = (ch[0], cfg.time_embed_dim, cfg.text_dim);
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
    let conv = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, cout, cin, k| {
        push(format!("{p}.weight"), vec![cout, cin, k, k]);
        push(format!("{p}.bias"), vec![cout]);
    };
    let norm = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, c| {
        push(format!("{p}.weight"), vec![c]);
        push(format!("{p}.bias"), vec![c]);
    };
    let res = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, cin: usize, cout: usize| {
        norm(push, &format!("{p}.norm1"), cin);
        conv(push, &format!("{p}.conv1"), cout, cin, 3);
        push(format!("{p}.time_proj.weight"), vec![cout, e]);
        push(format!("{p}.time_proj.bias"), vec![cout]);
        norm(push, &format!("{p}.norm2"), cout);
        conv(push, &format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            conv(push, &format!("{p}.skip"), cout, cin, 1);
        }
    };
    let attention = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, c: usize, ckv: usize| {
        push(format!("{p}.to_q.weight"), vec![c, c]);
        push(format!("{p}.to_k.weight"), vec![c, ckv]);
        push(format!("{p}.to_v.weight"), vec![c, ckv]);
        push(format!("{p}.to_out.weight"), vec![c, c]);
        push(format!("{p}.to_out.bias"), vec![c]);
    };
    let transformer = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, c: usize| {
        for n in ["norm1", "norm2", "norm3"] {
            norm(push, &format!("{p}.{n}"), c);
        }
        attention(push, &format!("{p}.attn1"), c, c);
        attention(push, &format!("{p}.attn2"), c, dt);
        let inner = c * cfg.ff_mult;
        push(format!("{p}.ff_in.weight"), vec![inner, c]);
        push(format!("{p}.ff_in.bias"), vec![inner]);
        push(format!("{p}.ff_out.weight"), vec![c, inner]);
        push(format!("{p}.ff_out.bias"), vec![c]);
    };
    let neighbour = |push: &mut dyn FnMut(String, Vec<usize>), p: &str, c: usize| {
        norm(push, &format!("{p}.norm_q"), c);
        norm(push, &format!("{p}.norm_kv"), c);
        push(format!("{p}.null"), vec![1, c]);
        attention(push, &format!("{p}.attn"), c, c);
    };
    let mlp = |push: &mut dyn FnMut(String, Vec<usize>), p: &str| {
        push(format!("{p}.linear_1.weight"), vec![e, c0]);
        push(format!("{p}.linear_1.bias"), vec![e]);
        push(format!("{p}.linear_2.weight"), vec![e, e]);
        push(format!("{p}.linear_2.bias"), vec![e]);
    };
    let sr = cfg.low_res_size.is_some();
    let cin = cfg.in_channels * if sr { 2 } else { 1 };
    conv(&mut push, "conv_in", c0, cin, 3);
    mlp(&mut push, "time_embed");
    if sr {
        mlp(&mut push, "aug_embed");
    }
    push("null_text".into(), vec![1, dt]);
    let mut skips = vec![c0];
    let mut cur = c0;
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..cfg.layers_per_block {
            res(&mut push, &format!("down.{i}.res.{j}"), cur, c);
            cur = c;
            if cfg.attention_levels.contains(&i) {
                transformer(&mut push, &format!("down.{i}.attn.{j}"), c);
            }
            skips.push(c);
        }
        if cfg.neighbour_levels.contains(&i) {
            neighbour(&mut push, &format!("down.{i}.neighbour_attn"), c);
        }
        if i + 1 < ch.len() {
            conv(&mut push, &format!("down.{i}.downsample"), c, c, 3);
            skips.push(c);
        }
    }
    res(&mut push, "mid.res.0", cur, cur);
    res(&mut push, "mid.res.1", cur, cur);
    transformer(&mut push, "mid.attn.0", cur);
    neighbour(&mut push, "mid.neighbour_attn", cur);
    for i in (0..ch.len()).rev() {
        let c = ch[i];
        for j in 0..=cfg.layers_per_block {
            let skip = skips.pop().unwrap_or(0);
            res(&mut push, &format!("up.{i}.res.{j}"), cur + skip, c);
            cur = c;
            if cfg.attention_levels.contains(&i) {
                transformer(&mut push, &format!("up.{i}.attn.{j}"), c);
            }
        }
        if i > 0 {
            conv(&mut push, &format!("up.{i}.upsample"), c, c, 3);
        }
    }
    norm(&mut push, "norm_out", cur);
    conv(&mut push, "conv_out", cfg.out_channels, cur, 3);
    out
}

/// The full config.json of a shipped stage: the reference's defaults under the training
/// config's `model` part, with the text settings of the CLIP folder it will name.
fn shipped_stage_config(training_config: &str, clip: &Path) -> Result<UNetConfig> {
    let clip_config = clip.join("config.json");
    let text = std::fs::read_to_string(&clip_config).map_err(io_err(&clip_config))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| model_err(&clip_config, format!("not JSON: {e}")))?;
    let text_config = &value["text_config"];
    let (Some(hidden), Some(positions)) = (
        text_config["hidden_size"].as_u64(),
        text_config["max_position_embeddings"].as_u64(),
    ) else {
        return Err(model_err(
            &clip_config,
            "text_config.hidden_size or max_position_embeddings is missing",
        ));
    };
    // The reference's UNetConfig defaults (training/reimagen/model.py).
    let mut config = serde_json::json!({
        "model_type": "reimagen_unet", "format_version": 1, "dtype": "float16",
        "sample_size": 32, "in_channels": 3, "out_channels": 3, "low_res_size": null,
        "block_channels": [32, 64, 128], "layers_per_block": 1, "attention_levels": [1, 2],
        "neighbour_levels": [1], "attention_head_dim": 32, "ff_mult": 2, "norm_groups": 8,
        "norm_eps": 1e-5, "layer_norm_eps": 1e-5, "time_embed_dim": 128,
        "time_flip_sin_to_cos": true, "time_freq_shift": 0.0, "time_max_period": 10000.0,
        "text_encoder": "../clip", "text_dim": 64, "text_max_length": 32,
        "prediction_type": "epsilon", "beta_schedule": "cosine", "num_train_timesteps": 1000,
        "beta_start": 1e-4, "beta_end": 0.02, "thresholding": "dynamic",
        "dynamic_threshold_ratio": 0.995, "sample_max_value": 1.5, "noise_aug_max": 0,
        "noise_aug_level": 0
    });
    let training: serde_json::Value = serde_json::from_str(training_config)
        .map_err(|e| Error::Query(format!("a shipped training config is not JSON: {e}")))?;
    if let (Some(out), Some(model)) = (config.as_object_mut(), training["model"].as_object()) {
        for (k, v) in model {
            out.insert(k.clone(), v.clone());
        }
        let length = model
            .get("text_max_length")
            .and_then(|v| v.as_u64())
            .unwrap_or(32);
        out.insert("text_dim".into(), hidden.into());
        out.insert("text_max_length".into(), length.min(positions).into());
        out.insert("text_encoder".into(), "../clip".into());
    }
    serde_json::from_value(config)
        .map_err(|e| Error::Query(format!("a shipped training config does not fit: {e}")))
}

/// A value of tensor `k` at index `i`: a cheap hash spread uniformly over [−bound, bound).
fn random_value(k: usize, i: usize, bound: f32) -> f32 {
    let mut x = (i as u64) ^ ((k as u64) << 40) ^ 0x5DEE_CE66_D1CE_5EED;
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
}

/// Writes a stage folder of `cfg` with random f16 weights (PyTorch's default initialisation
/// bounds, 1/√fan_in; norms at 1 and 0), one shard and its index. Returns the parameter count.
fn write_random_stage(
    dir: &Path,
    cfg: &UNetConfig,
    config_json: &serde_json::Value,
) -> Result<usize> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("config.json");
    std::fs::write(&path, format!("{config_json:#}\n")).map_err(io_err(&path))?;
    let tensors = unet_tensors(cfg);
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let norm = name.contains(".norm") || name.starts_with("norm_out");
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let bound = match shape.len() {
                1 => 0.02,
                _ if name.ends_with("null") || name == "null_text" => 1.0,
                _ => 1.0 / (fan_in as f32).sqrt(),
            };
            (0..n)
                .flat_map(|i| {
                    let x = match (norm, name.ends_with("weight")) {
                        (true, true) => 1.0,
                        (true, false) => 0.0,
                        _ => random_value(k, i, bound),
                    };
                    half::f16::from_f32(x).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Query(format!("random stage weights: {e}")))?;
    let shard = "model-00001-of-00001.safetensors";
    let path = dir.join(shard);
    safetensors::tensor::serialize_to_file(views, None, &path)
        .map_err(|e| Error::Query(format!("{}: {e}", path.display())))?;
    let total: usize = bytes.iter().map(Vec::len).sum();
    let weight_map: std::collections::BTreeMap<&str, &str> =
        tensors.iter().map(|(n, _)| (n.as_str(), shard)).collect();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, format!("{index:#}\n")).map_err(io_err(&path))?;
    Ok(tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum())
}

/// Writes the shipped CPU cascade with random weights under `dir` (cascade.json, a copy of the
/// CLIP folder `clip`, one folder per stage); returns `dir`.
pub fn write_random_cascade(dir: &Path, clip: &Path) -> Result<PathBuf> {
    if !clip.join("config.json").is_file() {
        return Err(model_err(
            clip,
            "the random cascade's text encoder must be a CLIP folder (config.json missing); run \
             from the repository root or give --clip DIR",
        ));
    }
    let clip_copy = dir.join("clip");
    std::fs::create_dir_all(&clip_copy).map_err(io_err(&clip_copy))?;
    for entry in std::fs::read_dir(clip).map_err(io_err(clip))? {
        let from = entry.map_err(io_err(clip))?.path();
        if from.is_file()
            && let Some(name) = from.file_name()
        {
            std::fs::copy(&from, clip_copy.join(name)).map_err(io_err(&from))?;
        }
    }
    let mut stages = Vec::new();
    for (name, resolution, training) in SHIPPED_STAGES {
        let cfg = shipped_stage_config(training, clip)?;
        let json = serde_json::to_value(shipped_config_json(&cfg))
            .map_err(|e| Error::Query(e.to_string()))?;
        write_random_stage(&dir.join(name), &cfg, &json)?;
        stages.push(serde_json::json!({"name": name, "path": name, "resolution": resolution}));
    }
    let cascade = serde_json::json!({"format": "reimagen-cascade", "version": 1, "stages": stages});
    let path = dir.join("cascade.json");
    std::fs::write(&path, format!("{cascade:#}\n")).map_err(io_err(&path))?;
    Ok(dir.to_path_buf())
}

/// `cfg` as its config.json object (every key of the reference's UNetConfig).
fn shipped_config_json(cfg: &UNetConfig) -> serde_json::Value {
    serde_json::json!({
        "model_type": cfg.model_type, "format_version": cfg.format_version, "dtype": cfg.dtype,
        "sample_size": cfg.sample_size, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels, "low_res_size": cfg.low_res_size,
        "block_channels": cfg.block_channels, "layers_per_block": cfg.layers_per_block,
        "attention_levels": cfg.attention_levels, "neighbour_levels": cfg.neighbour_levels,
        "attention_head_dim": cfg.attention_head_dim, "ff_mult": cfg.ff_mult,
        "norm_groups": cfg.norm_groups, "norm_eps": cfg.norm_eps,
        "layer_norm_eps": cfg.layer_norm_eps, "time_embed_dim": cfg.time_embed_dim,
        "time_flip_sin_to_cos": cfg.time_flip_sin_to_cos, "time_freq_shift": cfg.time_freq_shift,
        "time_max_period": cfg.time_max_period, "text_encoder": cfg.text_encoder,
        "text_dim": cfg.text_dim, "text_max_length": cfg.text_max_length,
        "prediction_type": cfg.prediction_type, "beta_schedule": cfg.beta_schedule,
        "num_train_timesteps": cfg.num_train_timesteps, "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end, "thresholding": cfg.thresholding,
        "dynamic_threshold_ratio": cfg.dynamic_threshold_ratio,
        "sample_max_value": cfg.sample_max_value, "noise_aug_max": cfg.noise_aug_max,
        "noise_aug_level": cfg.noise_aug_level
    })
}

/// A stage entry of a cascade.json.
#[derive(Clone, Debug, serde::Deserialize)]
struct StageEntry {
    name: String,
    path: String,
    resolution: usize,
}

/// The stages a cascade folder lists (its cascade.json), checked loosely: [`ReImagen::open`]
/// does the full check when the cascade runs.
fn cascade_stages(folder: &Path) -> Result<Vec<StageEntry>> {
    let path = folder.join("cascade.json");
    if !folder.is_dir() {
        return Err(model_err(folder, "no such model folder"));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| model_err(&path, format!("cannot read the cascade: {e}")))?;
    #[derive(serde::Deserialize)]
    struct File {
        stages: Vec<StageEntry>,
    }
    let file: File = serde_json::from_str(&text)
        .map_err(|e| model_err(&path, format!("not a cascade.json: {e}")))?;
    if file.stages.is_empty() {
        return Err(model_err(&path, "key `stages` lists no stage"));
    }
    Ok(file.stages)
}

/// Reads VmHWM (peak resident set) of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident set to the current one (Linux `clear_refs` 5); whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A neighbour picture: a seeded colour field.
fn picture(size: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([
            (x * 3) as u8 ^ seed,
            (y * 5) as u8,
            seed.wrapping_mul(37).wrapping_add((x ^ y) as u8),
        ])
    })
}

fn neighbours(k: usize) -> Vec<Neighbour> {
    (0..k)
        .map(|i| {
            Neighbour::new(
                format!("bench-{i}"),
                picture(96, i as u8 * 50),
                format!("a red heart number {i}, twemoji style"),
            )
        })
        .collect()
}

const PROMPT: &str = "a smiling red heart with arms, twemoji style";

/// One stage loaded on one device, with a generation's conditions ready.
struct StageRun {
    unet: UNet,
    prompt: TextCondition,
    context: NeighbourContext,
    weights: Vec<f32>,
    x: Tensor,
    low_res: Option<Tensor>,
    text: crate::generate::reimagen::TextEncoder,
    neighbours: Vec<Neighbour>,
}

impl StageRun {
    fn open(
        folder: &Path,
        device: &Device,
        opts: &GenerateBenchOptions,
        rows: usize,
    ) -> Result<StageRun> {
        let unet = UNet::open(folder, device)?;
        let cfg = unet.config().clone();
        let text = crate::generate::reimagen::TextEncoder::open(
            &folder.join(&cfg.text_encoder),
            cfg.text_max_length,
            device,
        )?;
        let prompt = text.encode(&[PROMPT])?;
        let neighbours = neighbours(opts.k);
        let s = cfg.sample_size;
        let x = Tensor::randn(&[rows, 3, s, s], 1, device).map_err(tensor_err)?;
        let low_res = match cfg.low_res_size {
            Some(r) => Some(
                Tensor::randn(&[opts.batch, 3, r, r], 2, device)
                    .map_err(tensor_err)?
                    .clamp(-1.0, 1.0)
                    .map_err(tensor_err)?,
            ),
            None => None,
        };
        let mut run = StageRun {
            context: unet.neighbour_context(&NeighbourFeatures { maps: Vec::new() })?,
            unet,
            prompt,
            weights: vec![1.0; opts.k],
            x,
            low_res,
            text,
            neighbours,
        };
        run.context = run.encode()?;
        Ok(run)
    }

    /// The neighbours' features (one by one, as the cascade encodes them) and keys.
    fn encode(&self) -> Result<NeighbourContext> {
        let s = self.unet.config().sample_size;
        let device = self.unet.device();
        let features = self
            .neighbours
            .iter()
            .map(|n| {
                let image = image_tensor(&box_resize(&n.image, s), device)?;
                let text = self.text.encode(&[n.caption.as_str()])?;
                self.unet.encode_neighbours(&image, &text)
            })
            .collect::<crate::generate::Result<Vec<_>>>()?;
        let refs: Vec<&NeighbourFeatures> = features.iter().collect();
        let features = NeighbourFeatures::concat(&refs)?;
        Ok(self.unet.neighbour_context(&features)?)
    }

    /// One step: every branch in one call; seconds.
    fn step(&self) -> Result<f64> {
        let branches = Guidance::default().branches(None);
        let cfg = self.unet.config();
        let start = Instant::now();
        let mut model = UNetBranches {
            unet: &self.unet,
            prompt: &self.prompt,
            negative: None,
            neighbours: &self.context,
            weights: &self.weights,
            low_res: self.low_res.as_ref(),
            aug: cfg.noise_aug_level as f32,
        };
        let out = model.predict(&self.x, STEP_T, &branches)?;
        self.unet.device().synchronize().map_err(tensor_err)?;
        let secs = start.elapsed().as_secs_f64();
        drop(out);
        Ok(secs)
    }

    fn timed_encode(&self) -> Result<f64> {
        let start = Instant::now();
        let context = self.encode()?;
        self.unet.device().synchronize().map_err(tensor_err)?;
        let secs = start.elapsed().as_secs_f64();
        drop(context);
        Ok(secs)
    }
}

#[derive(serde::Deserialize)]
struct TorchHeader {
    torch_version: String,
    threads: usize,
}

/// Runs the benchmark; the random cascade is written under `work`. `progress` gets a line per
/// phase.
///
/// # Errors
/// A model folder that is missing or does not load (naming it), a device that cannot be
/// opened, a stage name not in the cascade, a runtime failure. A failing PyTorch baseline is
/// not an error: it is reported in `torch_error`.
pub fn run_generate(
    work: &Path,
    opts: &GenerateBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<GenerateBenchReport> {
    if opts.batch == 0 || opts.runs == 0 || opts.steps == 0 {
        return Err(Error::Query(
            "--batch, --runs and --steps must be at least 1".into(),
        ));
    }
    let (folder, model_name) = match &opts.model {
        Some(dir) => (dir.clone(), dir.display().to_string()),
        None => {
            progress("writing the random-weight CPU cascade");
            let dir = write_random_cascade(&work.join("cascade"), &opts.clip)?;
            (
                dir,
                "the shipped CPU cascade (base32_cpu → sr32to64_cpu → sr64to256_cpu, text: \
                 models/clip) with random weights"
                    .to_string(),
            )
        }
    };
    let all = cascade_stages(&folder)?;
    for s in &opts.stages {
        if !all.iter().any(|e| &e.name == s) {
            let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
            return Err(Error::Query(format!(
                "--stages: no stage {s:?} in {} (it has {})",
                folder.join("cascade.json").display(),
                names.join(", ")
            )));
        }
    }
    let selected: Vec<StageEntry> = all
        .iter()
        .filter(|e| opts.stages.is_empty() || opts.stages.contains(&e.name))
        .cloned()
        .collect();

    let mut devices: Vec<Device> = Vec::new();
    if opts.devices.is_empty() {
        devices.push(Device::Cpu);
        if let Ok(d) = Device::gpu() {
            devices.push(d);
        }
    } else {
        for &choice in &opts.devices {
            devices.push(Device::from_choice(choice).map_err(tensor_err)?);
        }
    }
    let branches = Guidance::default().branches(None).len();
    let rows = branches * opts.batch;

    // A cascade of the selected stages (absolute paths), for the seconds per image.
    let sub_cascade = work.join("selected");
    std::fs::create_dir_all(&sub_cascade).map_err(io_err(&sub_cascade))?;
    let stage_dirs: Vec<PathBuf> = selected
        .iter()
        .map(|e| {
            let p = folder.join(&e.path);
            p.canonicalize()
                .map_err(|err| model_err(&p, err.to_string()))
        })
        .collect::<Result<_>>()?;
    let entries: Vec<serde_json::Value> = selected
        .iter()
        .zip(&stage_dirs)
        .map(|(e, p)| serde_json::json!({"name": e.name, "path": p, "resolution": e.resolution}))
        .collect();
    let path = sub_cascade.join("cascade.json");
    let doc = serde_json::json!({"format": "reimagen-cascade", "version": 1, "stages": entries});
    std::fs::write(&path, doc.to_string()).map_err(io_err(&path))?;

    let (mut server, mut torch, mut torch_error) = (None, None, None);
    if let Some(python) = &opts.torch_python {
        progress("starting PyTorch");
        let folder = folder.display().to_string();
        let names: Vec<&str> = selected.iter().map(|e| e.name.as_str()).collect();
        let (batch, k) = (opts.batch.to_string(), opts.k.to_string());
        match TorchServer::spawn(
            python,
            &opts.torch_script,
            &[
                "--model",
                &folder,
                "--stages",
                &names.join(","),
                "--batch",
                &batch,
                "--k",
                &k,
            ],
        )
        .and_then(TorchServer::header::<TorchHeader>)
        {
            Ok((s, h)) => {
                server = Some(s);
                torch = Some(format!(
                    "PyTorch {} on cpu, {} threads (the reference model, training/reimagen/)",
                    h.torch_version, h.threads
                ));
            }
            Err(e) => torch_error = Some(e),
        }
    }

    let mut sizes = Vec::new();
    let mut steps = Vec::new();
    let mut torch_steps: Vec<StepCase> = Vec::new();
    let mut encode = Vec::new();
    let mut cascade = Vec::new();
    let mut cascade_skipped = (!opts.cascade).then(|| "not asked for".to_string());
    let mut memory = Vec::new();
    for (d, device) in devices.iter().enumerate() {
        let name = device_name(device);
        let reset = reset_peak_rss();
        let runs = match device {
            Device::Cpu => opts.runs,
            _ => opts.gpu_runs.clamp(1, opts.runs),
        };
        // PyTorch takes turns with the first device only.
        let mut with_torch = if d == 0 { server.as_mut() } else { None };
        for (entry, dir) in selected.iter().zip(&stage_dirs) {
            progress(&format!("stage {} on {name}: loading", entry.name));
            let stage = StageRun::open(dir, device, opts, rows)?;
            if d == 0 {
                let cfg = stage.unet.config();
                sizes.push(StageSizes {
                    name: entry.name.clone(),
                    resolution: cfg.sample_size,
                    low_res: cfg.low_res_size,
                    block_channels: cfg.block_channels.clone(),
                    parameters: unet_tensors(cfg)
                        .iter()
                        .map(|(_, s)| s.iter().product::<usize>())
                        .sum(),
                });
            }
            progress(&format!("stage {} on {name}: warm-up", entry.name));
            stage.step()?;
            let step_case = format!("step:{}", entry.name);
            let encode_case = format!("encode:{}", entry.name);
            if let Some(s) = with_torch.as_deref_mut()
                && let Err(e) = s.time(&step_case, 1)
            {
                torch_error = Some(e);
                with_torch = None;
                server = None;
            }
            let mut times = Vec::new();
            let mut torch_times = Vec::new();
            for run in 0..runs {
                progress(&format!(
                    "stage {} on {name}: step {}/{runs}",
                    entry.name,
                    run + 1
                ));
                std::thread::sleep(SETTLE);
                times.push(stage.step()?);
                if let Some(s) = with_torch.as_deref_mut() {
                    std::thread::sleep(SETTLE);
                    match s.time(&step_case, 1) {
                        Ok(t) => torch_times.extend(t),
                        Err(e) => {
                            torch_error = Some(e);
                            with_torch = None;
                        }
                    }
                }
            }
            let mut encode_times = Vec::new();
            let mut torch_encode = Vec::new();
            for _ in 0..runs.min(3) {
                std::thread::sleep(SETTLE);
                encode_times.push(stage.timed_encode()?);
                if let Some(s) = with_torch.as_deref_mut() {
                    std::thread::sleep(SETTLE);
                    match s.time(&encode_case, 1) {
                        Ok(t) => torch_encode.extend(t),
                        Err(e) => {
                            torch_error = Some(e);
                            with_torch = None;
                        }
                    }
                }
            }
            steps.push(step_row(&entry.name, &name, rows, times));
            encode.push(encode_row(&entry.name, &name, opts.k, encode_times));
            if !torch_times.is_empty() {
                torch_steps.push(step_row(&entry.name, "torch", rows, torch_times));
            }
            if !torch_encode.is_empty() {
                encode.push(encode_row(&entry.name, "torch", opts.k, torch_encode));
            }
        }
        if opts.cascade {
            progress(&format!(
                "cascade on {name}: {} steps per stage",
                opts.steps
            ));
            match ReImagen::open(&sub_cascade, device) {
                Ok(model) => {
                    let mut request = GenerationRequest::new(PROMPT);
                    request.steps = vec![opts.steps];
                    request.batch_size = opts.batch;
                    request.neighbours = neighbours(opts.k);
                    let start = Instant::now();
                    model.generate(&request, &mut NoObserver, &CancelToken::new())?;
                    let secs = start.elapsed().as_secs_f64();
                    cascade.push(CascadeCase {
                        device: name.clone(),
                        stages: selected.iter().map(|e| e.name.clone()).collect(),
                        steps_per_stage: opts.steps,
                        secs_total: secs,
                        secs_per_image: secs / opts.batch as f64,
                    });
                }
                Err(e) => {
                    cascade_skipped = Some(format!("the selected stages are no cascade: {e}"))
                }
            }
        }
        if let Some(kib) = peak_rss_kib() {
            memory.push(MemoryCase {
                device: name,
                peak_rss_mib: kib as f64 / 1024.0,
                reset,
            });
        }
    }
    // The server answers the pseudo-case `rss` with its peak resident set (KiB) as the one
    // "time" of the reply.
    let torch_peak_rss_mib = server
        .as_mut()
        .and_then(|s| s.time("rss", 1).ok())
        .and_then(|t| t.first().map(|kib| kib / 1024.0));
    drop(server);
    for s in &mut steps {
        s.vs_torch = torch_steps
            .iter()
            .find(|t| t.stage == s.stage)
            .map(|t| s.steps_per_sec / t.steps_per_sec);
    }
    steps.extend(torch_steps);
    if torch_error.is_some() {
        torch = None;
    }
    Ok(GenerateBenchReport {
        model: model_name,
        stages: sizes,
        batch: opts.batch,
        neighbours: opts.k,
        branches,
        cpu_threads: rayon::current_num_threads(),
        torch,
        torch_error,
        torch_peak_rss_mib,
        steps,
        encode,
        cascade,
        cascade_skipped,
        memory,
    })
}

fn step_row(stage: &str, device: &str, rows: usize, times: Vec<f64>) -> StepCase {
    let runs = times.len();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    let m = median(times);
    StepCase {
        stage: stage.into(),
        device: device.into(),
        rows,
        steps_per_sec: 1.0 / m,
        step_ms_median: m * 1e3,
        step_ms_min: min * 1e3,
        step_ms_max: max * 1e3,
        runs,
        vs_torch: None,
    }
}

fn encode_row(stage: &str, device: &str, k: usize, times: Vec<f64>) -> EncodeCase {
    let runs = times.len();
    EncodeCase {
        stage: stage.into(),
        device: device.into(),
        neighbours: k,
        encode_ms_median: median(times) * 1e3,
        runs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reimagen")
    }

    #[test]
    fn the_tensor_list_matches_the_reference_export() {
        for stage in ["base", "sr"] {
            let dir = fixture().join(stage);
            let cfg = UNetConfig::from_file(&dir.join("config.json")).unwrap();
            let weights = crate::tensor::Weights::open(&dir, &Device::Cpu).unwrap();
            let ours = unet_tensors(&cfg);
            let mut names: Vec<String> = ours.iter().map(|(n, _)| n.clone()).collect();
            let mut theirs = weights.names();
            names.sort();
            theirs.sort();
            assert_eq!(names, theirs, "{stage}");
            for (name, shape) in ours {
                assert_eq!(weights.info(&name).unwrap().1, shape, "{stage}: {name}");
            }
        }
    }

    #[test]
    fn the_random_cascade_opens_as_the_shipped_configs() {
        let dir = tempfile::tempdir().unwrap();
        let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/clip");
        let folder = write_random_cascade(dir.path(), &clip).unwrap();
        let model = ReImagen::open(&folder, &Device::Cpu).unwrap();
        let sizes: Vec<(usize, Option<usize>)> = model
            .stage_list()
            .iter()
            .map(|s| {
                (
                    s.unet().config().sample_size,
                    s.unet().config().low_res_size,
                )
            })
            .collect();
        assert_eq!(sizes, [(32, None), (64, Some(32)), (256, Some(64))]);
        let base = model.stage_list()[0].unet().config();
        assert_eq!(base.block_channels, [32, 64, 64]);
        assert_eq!(base.text_dim, 192, "the shipped CLIP's width");
    }
}
