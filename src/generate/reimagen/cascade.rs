//! The cascade (docs/generator.md §2, §6; issue 9 point 4): [`ReImagen::open`] reads
//! `cascade.json` and each stage folder it lists (config, weights, the CLIP text encoder it
//! names), and [`ReImagen`] implements [`Generator`]: per stage, the prompt's (and negative
//! prompt's) text states, the neighbours resized to the stage's resolution (box filter) and
//! encoded once (through the [`FeatureCache`]), x_T from [`Tensor::randn`] with the request's
//! seed, an SR stage's low-res input (the lower stage's output, noise-augmented at
//! `noise_aug_level`), and the sampler over [`UNetBranches`], the [`BranchModel`] that runs all
//! branches of a step in one UNet call.
//!
//! Not here: the network (`unet.rs`), the samplers and guidance (`crate::generate::sampler`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use serde::Deserialize;

use crate::generate::guidance::Branch;
use crate::generate::sampler::{BranchModel, Schedule, SeededDraws, StageSampling, sample_stage};
use crate::generate::{
    CancelToken, GenerateError, GenerationObserver, GenerationOutput, GenerationRequest, Generator,
    Neighbour, Provenance, Result, StageImages, StageInfo, tensor_to_images,
};
use crate::tensor::{Device, Tensor};

use super::cache::{CacheKey, Digest, FeatureCache, item_key, model_key};
use super::config::model_error;
use super::text::TextEncoder;
use super::unet::{NeighbourContext, NeighbourFeatures, TextCondition, UNet, UNetInput};

/// `cascade.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CascadeFile {
    format: String,
    version: u32,
    stages: Vec<StageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageEntry {
    name: String,
    path: String,
    resolution: usize,
}

/// One stage of a cascade: its UNet, schedule and text encoder.
#[derive(Debug)]
pub struct Stage {
    name: String,
    folder: PathBuf,
    unet: UNet,
    schedule: Schedule,
    text: Arc<TextEncoder>,
    model_key: Digest,
}

impl Stage {
    /// The stage's name (from cascade.json).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Its UNet.
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// Its schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Its text encoder.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The key its cached neighbour features are stored under.
    pub fn model_key(&self) -> &Digest {
        &self.model_key
    }
}

/// The Re-Imagen cascade of a model folder, on one device.
#[derive(Debug)]
pub struct ReImagen {
    name: String,
    stages: Vec<Stage>,
    device: Device,
    cache: Arc<FeatureCache>,
}

impl ReImagen {
    /// Opens the model folder `folder` (holding `cascade.json`) onto `device`, with a cache of
    /// its own.
    ///
    /// # Errors
    /// [`GenerateError::Model`] naming the file and the reason: a missing or malformed
    /// cascade.json, a stage whose resolution does not match its config, a missing or
    /// mis-shaped tensor, an unknown text encoder path.
    pub fn open(folder: &Path, device: &Device) -> Result<ReImagen> {
        ReImagen::open_with_cache(folder, device, Arc::new(FeatureCache::default()))
    }

