//! `reimagen bench clip`: how fast CLIP embeds, on the CPU backend and a wgpu adapter side by
//! side with PyTorch running the same config in the same run (`training/bench_clip.py`), and
//! what `import` sustains with an embedder against without one.
//!
//! The model is the ViT-B/32 config (`openai/clip-vit-base-patch32`'s sizes) with random
//! weights written to a temporary folder, the shipped small CLIP (`models/clip`), or any model
//! folder. The towers are timed from ready inputs — `pixel_values` of the model's image size
//! and token batches of its full context — so both sides do the same work: preprocessing and
//! tokenising are left out there, and counted in the import figures. Each tower has one warm-up
//! per device and for PyTorch (at the first batch size), then each case runs in rounds in which
//! every device and PyTorch run once in turn (the rule of `bench kernels`): at least 3 rounds
//! (2 above batch 8), at most 10, none started after 5 s; medians are reported.
//!
//! Not here: the model itself (`embed/clip/`), the kernel benchmark (`tensor/bench.rs`, whose
//! PyTorch server this reuses).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::embed::ClipEmbedder;
use crate::embed::clip::{ClipConfig, ClipError, ClipModel, TokenBatch, WeightPrecision};
use crate::error::{Error, ModelError, Result, io_err};
use crate::kb::KnowledgeBase;
use crate::tensor::bench::{SETTLE, TorchServer, device_name, median};
use crate::tensor::{Device, DeviceChoice, Tensor};

/// A CLIP failure (loading, running, or the runtime under it) of the model `model`.
fn clip_err(model: &Path) -> impl Fn(ClipError) -> Error + '_ {
    move |source| {
        Error::Model(ModelError::Clip {
            model: model.display().to_string(),
            source,
        })
    }
}

fn runtime_err(model: &Path) -> impl Fn(crate::tensor::TensorError) -> Error + '_ {
    move |e| clip_err(model)(e.into())
}

/// Which CLIP to time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClipBenchModel {
    /// The ViT-B/32 config with random weights (made in a temporary folder, never kept).
    VitB32,
    /// A model folder in transformers' layout (its own weights).
    Folder(PathBuf),
}

impl std::str::FromStr for ClipBenchModel {
    type Err = std::convert::Infallible;

    /// `vit-b32`, `shipped` (the folder `models/clip`), or a folder.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "vit-b32" | "vit-b/32" | "ViT-B/32" => ClipBenchModel::VitB32,
            "shipped" => ClipBenchModel::Folder(PathBuf::from(SHIPPED)),
            dir => ClipBenchModel::Folder(PathBuf::from(dir)),
        })
    }
}

/// Where the shipped small CLIP lives, relative to the repository root.
pub const SHIPPED: &str = "models/clip";

/// Settings of a `bench clip` run.
#[derive(Clone, Debug)]
pub struct ClipBenchOptions {
    /// The model the towers are timed on.
    pub model: ClipBenchModel,
    /// Devices side by side; empty: the CPU backend and, when wgpu finds one, the best adapter.
    pub devices: Vec<DeviceChoice>,
    /// Batch sizes (1 and 32).
    pub batches: Vec<usize>,
    /// A Python with PyTorch and transformers for the baseline; none by default.
    pub torch_python: Option<String>,
    /// The baseline script (`training/bench_clip.py`, relative to the working folder).
    pub torch_script: PathBuf,
    /// The device PyTorch runs on (`cpu` or `cuda`).
    pub torch_device: String,
    /// Pairs each import measurement ingests (0: no import figures).
    pub import_pairs: usize,
    /// Models to import with, beside the import without an embedder: by default the model under
    /// test and the shipped CLIP when it is found.
    pub import_models: Vec<ClipBenchModel>,
    /// The shipped CLIP's folder (its tokenizer also serves the random ViT-B/32).
    pub shipped: PathBuf,
    /// No new round of a case after this long (at least `min_runs` rounds run).
    pub budget: Duration,
    /// Timed runs per device at batch sizes up to 8 (and at least 2 above).
    pub min_runs: usize,
}

