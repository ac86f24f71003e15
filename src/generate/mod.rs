//! The generator interface: the [`Generator`] trait any image generator implements (the
//! Re-Imagen cascade on the tensor runtime, or another backend such as an external service),
//! its [`GenerationRequest`] (prompt, neighbours as plain data, guidance, sampler, steps, seed,
//! batch), its [`GenerationOutput`] (images per stage and the [`Provenance`]), per-step
//! [`Progress`] and previews through a [`GenerationObserver`], and cancellation through a
//! [`CancelToken`]. The samplers live in [`sampler`], the guidance arithmetic in [`guidance`]
//! (docs/generator.md §6–§7).
//!
//! Not here: the UNet and the cascade ([`reimagen`]: they implement [`sampler::BranchModel`]
//! and [`Generator`]), retrieval of the neighbours (the knowledge base does that and hands them in).

mod from_kb;
pub mod guidance;
pub mod open;
pub mod reimagen;
pub mod sampler;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use image::RgbImage;

use crate::tensor::{Tensor, TensorError};

pub use from_kb::{
    ChosenNeighbour, DEFAULT_MIN_SCORE_RATIO, GenerationRecord, KbGeneration, NeighbourChoice,
    NeighbourSelection, NeighbourSource, ProvenanceFile, RetrievalRecord, StageRecord,
    WrittenImage, check_min_score_ratio, near_best,
};
pub use guidance::{Branch, Guidance, GuidanceMode, InterleavedChoice, TextSource};
pub use reimagen::ReImagen;
pub use sampler::{
    BetaSchedule, BranchModel, Draws, PredictionType, SamplerKind, Schedule, ScheduleConfig,
    SeededDraws, Thresholding,
};

/// What went wrong while generating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// The request asks for something impossible (a user mistake): names the setting and why.
    #[error("invalid generation request: {what}: {reason}")]
    InvalidRequest {
        /// The setting, e.g. `"guidance.eta"`.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A stage's schedule settings (config.json) are impossible: names the key and why.
    #[error("invalid schedule config: key {key}: {reason}")]
    InvalidConfig {
        /// The config.json key, e.g. `"beta_end"`.
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A generator model folder is unusable (a user mistake): missing or malformed file,
    /// missing or mis-shaped tensor, impossible setting; names the file and the reason.
    #[error("generator model {path}: {reason}")]
    Model {
        /// The file or folder at fault, e.g. `MODEL/base/config.json`.
        path: std::path::PathBuf,
        /// Why it cannot be used, naming the key or tensor.
        reason: String,
    },
    /// The caller cancelled through its [`CancelToken`].
    #[error("generation cancelled at stage {stage}, before step {step}")]
    Cancelled {
        /// The stage (0 = the lowest resolution).
        stage: usize,
        /// The step that had not yet run.
        step: usize,
    },
    /// The model returned an output that does not fit the branches asked for (an internal
    /// failure of the model, not of the request).
    #[error("model output for branches {branches} has shape {found:?}, expected {expected:?}")]
    ModelOutput {
        /// The branch names of the call, e.g. `"pn, 0"`.
        branches: String,
        /// The shape returned.
        found: Vec<usize>,
        /// The shape expected.
        expected: Vec<usize>,
    },
    /// The tensor runtime failed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// Result of the generator's functions.
pub type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// One retrieved neighbour, as plain data: the generator never opens a knowledge base.
#[derive(Debug, Clone)]
pub struct Neighbour {
    /// Where it came from (a KB item id, a file name): reported back in the provenance.
    pub id: String,
    /// The neighbour's image (resized by the generator to each stage's resolution).
    pub image: RgbImage,
    /// The neighbour's caption.
    pub caption: String,
    /// Its weight `w ≥ 0` in the neighbour attention (1 neutral, 0 removes it).
    pub weight: f32,
    /// The retrieval score it was found with, if it was retrieved.
    pub score: Option<f32>,
}

impl Neighbour {
    /// A neighbour with weight 1 and no retrieval score.
    pub fn new(id: impl Into<String>, image: RgbImage, caption: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            image,
            caption: caption.into(),
            weight: 1.0,
            score: None,
        }
    }
}

/// Everything one generation is asked to do.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The text prompt.
    pub prompt: String,
    /// The neighbours to condition on (may be empty).
    pub neighbours: Vec<Neighbour>,
    /// A negative prompt: replaces the dropped text in the unconditional branches.
    pub negative_prompt: Option<String>,
    /// Guidance mode and weights.
    pub guidance: Guidance,
    /// The sampler every stage uses.
    pub sampler: SamplerKind,
    /// Steps per stage; a single entry applies to every stage.
    pub steps: Vec<usize>,
    /// The seed of all noise (x_T, DDPM noise, interleaving draws, noise augmentation).
    pub seed: u64,
    /// Images generated at once.
    pub batch_size: usize,
}