    /// As [`ReImagen::open`], sharing `cache` (e.g. with another cascade, or to keep the
    /// neighbour features of a model that is reopened).
    ///
    /// # Errors
    /// As [`ReImagen::open`].
    pub fn open_with_cache(
        folder: &Path,
        device: &Device,
        cache: Arc<FeatureCache>,
    ) -> Result<ReImagen> {
        let path = folder.join("cascade.json");
        let text = std::fs::read_to_string(&path).map_err(|e| model_error(&path, e.to_string()))?;
        let file: CascadeFile =
            serde_json::from_str(&text).map_err(|e| model_error(&path, e.to_string()))?;
        if file.format != "reimagen-cascade" || file.version != 1 {
            return Err(model_error(
                &path,
                format!(
                    "format {:?} version {} is not reimagen-cascade version 1",
                    file.format, file.version
                ),
            ));
        }
        if file.stages.is_empty() {
            return Err(model_error(&path, "key `stages` lists no stage"));
        }
        let mut encoders: HashMap<(PathBuf, usize), Arc<TextEncoder>> = HashMap::new();
        let mut stages: Vec<Stage> = Vec::with_capacity(file.stages.len());
        for (i, entry) in file.stages.iter().enumerate() {
            let stage_folder = folder.join(&entry.path);
            let unet = UNet::open(&stage_folder, device)?;
            let cfg = unet.config();
            let config_path = stage_folder.join("config.json");
            if cfg.sample_size != entry.resolution {
                return Err(model_error(
                    &path,
                    format!(
                        "stages[{i}].resolution is {} but {} has sample_size {}",
                        entry.resolution,
                        config_path.display(),
                        cfg.sample_size
                    ),
                ));
            }
            let expected_low = stages.last().map(|s| s.unet.config().sample_size);
            if cfg.low_res_size != expected_low {
                return Err(model_error(
                    &config_path,
                    format!(
                        "key `low_res_size` is {:?}; stage {i} of the cascade needs {:?} (the \
                         previous stage's resolution, or null for the first)",
                        cfg.low_res_size, expected_low
                    ),
                ));
            }
            let schedule = Schedule::new(cfg.schedule(&config_path)?)
                .map_err(|e| model_error(&config_path, e.to_string()))?;
            let text_folder = stage_folder.join(&cfg.text_encoder);
            let canonical = text_folder.canonicalize().map_err(|e| {
                model_error(
                    &config_path,
                    format!("key `text_encoder` names {}: {e}", text_folder.display()),
                )
            })?;
            let text = match encoders.get(&(canonical.clone(), cfg.text_max_length)) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(TextEncoder::open(&canonical, cfg.text_max_length, device)?);
                    encoders.insert((canonical.clone(), cfg.text_max_length), t.clone());
                    t
                }
            };
            if text.dim() != cfg.text_dim {
                return Err(model_error(
                    &config_path,
                    format!(
                        "key `text_dim` is {} but the text encoder {} has hidden_size {}",
                        cfg.text_dim,
                        canonical.display(),
                        text.dim()
                    ),
                ));
            }
            let model_key = model_key(&[&stage_folder, &canonical])?;
            stages.push(Stage {
                name: entry.name.clone(),
                folder: stage_folder,
                unet,
                schedule,
                text,
                model_key,
            });
        }
        Ok(ReImagen {
            name: folder.display().to_string(),
            stages,
            device: device.clone(),
            cache,
        })
    }

    /// The stages, lowest resolution first.
    pub fn stage_list(&self) -> &[Stage] {
        &self.stages
    }

    /// Drops the stages whose resolution is above `resolution` (the first stage always stays),
    /// so that generation stops there; returns the names of the stages dropped.
    pub fn keep_up_to(&mut self, resolution: usize) -> Vec<String> {
        let keep = self
            .stages
            .iter()
            .skip(1)
            .take_while(|s| s.unet.config().sample_size <= resolution)
            .count()
            + 1;
        self.stages
            .split_off(keep.min(self.stages.len()))
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The neighbour-feature cache.
    pub fn cache(&self) -> &Arc<FeatureCache> {
        &self.cache
    }

    /// The neighbours' features at stage `stage`, from the cache or encoded one by one (so a
    /// neighbour's features never depend on which others it came with).
    ///
    /// # Errors
    /// A runtime or text-encoder failure.
    pub fn neighbour_features(
        &self,
        stage: usize,
        neighbours: &[Neighbour],
    ) -> Result<NeighbourFeatures> {
        let st = &self.stages[stage];
        let s = st.unet.config().sample_size;
        let features = neighbours
            .iter()
            .map(|n| {
                let key = CacheKey {
                    item: item_key(n),
                    model: st.model_key,
                    stage: st.name.clone(),
                    device: self.device.name(),
                };
                self.cache.get_or_encode(key, || {
                    let image = image_tensor(&box_resize(&n.image, s), &self.device)?;
                    let text = st.text.encode(&[n.caption.as_str()])?;
                    st.unet.encode_neighbours(&image, &text)
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&NeighbourFeatures> = features.iter().collect();
        NeighbourFeatures::concat(&refs)
    }

    fn stage_seed(seed: u64, stage: usize) -> u64 {
        seed.wrapping_add((stage as u64).wrapping_mul(0x2545_F491_4F6C_DD1D))
    }
}

/// The seed of an SR stage's noise augmentation, apart from x_T's and the steps'.
const AUG_SEED: u64 = 0xD1B5_4A32_D192_ED03;

impl Generator for ReImagen {
    fn name(&self) -> &str {
        &self.name
    }

    fn stages(&self) -> Vec<StageInfo> {
        self.stages
            .iter()
            .map(|s| StageInfo {
                name: s.name.clone(),
                resolution: s.unet.config().sample_size as u32,
            })
            .collect()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn GenerationObserver,
        cancel: &CancelToken,
    ) -> Result<GenerationOutput> {
        request.validate()?;
        let n = self.stages.len();
        if request.steps.len() > 1 && request.steps.len() != n {
            return Err(GenerateError::InvalidRequest {
                what: "steps",
                reason: format!(
                    "{} entries given for a cascade of {n} stages (give one for all, or one per stage)",
                    request.steps.len()
                ),
            });
        }
        let b = request.batch_size;
        let weights: Vec<f32> = request.neighbours.iter().map(|n| n.weight).collect();
        let mut out = Vec::with_capacity(self.stages.len());
        let mut previous: Option<Tensor> = None;
        for (i, st) in self.stages.iter().enumerate() {
            let cfg = st.unet.config();
            let s = cfg.sample_size;
            let prompt = st.text.encode(&[request.prompt.as_str()])?;
            let negative = match &request.negative_prompt {
                Some(n) => Some(st.text.encode(&[n.as_str()])?),
                None => None,
            };
            let features = self.neighbour_features(i, &request.neighbours)?;
            let context = st.unet.neighbour_context(&features)?;
            let seed = ReImagen::stage_seed(request.seed, i);
            let x_t = Tensor::randn(&[b, 3, s, s], seed, &self.device)?;
            let low_res = match (&previous, cfg.low_res_size) {
                (Some(prev), Some(_)) => {
                    let y = prev.clamp(-1.0, 1.0)?;
                    let a = cfg.noise_aug_level;
                    Some(match a {
                        // a = 0 means no augmentation, as in training.
                        0 => y,
                        _ => {
                            let abar = st.schedule.abar(a as i64);
                            let z = Tensor::randn(y.shape(), seed ^ AUG_SEED, &self.device)?;
                            y.scale(abar.sqrt() as f32)?
                                .add(&z.scale((1.0 - abar).sqrt() as f32)?)?
                        }
                    })
                }
                _ => None,
            };
            let mut model = UNetBranches {
                unet: &st.unet,
                prompt: &prompt,
                negative: negative.as_ref(),
                neighbours: &context,
                weights: &weights,
                low_res: low_res.as_ref(),
                aug: cfg.noise_aug_level as f32,
            };
            let sampling = StageSampling {
                schedule: &st.schedule,
                sampler: request.sampler,
                guidance: &request.guidance,
                steps: request.steps_for_stage(i)?,
                stage: i,
                stages: self.stages.len(),
            };
            let mut draws = SeededDraws::new(seed);
            let x0 = sample_stage(&sampling, &mut model, &mut draws, &x_t, observer, cancel)?;
            out.push(StageImages {
                name: st.name.clone(),
                resolution: s as u32,
                images: tensor_to_images(&x0)?,
            });
            previous = Some(x0);
        }
        Ok(GenerationOutput {
            stages: out,
            provenance: Provenance::of(&self.name, request),
        })
    }
}

/// A stage's UNet with a generation's conditions, as the sampler sees it: every branch of a step
/// in one call, rows branch-major, sharing the neighbour keys; only the text (prompt, negative
/// or dropped) and the neighbour weights (as given, or all 0) differ per branch.
#[derive(Debug, Clone, Copy)]
pub struct UNetBranches<'a> {
    /// The network.
    pub unet: &'a UNet,
    /// The prompt's text condition (one row).
    pub prompt: &'a TextCondition,
    /// The negative prompt's (one row), replacing the dropped text.
    pub negative: Option<&'a TextCondition>,
    /// The neighbours' keys (K neighbours).
    pub neighbours: &'a NeighbourContext,
    /// The K neighbour weights.
    pub weights: &'a [f32],
    /// SR stages: the noise-augmented low-res image, `[B, 3, r, r]`.
    pub low_res: Option<&'a Tensor>,
    /// SR stages: its augmentation level.
    pub aug: f32,
}

impl BranchModel for UNetBranches<'_> {
    fn predict(&mut self, x: &Tensor, t: i64, branches: &[Branch]) -> Result<Tensor> {
        let rows = x.shape().first().copied().unwrap_or(0);
        let n = branches.len().max(1);
        let b = rows / n;
        let k = self.neighbours.count();
        if self.weights.len() != k {
            return Err(GenerateError::InvalidRequest {
                what: "neighbours.weight",
                reason: format!("{} weights for {k} neighbours", self.weights.len()),
            });
        }
        let prompt = self.prompt.repeat_row(0, b)?;
        let dropped = prompt.dropped();
        let negative = match self.negative {
            Some(neg) => Some(neg.repeat_row(0, b)?),
            None => None,
        };
        let mut texts = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(rows * k);
        for branch in branches {
            texts.push(match (branch.keeps_text(), &negative) {
                (true, _) => &prompt,
                (false, Some(neg)) => neg,
                (false, None) => &dropped,
            });
            for _ in 0..b {
                match branch.keeps_neighbours() {
                    true => weights.extend_from_slice(self.weights),
                    false => weights.extend(std::iter::repeat_n(0.0, k)),
                }
            }
        }
        let text = TextCondition::concat(&texts)?;
        let low_res = match self.low_res {
            Some(low) => {
                let copies: Vec<&Tensor> = branches.iter().map(|_| low).collect();
                Some(Tensor::concat(&copies, 0)?)
            }
            None => None,
        };
        let ts = vec![t as f32; rows];
        let aug = vec![self.aug; rows];
        self.unet.forward(&UNetInput {
            x_t: x,
            t: &ts,
            text: &text,
            neighbours: self.neighbours,
            weights: &weights,
            low_res: low_res.as_ref(),
            aug: low_res.as_ref().map(|_| aug.as_slice()),
        })
    }
}

/// An image resized to `size`² with a box (area) filter, as the trainer's Pillow `BOX`: each
/// output pixel averages the source pixels its footprint covers, weighted by the overlap.
pub fn box_resize(image: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if (w, h) == (size, size) || w == 0 || h == 0 {
        return image.clone();
    }
    // Per output index, the (source index, weight) pairs along one axis.
    let taps = |src: usize| -> Vec<Vec<(usize, f64)>> {
        let scale = src as f64 / size as f64;
        (0..size)
            .map(|o| {
                let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut taps = Vec::new();
                let mut i = lo.floor() as usize;
                while (i as f64) < hi && i < src {
                    let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                    if overlap > 0.0 {
                        taps.push((i, overlap / scale));
                    }
                    i += 1;
                }
                taps
            })
            .collect()
    };
    let (tx, ty) = (taps(w), taps(h));
    RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let mut acc = [0.0f64; 3];
        for &(sy, wy) in &ty[y as usize] {
            for &(sx, wx) in &tx[x as usize] {
                let p = image.get_pixel(sx as u32, sy as u32);
                for (a, &v) in acc.iter_mut().zip(&p.0) {
                    *a += f64::from(v) * wx * wy;
                }
            }
        }
        image::Rgb(acc.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// RGB images as `[1, 3, H, W]` in [−1, 1] (`u8 / 127.5 − 1`).
///
/// # Errors
/// A runtime failure.
pub fn image_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut data = vec![0.0f32; 3 * w * h];
    for (x, y, p) in image.enumerate_pixels() {
        for (c, &v) in p.0.iter().enumerate() {
            data[c * w * h + y as usize * w + x as usize] = f32::from(v) / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_vec(data, &[1, 3, h, w], device)?)
}