impl Default for ClipBenchOptions {
    fn default() -> Self {
        ClipBenchOptions {
            model: ClipBenchModel::VitB32,
            devices: Vec::new(),
            batches: vec![1, 32],
            torch_python: None,
            torch_script: PathBuf::from("training/bench_clip.py"),
            torch_device: "cpu".into(),
            import_pairs: 256,
            import_models: vec![
                ClipBenchModel::VitB32,
                ClipBenchModel::Folder(PathBuf::from(SHIPPED)),
            ],
            shipped: PathBuf::from(SHIPPED),
            budget: Duration::from_secs(5),
            min_runs: 3,
        }
    }
}

/// The sizes of the model under test.
#[derive(Clone, Debug, Serialize)]
pub struct ClipSizes {
    /// `vit-b32 (random weights)` or the folder.
    pub name: String,
    /// Vision width × layers × heads.
    pub vision: [usize; 3],
    /// Image side in pixels and patch side.
    pub image: [usize; 2],
    /// Text width × layers × heads.
    pub text: [usize; 3],
    /// Tokens per text (the full context).
    pub context: usize,
    /// Embedding width.
    pub projection_dim: usize,
}

/// One tower at one batch size on one device (or PyTorch).
#[derive(Clone, Debug, Serialize)]
pub struct ClipCase {
    /// `image` or `text`.
    pub tower: String,
    /// Inputs per forward.
    pub batch: usize,
    /// `cpu`, the adapter's name, or `torch`.
    pub device: String,
    /// Median wall time of one forward, in milliseconds.
    pub median_ms: f64,
    /// Inputs per second at the median.
    pub per_sec: f64,
    /// Timed runs.
    pub runs: usize,
    /// `per_sec` over PyTorch's on the same case, when it ran.
    pub vs_torch: Option<f64>,
}

/// `import` of one folder of image + caption files.
#[derive(Clone, Debug, Serialize)]
pub struct ImportRate {
    /// `none`, or the model.
    pub embedder: String,
    /// The device the embedder ran on (`-` without one).
    pub device: String,
    /// Pairs imported.
    pub pairs: usize,
    /// Wall time of the import (decode, embed, store, index).
    pub secs: f64,
    /// Pairs per second.
    pub pairs_per_sec: f64,
}

/// What `bench clip` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ClipBenchReport {
    /// The model under test.
    pub model: ClipSizes,
    /// Threads of the CPU backend.
    pub cpu_threads: usize,
    /// PyTorch's version, device and threads, when it ran.
    pub torch: Option<String>,
    /// Why the baseline is missing, when it was asked for and failed.
    pub torch_error: Option<String>,
    /// One per tower, batch and device.
    pub cases: Vec<ClipCase>,
    /// Import throughput per embedder.
    pub import: Vec<ImportRate>,
}

impl std::fmt::Display for ClipBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.model;
        writeln!(
            f,
            "model {}: vision {}×{}×{} ({} px, patch {}), text {}×{}×{} ({} tokens), embeddings {}",
            m.name,
            m.vision[0],
            m.vision[1],
            m.vision[2],
            m.image[0],
            m.image[1],
            m.text[0],
            m.text[1],
            m.text[2],
            m.context,
            m.projection_dim
        )?;
        writeln!(f, "CPU backend threads: {}", self.cpu_threads)?;
        if let Some(t) = &self.torch {
            writeln!(f, "torch: {t}")?;
        }
        if let Some(e) = &self.torch_error {
            writeln!(f, "torch: baseline failed: {e}")?;
        }
        writeln!(
            f,
            "{:<6} {:>5}  {:<36} {:>10} {:>10} {:>5} {:>9}",
            "tower", "batch", "device", "per s", "median ms", "runs", "vs torch"
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "{:<6} {:>5}  {:<36} {:>10.2} {:>10.1} {:>5} {:>9}",
                c.tower,
                c.batch,
                c.device,
                c.per_sec,
                c.median_ms,
                c.runs,
                c.vs_torch.map_or("-".to_string(), |r| format!("{r:.2}×"))
            )?;
        }
        for i in &self.import {
            writeln!(
                f,
                "import {} pairs, embedder {} on {}: {:.1} s ({:.1} pairs/s)",
                i.pairs, i.embedder, i.device, i.secs, i.pairs_per_sec
            )?;
        }
        Ok(())
    }
}