impl GenerationRequest {
    /// A request for `prompt` with no neighbours, interleaved guidance at its defaults, DDIM
    /// with 50 steps per stage, seed 0 and one image.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            neighbours: Vec::new(),
            negative_prompt: None,
            guidance: Guidance::default(),
            sampler: SamplerKind::Ddim,
            steps: vec![50],
            seed: 0,
            batch_size: 1,
        }
    }

    /// The steps of stage `stage` (the single entry when one is given for all).
    ///
    /// # Errors
    /// [`GenerateError::InvalidRequest`] when no entry covers that stage.
    pub fn steps_for_stage(&self, stage: usize) -> Result<usize> {
        match self.steps.as_slice() {
            [one] => Ok(*one),
            many => many
                .get(stage)
                .copied()
                .ok_or_else(|| GenerateError::InvalidRequest {
                    what: "steps",
                    reason: format!(
                        "{} entries given, but stage {stage} needs one (give one for all stages or one per stage)",
                        many.len()
                    ),
                }),
        }
    }

    /// Checks what can be checked without a model: the guidance settings, the steps (≥ 1),
    /// the batch size (≥ 1), the neighbour weights (finite, ≥ 0) and a non-empty prompt.
    ///
    /// # Errors
    /// [`GenerateError::InvalidRequest`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, reason: String| Err(GenerateError::InvalidRequest { what, reason });
        if self.prompt.trim().is_empty() {
            return bad("prompt", "is empty".into());
        }
        self.guidance.validate()?;
        if self.steps.is_empty() {
            return bad("steps", "no step count given".into());
        }
        if let Some(zero) = self.steps.iter().position(|&s| s == 0) {
            return bad(
                "steps",
                format!("entry {zero} is 0; every stage needs ≥ 1 step"),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be ≥ 1".into());
        }
        for n in &self.neighbours {
            if !(n.weight.is_finite() && n.weight >= 0.0) {
                return bad(
                    "neighbours.weight",
                    format!(
                        "neighbour {:?} has weight {}; weights must be finite and ≥ 0",
                        n.id, n.weight
                    ),
                );
            }
        }
        Ok(())
    }
}

/// The images of one stage of the cascade.
#[derive(Debug, Clone)]
pub struct StageImages {
    /// The stage's name (from cascade.json).
    pub name: String,
    /// Its resolution (images are square).
    pub resolution: u32,
    /// One image per batch row.
    pub images: Vec<RgbImage>,
}

/// A neighbour as it was used, for the provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct UsedNeighbour {
    /// The id the request gave.
    pub id: String,
    /// Its caption.
    pub caption: String,
    /// Its weight in the neighbour attention.
    pub weight: f32,
    /// Its retrieval score, if any.
    pub score: Option<f32>,
}

