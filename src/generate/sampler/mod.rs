//! Sampling one stage: the [`BranchModel`] a UNet (or a test's replay of stored outputs)
//! implements, the seeded [`Draws`] (interleaving draws and DDPM noise), the [`SamplerKind`]s,
//! and [`sample_stage`], the loop that per step draws the guidance choice, batches the branches
//! it needs into one model call, mixes them and takes a DDIM / DDPM / DPM-Solver++ 2M step
//! (docs/generator.md §6–§7).
//!
//! Not here: the schedule arithmetic ([`schedule`]), the guidance arithmetic
//! ([`crate::generate::guidance`]), the UNet.

pub mod schedule;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::guidance::{Branch, Guidance, InterleavedChoice, branch_names, interleaved_choice};
use super::{CancelToken, GenerateError, GenerationObserver, Progress, Result, tensor_to_images};
use crate::tensor::{Device, Tensor};

pub use schedule::{
    BetaSchedule, DpmState, Prediction, PredictionType, Schedule, ScheduleConfig, Thresholding,
    quantile_abs,
};

/// The sampler of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral DDPM (the paper's Eq. 4).
    Ddpm,
    /// Deterministic DDIM (η = 0).
    #[default]
    Ddim,
    /// DPM-Solver++ 2M.
    Dpmpp,
}

/// The network as the sampler sees it: one call predicts the output (ε or v) for a batch of
/// branches.
pub trait BranchModel {
    /// `x` is `[branches.len() · B, C, H, W]`, branch-major (rows `[branch 0 × B, branch 1 ×
    /// B, …]`), all at timestep `t`; returns the network output of the same shape, each row
    /// conditioned as its branch says.
    ///
    /// # Errors
    /// Whatever the model fails with.
    fn predict(&mut self, x: &Tensor, t: i64, branches: &[Branch]) -> Result<Tensor>;
}

/// The random numbers a stage draws: one uniform per interleaved step, DDPM noise per step.
pub trait Draws {
    /// R ~ U[0, 1) for step `step` (drawn before the model call).
    fn uniform(&mut self, step: usize) -> f64;

    /// Standard normal noise of `shape` for step `step`, on `device`.
    ///
    /// # Errors
    /// When the tensor cannot be made.
    fn normal(&mut self, step: usize, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// The draws of a generation from its seed: uniforms from ChaCha8 (portable and stable across
/// platforms and releases), noise from the runtime's seeded [`Tensor::randn`] (so CPU and GPU
/// start from the same numbers), with a per-step seed derived from the generation's.
#[derive(Debug, Clone)]
pub struct SeededDraws {
    seed: u64,
    uniforms: ChaCha8Rng,
}

impl SeededDraws {
    /// The draws of seed `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            uniforms: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The seed of step `step`'s noise: distinct from `seed` itself, which x_T uses.
    pub fn step_seed(&self, step: usize) -> u64 {
        self.seed
            .wrapping_add((step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

impl Draws for SeededDraws {
    fn uniform(&mut self, _step: usize) -> f64 {
        self.uniforms.random::<f64>()
    }

    fn normal(&mut self, step: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::randn(shape, self.step_seed(step), device)?)
    }
}

/// What one stage runs.
#[derive(Debug, Clone, Copy)]
pub struct StageSampling<'a> {
    /// The stage's schedule.
    pub schedule: &'a Schedule,
    /// The sampler.
    pub sampler: SamplerKind,
    /// The guidance.
    pub guidance: &'a Guidance,
    /// The number of steps.
    pub steps: usize,
    /// This stage's index and the number of stages, for [`Progress`].
    pub stage: usize,
    /// The number of stages.
    pub stages: usize,
}

/// Runs one stage from `x_t` (x_T, `[B, C, H, W]`) and returns x₀. Before each step it checks
/// `cancel` and reports [`Progress`]; after each step it sends x̂₀ as a preview when the
/// observer wants one.
///
/// # Errors
/// [`GenerateError::Cancelled`], an invalid step count, a model whose output does not fit, or a
/// tensor failure.
pub fn sample_stage(
    run: &StageSampling<'_>,
    model: &mut dyn BranchModel,
    draws: &mut dyn Draws,
    x_t: &Tensor,
    observer: &mut dyn GenerationObserver,
    cancel: &CancelToken,
) -> Result<Tensor> {
    run.guidance.validate()?;
    let timesteps = run.schedule.timesteps(run.steps)?;
    let batch = x_t.shape().first().copied().unwrap_or(0);
    let mut x = x_t.clone();
    let mut dpm = DpmState::default();
    for (step, &t) in timesteps.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(GenerateError::Cancelled {
                stage: run.stage,
                step,
            });
        }
        let progress = Progress {
            stage: run.stage,
            stages: run.stages,
            step,
            steps: timesteps.len(),
            timestep: t,
        };
        observer.progress(&progress);
        let t_prev = timesteps.get(step + 1).copied().unwrap_or(-1);
        let choice: Option<InterleavedChoice> = run
            .guidance
            .needs_draw()
            .then(|| interleaved_choice(draws.uniform(step), run.guidance.eta));
        let branches = run.guidance.branches(choice);
        let outputs = call_branches(model, &x, t, &branches, batch)?;
        let out = run.guidance.combine(&outputs, choice)?;
        let (next, x0) = match run.sampler {
            SamplerKind::Ddim => run.schedule.ddim_step(&x, &out, t, t_prev)?,
            SamplerKind::Ddpm => {
                let noise = if t_prev >= 0 {
                    Some(draws.normal(step, x.shape(), &x.device())?)
                } else {
                    None
                };
                run.schedule
                    .ddpm_step(&x, &out, t, t_prev, noise.as_ref())?
            }
            SamplerKind::Dpmpp => run.schedule.dpmpp_2m_step(&x, &out, t, t_prev, &mut dpm)?,
        };
        if observer.wants_preview() {
            observer.preview(&progress, &tensor_to_images(&x0)?);
        }
        x = next;
    }
    Ok(x)
}

/// One model call over `branches` (x repeated branch-major), split back into one output per
/// branch.
fn call_branches(
    model: &mut dyn BranchModel,
    x: &Tensor,
    t: i64,
    branches: &[Branch],
    batch: usize,
) -> Result<Vec<Tensor>> {
    let copies: Vec<&Tensor> = branches.iter().map(|_| x).collect();
    let xs = Tensor::concat(&copies, 0)?;
    let out = model.predict(&xs, t, branches)?;
    if out.shape() != xs.shape() {
        return Err(GenerateError::ModelOutput {
            branches: branch_names(branches),
            found: out.shape().to_vec(),
            expected: xs.shape().to_vec(),
        });
    }
    (0..branches.len())
        .map(|i| Ok(out.narrow(0, i * batch, batch)?))
        .collect()
}