/// `openai/clip-vit-base-patch32`'s config (transformers' `CLIPConfig` keys), with the
/// tokenizer's start and end ids of the folder whose tokenizer it borrows.
fn vit_b32_config(bos: u32, eos: u32) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 512,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model",
            "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
            "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
            "num_hidden_layers": 12, "image_size": 224, "patch_size": 32, "num_channels": 3,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 512
        }
    })
}

/// Every tensor of a `CLIPModel` of `c`, by transformers' name, with its shape.
fn clip_tensors(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let mut encoder = |tower: &str, width: usize, inner: usize, layers: usize| {
        for i in 0..layers {
            let l = format!("{tower}.encoder.layers.{i}");
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                out.push((format!("{l}.self_attn.{p}.weight"), vec![width, width]));
                out.push((format!("{l}.self_attn.{p}.bias"), vec![width]));
            }
            for n in ["layer_norm1", "layer_norm2"] {
                out.push((format!("{l}.{n}.weight"), vec![width]));
                out.push((format!("{l}.{n}.bias"), vec![width]));
            }
            out.push((format!("{l}.mlp.fc1.weight"), vec![inner, width]));
            out.push((format!("{l}.mlp.fc1.bias"), vec![inner]));
            out.push((format!("{l}.mlp.fc2.weight"), vec![width, inner]));
            out.push((format!("{l}.mlp.fc2.bias"), vec![width]));
        }
    };
    let (t, v) = (&c.text, &c.vision);
    encoder(
        "text_model",
        t.hidden_size,
        t.intermediate_size,
        t.num_hidden_layers,
    );
    encoder(
        "vision_model",
        v.hidden_size,
        v.intermediate_size,
        v.num_hidden_layers,
    );
    let positions = v.patches_per_side() * v.patches_per_side() + 1;
    out.extend([
        (
            "text_model.embeddings.token_embedding.weight".into(),
            vec![t.vocab_size, t.hidden_size],
        ),
        (
            "text_model.embeddings.position_embedding.weight".into(),
            vec![t.max_position_embeddings, t.hidden_size],
        ),
        (
            "text_model.final_layer_norm.weight".into(),
            vec![t.hidden_size],
        ),
        (
            "text_model.final_layer_norm.bias".into(),
            vec![t.hidden_size],
        ),
        (
            "vision_model.embeddings.class_embedding".into(),
            vec![v.hidden_size],
        ),
        (
            "vision_model.embeddings.patch_embedding.weight".into(),
            vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".into(),
            vec![positions, v.hidden_size],
        ),
        // Sic: transformers' spelling.
        (
            "vision_model.pre_layrnorm.weight".into(),
            vec![v.hidden_size],
        ),
        ("vision_model.pre_layrnorm.bias".into(), vec![v.hidden_size]),
        (
            "vision_model.post_layernorm.weight".into(),
            vec![v.hidden_size],
        ),
        (
            "vision_model.post_layernorm.bias".into(),
            vec![v.hidden_size],
        ),
        (
            "text_projection.weight".into(),
            vec![c.projection_dim, t.hidden_size],
        ),
        (
            "visual_projection.weight".into(),
            vec![c.projection_dim, v.hidden_size],
        ),
        ("logit_scale".into(), vec![]),
    ]);
    out
}