/// Where an output came from: the generator, the settings, and the neighbours used.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// The generator's name ([`Generator::name`]).
    pub generator: String,
    /// The seed.
    pub seed: u64,
    /// The neighbours, in the request's order.
    pub neighbours: Vec<UsedNeighbour>,
}

impl Provenance {
    /// The provenance of `request` run by `generator`.
    pub fn of(generator: &str, request: &GenerationRequest) -> Self {
        Self {
            generator: generator.to_string(),
            seed: request.seed,
            neighbours: request
                .neighbours
                .iter()
                .map(|n| UsedNeighbour {
                    id: n.id.clone(),
                    caption: n.caption.clone(),
                    weight: n.weight,
                    score: n.score,
                })
                .collect(),
        }
    }
}

/// What a generation returns.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// The images of every stage, lowest resolution first; the last is the result.
    pub stages: Vec<StageImages>,
    /// Which neighbours were used, with their retrieval scores.
    pub provenance: Provenance,
}

impl GenerationOutput {
    /// The final stage's images (empty when no stage ran).
    pub fn images(&self) -> &[RgbImage] {
        self.stages.last().map_or(&[], |s| s.images.as_slice())
    }
}

/// Where a generation stands: sent before each step of each stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The stage (0 = lowest resolution).
    pub stage: usize,
    /// How many stages run.
    pub stages: usize,
    /// The step about to run (0-based).
    pub step: usize,
    /// The steps of this stage.
    pub steps: usize,
    /// The diffusion timestep of this step.
    pub timestep: i64,
}

/// Receives progress and previews; every method has a do-nothing default.
pub trait GenerationObserver {
    /// Called before each step.
    fn progress(&mut self, _progress: &Progress) {}
    /// Whether [`GenerationObserver::preview`] should be called (converting costs time).
    fn wants_preview(&self) -> bool {
        false
    }
    /// The current estimate of the clean images (x̂₀) after a step, one per batch row.
    fn preview(&mut self, _progress: &Progress, _images: &[RgbImage]) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl GenerationObserver for NoObserver {}

/// A flag shared between the caller and a running generation; checked before every step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop before its next step.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A resolution of a stage, as a generator describes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    /// The stage's name.
    pub name: String,
    /// Its output resolution.
    pub resolution: u32,
}

/// An image generator: the Re-Imagen cascade on the tensor runtime, or any other backend that
/// turns a [`GenerationRequest`] into images.
pub trait Generator {
    /// A name for the provenance, e.g. the model folder.
    fn name(&self) -> &str;

    /// The stages it runs, lowest resolution first.
    fn stages(&self) -> Vec<StageInfo>;

    /// Runs the request, reporting progress to `observer` and stopping with
    /// [`GenerateError::Cancelled`] once `cancel` is set.
    ///
    /// # Errors
    /// [`GenerateError::InvalidRequest`] for impossible settings, `Cancelled`, or a failure of
    /// the backend.
    fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn GenerationObserver,
        cancel: &CancelToken,
    ) -> Result<GenerationOutput>;
}

/// Images `[B, 3, H, W]` in [−1, 1] as RGB images: `u8 = round(clamp((x + 1) · 127.5, 0, 255))`
/// (docs/generator.md).
///
/// # Errors
/// When the tensor is not `[B, 3, H, W]`, or reading it back fails.
pub fn tensor_to_images(images: &Tensor) -> Result<Vec<RgbImage>> {
    let &[b, 3, h, w] = images.shape() else {
        return Err(GenerateError::Tensor(TensorError::Shape {
            op: "tensor_to_images",
            reason: format!("images {:?} must be [B, 3, H, W]", images.shape()),
        }));
    };
    let data = images.to_vec()?;
    let plane = h * w;
    let out = (0..b)
        .map(|row| {
            let base = row * 3 * plane;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                let px = |c: usize| {
                    let v = (data[base + c * plane + p] + 1.0) * 127.5;
                    v.clamp(0.0, 255.0).round() as u8
                };
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect();
    Ok(out)
}