/// Writes the ViT-B/32 config with random f16 weights into `dir`; returns `dir`.
fn write_vit_b32(dir: &Path, shipped: &Path) -> Result<PathBuf> {
    let config = write_vit_b32_config(dir, shipped)?;
    write_random_weights(&dir.join("model.safetensors"), &config)?;
    Ok(dir.to_path_buf())
}

/// Writes the ViT-B/32 `config.json`, the shipped tokenizer and a 224-pixel processor config
/// into `dir`.
fn write_vit_b32_config(dir: &Path, shipped: &Path) -> Result<ClipConfig> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let from = shipped.join(f);
        if !from.is_file() {
            return Err(Error::Config {
                path: from,
                reason: "the random ViT-B/32 borrows the shipped CLIP's tokenizer; run from the \
                         repository root or give --shipped DIR"
                    .into(),
            });
        }
        std::fs::copy(&from, dir.join(f)).map_err(io_err(&from))?;
    }
    let shipped_config =
        ClipConfig::from_file(shipped.join("config.json")).map_err(clip_err(shipped))?;
    let eos = shipped_config.text.eos_token_id;
    let config = vit_b32_config(eos.saturating_sub(1), eos);
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).map_err(io_err(&path))?;
    let processor = serde_json::json!({
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": true,
        "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor", "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}
    });
    let path = dir.join("preprocessor_config.json");
    std::fs::write(&path, processor.to_string()).map_err(io_err(&path))?;

    ClipConfig::from_file(dir.join("config.json")).map_err(clip_err(dir))
}

/// Writes random f16 weights for every tensor of `config` (a sum of two uniforms, σ ≈ 0.02;
/// norms at 1 and 0): speed does not depend on the values.
fn write_random_weights(path: &Path, config: &ClipConfig) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = clip_tensors(config)
        .into_par_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            // Layer norms (transformers spells the vision one `pre_layrnorm`).
            let norm = name.contains("norm");
            let bytes: Vec<u8> = (0..n)
                .flat_map(|i| {
                    let x = if norm {
                        if name.ends_with("weight") { 1.0 } else { 0.0 }
                    } else {
                        // A sum of two uniforms: cheap, centred, σ ≈ 0.02.
                        let h = |s: u64| {
                            let mut x = (i as u64) ^ ((k as u64) << 40) ^ s;
                            x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                            x ^= x >> 29;
                            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                        };
                        (h(1) + h(2)) * 0.05
                    };
                    half::f16::from_f32(x).to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Query(format!("random ViT-B/32 weights: {e}")))?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| Error::Query(format!("{}: {e}", path.display())))
}

/// The folder of a model, writing the random ViT-B/32 under `work` when asked for it.
fn model_folder(model: &ClipBenchModel, work: &Path, shipped: &Path) -> Result<PathBuf> {
    match model {
        ClipBenchModel::Folder(dir) => Ok(dir.clone()),
        ClipBenchModel::VitB32 => {
            let dir = work.join("vit-b32");
            if dir.join("model.safetensors").is_file() {
                return Ok(dir);
            }
            write_vit_b32(&dir, shipped)
        }
    }
}

fn model_name(model: &ClipBenchModel) -> String {
    match model {
        ClipBenchModel::VitB32 => "vit-b32 (random weights)".into(),
        ClipBenchModel::Folder(dir) => dir.display().to_string(),
    }
}

/// Token ids of `batch` texts of the full context: start, random words, end of text.
fn tokens(c: &ClipConfig, batch: usize) -> TokenBatch {
    let len = c.text.max_position_embeddings;
    let eos = c.text.eos_token_id;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut ids = Vec::with_capacity(batch * len);
    for _ in 0..batch {
        ids.push(eos.saturating_sub(1));
        for _ in 1..len - 1 {
            ids.push(rng.random_range(0..eos.saturating_sub(1).max(1)));
        }
        ids.push(eos);
    }
    TokenBatch {
        ids,
        mask: vec![1; batch * len],
        batch,
        len,
    }
}

/// `pixel_values` of `batch` images, values like normalised pixels.
fn pixels(c: &ClipConfig, batch: usize, device: &Device) -> Result<Tensor> {
    let s = c.vision.image_size;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let data: Vec<f32> = (0..batch * 3 * s * s)
        .map(|_| rng.random_range(-1.8f32..2.1))
        .collect();
    Tensor::from_vec(data, &[batch, 3, s, s], device)
        .map_err(runtime_err(Path::new("pixel_values")))
}

/// One tower's inputs on one device, ready to run.
enum Inputs {
    Image(Tensor),
    Text(TokenBatch),
}

fn forward(model: &ClipModel, inputs: &Inputs) -> Result<f64> {
    let start = Instant::now();
    let out = match inputs {
        Inputs::Image(p) => model.image_features(p),
        Inputs::Text(t) => model.text_features(t),
    }
    .map_err(clip_err(model.folder()))?;
    model
        .device()
        .synchronize()
        .map_err(runtime_err(model.folder()))?;
    let secs = start.elapsed().as_secs_f64();
    drop(out);
    Ok(secs)
}

#[derive(serde::Deserialize)]
struct TorchHeader {
    torch_version: String,
    transformers_version: String,
    device: String,
    threads: usize,
}

/// Runs the benchmark; the random ViT-B/32 is written under `work`. `progress` gets a line per
/// phase.
///
/// # Errors
/// A device that cannot be opened, a model folder that does not load, an import that fails. A
/// failing PyTorch baseline is not an error: it is reported in `torch_error`.
pub fn run_clip(
    work: &Path,
    opts: &ClipBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<ClipBenchReport> {
    let mut devices: Vec<Device> = Vec::new();
    if opts.devices.is_empty() {
        devices.push(Device::Cpu);
        if let Ok(d) = Device::gpu() {
            devices.push(d);
        }
    } else {
        for &choice in &opts.devices {
            devices.push(Device::from_choice(choice).map_err(runtime_err(Path::new("--device")))?);
        }
    }
    progress("preparing the model");
    let folder = model_folder(&opts.model, work, &opts.shipped)?;
    let load = |device: &Device| {
        ClipModel::load(&folder, device.clone(), WeightPrecision::F32).map_err(clip_err(&folder))
    };
    let models: Vec<ClipModel> = devices.iter().map(load).collect::<Result<_>>()?;
    let config = models
        .first()
        .map(|m| m.config().clone())
        .ok_or_else(|| Error::Query("no device to run on".into()))?;

    let (mut server, mut torch, mut torch_error) = (None, None, None);
    if let Some(python) = &opts.torch_python {
        progress("starting PyTorch");
        let folder = folder.display().to_string();
        match TorchServer::spawn(
            python,
            &opts.torch_script,
            &["--config", &folder, "--device", &opts.torch_device],
        )
        .and_then(TorchServer::header::<TorchHeader>)
        {
            Ok((s, h)) => {
                server = Some(s);
                torch = Some(format!(
                    "PyTorch {} + transformers {} on {}, {} threads",
                    h.torch_version, h.transformers_version, h.device, h.threads
                ));
            }
            Err(e) => torch_error = Some(e),
        }
    }

    let mut cases = Vec::new();
    for tower in ["image", "text"] {
        for &batch in &opts.batches {
            progress(&format!("{tower} tower, batch {batch}"));
            let inputs: Vec<Inputs> = devices
                .iter()
                .map(|d| {
                    Ok(if tower == "image" {
                        Inputs::Image(pixels(&config, batch, d)?)
                    } else {
                        Inputs::Text(tokens(&config, batch))
                    })
                })
                .collect::<Result<_>>()?;
            let name = format!("{tower}_b{batch}");
            // One warm-up per tower (pipelines compile, the pool fills); a larger batch reuses
            // them, and its runs are long enough that a second warm-up would cost minutes on
            // a software adapter.
            let warm = Some(&batch) == opts.batches.first();
            for (m, x) in models.iter().zip(&inputs).filter(|_| warm) {
                forward(m, x)?;
            }
            if warm
                && let Some(s) = server.as_mut()
                && let Err(e) = s.time(&name, 1)
            {
                torch_error = Some(e);
                server = None;
            }
            let min_runs = if batch > 8 {
                opts.min_runs.min(2)
            } else {
                opts.min_runs
            }
            .max(1);
            let mut times = vec![Vec::new(); devices.len()];
            let mut torch_times = Vec::new();
            let start = Instant::now();
            for round in 0..10 {
                if round >= min_runs && start.elapsed() > opts.budget {
                    break;
                }
                for ((m, x), t) in models.iter().zip(&inputs).zip(&mut times) {
                    std::thread::sleep(SETTLE);
                    t.push(forward(m, x)?);
                }
                if let Some(s) = server.as_mut() {
                    std::thread::sleep(SETTLE);
                    match s.time(&name, 1) {
                        Ok(t) => torch_times.extend(t),
                        Err(e) => {
                            torch_error = Some(e);
                            server = None;
                        }
                    }
                }
            }
            let row = |device: String, t: Vec<f64>| {
                let runs = t.len();
                let m = median(t);
                ClipCase {
                    tower: tower.into(),
                    batch,
                    device,
                    median_ms: m * 1e3,
                    per_sec: batch as f64 / m,
                    runs,
                    vs_torch: None,
                }
            };
            let torch_row = (!torch_times.is_empty()).then(|| row("torch".into(), torch_times));
            for (d, t) in devices.iter().zip(times) {
                let mut r = row(device_name(d), t);
                r.vs_torch = torch_row.as_ref().map(|p| r.per_sec / p.per_sec);
                cases.push(r);
            }
            cases.extend(torch_row);
        }
    }
    drop(server);
    drop(models);
    if torch_error.is_some() {
        torch = None;
    }

    let mut import = Vec::new();
    if opts.import_pairs > 0 {
        progress("writing the import folder");
        let photos = work.join("photos");
        write_photos(&photos, opts.import_pairs)?;
        let mut embedders = vec![None];
        for m in &opts.import_models {
            let dir = match m {
                ClipBenchModel::Folder(d) if !d.join("config.json").is_file() => continue,
                m => model_folder(m, work, &opts.shipped)?,
            };
            if !embedders.contains(&Some((model_name(m), dir.clone()))) {
                embedders.push(Some((model_name(m), dir)));
            }
        }
        for (k, e) in embedders.into_iter().enumerate() {
            let label = e.as_ref().map_or("none".to_string(), |(n, _)| n.clone());
            progress(&format!("importing with embedder {label}"));
            let mut builder = KnowledgeBase::builder(work.join(format!("kb-{k}"))).create(true);
            let mut device = "-".to_string();
            if let Some((_, dir)) = &e {
                let d = Device::from_env().map_err(runtime_err(dir))?;
                device = device_name(&d);
                let embedder =
                    ClipEmbedder::open(dir, d, WeightPrecision::F32).map_err(clip_err(dir))?;
                builder = builder.embedder(Arc::new(embedder));
            }
            let kb = builder.open()?;
            let start = Instant::now();
            let report = kb.import_dir(&photos, &|_| {})?;
            let secs = start.elapsed().as_secs_f64();
            if let Some((path, reason)) = report.failed.first() {
                return Err(Error::Query(format!(
                    "import refused {}: {reason}",
                    path.display()
                )));
            }
            import.push(ImportRate {
                embedder: label,
                device,
                pairs: report.added,
                secs,
                pairs_per_sec: report.added as f64 / secs,
            });
        }
    }

    let (t, v) = (&config.text, &config.vision);
    Ok(ClipBenchReport {
        model: ClipSizes {
            name: model_name(&opts.model),
            vision: [v.hidden_size, v.num_hidden_layers, v.num_attention_heads],
            image: [v.image_size, v.patch_size],
            text: [t.hidden_size, t.num_hidden_layers, t.num_attention_heads],
            context: t.max_position_embeddings,
            projection_dim: config.projection_dim,
        },
        cpu_threads: rayon::current_num_threads(),
        torch,
        torch_error,
        cases,
        import,
    })
}

/// Words the import captions are made of.
const WORDS: &[&str] = &[
    "red", "green", "blue", "small", "large", "dog", "cat", "face", "house", "tree", "sun", "moon",
    "star", "flag", "hand", "heart", "car", "boat", "cup", "book", "smiling", "running", "old",
    "new", "bright", "dark", "round", "square", "flat", "style",
];

/// `pairs` 256×256 PNGs (smooth colour fields with a seeded disc, like the dataset's
/// renditions in size) with a caption file each.
fn write_photos(dir: &Path, pairs: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    (0..pairs).into_par_iter().try_for_each(|i| {
        let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
        let base: [u8; 3] = rng.random();
        let (cx, cy, r) = (
            rng.random_range(40..216i32),
            rng.random_range(40..216i32),
            rng.random_range(20..90i32),
        );
        let img = RgbImage::from_fn(256, 256, |x, y| {
            let (dx, dy) = (x as i32 - cx, y as i32 - cy);
            if dx * dx + dy * dy < r * r {
                Rgb([255 - base[0], 255 - base[1], 255 - base[2]])
            } else {
                Rgb([
                    base[0].wrapping_add((x / 4) as u8),
                    base[1].wrapping_add((y / 4) as u8),
                    base[2],
                ])
            }
        });
        let path = dir.join(format!("{i:05}.png"));
        DynamicImage::ImageRgb8(img)
            .save_with_format(&path, ImageFormat::Png)
            .map_err(|e| Error::Query(format!("{}: {e}", path.display())))?;
        let caption: Vec<&str> = (0..8)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let text = dir.join(format!("{i:05}.txt"));
        std::fs::write(&text, caption.join(" ")).map_err(io_err(&text))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_parse() {
        assert_eq!("vit-b32".parse(), Ok(ClipBenchModel::VitB32));
        assert_eq!(
            "shipped".parse(),
            Ok(ClipBenchModel::Folder(PathBuf::from(SHIPPED)))
        );
        assert_eq!(
            "/x/y".parse(),
            Ok(ClipBenchModel::Folder(PathBuf::from("/x/y")))
        );
    }

    #[test]
    fn the_tensor_list_matches_the_shipped_export_and_vit_b32_sizes() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED);
        let dir = tempfile::tempdir().unwrap();
        // The tensor list of the shipped config names every tensor its real export holds.
        let config = ClipConfig::from_file(shipped.join("config.json")).unwrap();
        let weights = crate::tensor::Weights::open(&shipped, &Device::Cpu).unwrap();
        let mut ours: Vec<String> = clip_tensors(&config).into_iter().map(|(n, _)| n).collect();
        let mut theirs = weights.names();
        theirs.retain(|n| !n.ends_with("position_ids"));
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        for (name, shape) in clip_tensors(&config) {
            assert_eq!(weights.info(&name).unwrap().1, shape, "{name}");
        }
        let config = write_vit_b32_config(dir.path(), &shipped).unwrap();
        assert_eq!(
            (config.vision.image_size, config.vision.patch_size),
            (224, 32)
        );
        assert_eq!(config.text.max_position_embeddings, 77);
        let total: usize = clip_tensors(&config)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // openai/clip-vit-base-patch32 has 151,277,313 parameters.
        assert_eq!(total, 151_277_313);
    }
}
