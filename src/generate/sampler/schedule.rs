//! The noise schedule of a stage (docs/generator.md §6): β (linear or cosine) and ᾱ in f64 on
//! the host, the trailing timestep spacing, x̂₀ / ε̂ from the network output (ε or v), x̂₀
//! clipping or dynamic thresholding, and one step of DDIM (η = 0), DDPM (the paper's Eq. 4)
//! and DPM-Solver++ 2M. Coefficients are computed in f64 and applied to f32 tensors.
//!
//! Not here: the loop over steps and guidance ([`super::sample_stage`]).

use serde::Deserialize;

use crate::generate::{GenerateError, Result};
use crate::tensor::Tensor;

/// The β schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear,
    /// Nichol & Dhariwal's cosine schedule, β clipped at 0.999.
    Cosine,
}

/// What the network outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PredictionType {
    /// The noise ε.
    #[serde(rename = "epsilon")]
    Epsilon,
    /// v = √ᾱ ε − √(1−ᾱ) x₀.
    #[serde(rename = "v_prediction")]
    V,
}

/// What happens to x̂₀ before a step uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Thresholding {
    /// Nothing.
    None,
    /// Clamp to [−1, 1].
    Clip,
    /// Imagen's dynamic thresholding (a per-image quantile of |x̂₀|).
    Dynamic,
}

/// The schedule keys of a stage's config.json (other keys are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScheduleConfig {
    /// T, the training timesteps.
    pub num_train_timesteps: usize,
    /// The β schedule.
    pub beta_schedule: BetaSchedule,
    /// The linear schedule's first β.
    pub beta_start: f64,
    /// The linear schedule's last β.
    pub beta_end: f64,
    /// ε or v.
    pub prediction_type: PredictionType,
    /// x̂₀ treatment.
    pub thresholding: Thresholding,
    /// The quantile of |x̂₀| dynamic thresholding uses.
    pub dynamic_threshold_ratio: f64,
    /// The upper clamp of the dynamic threshold.
    pub sample_max_value: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::Linear,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            thresholding: Thresholding::None,
            dynamic_threshold_ratio: 0.995,
            sample_max_value: 1.5,
        }
    }
}

/// x̂₀ and ε̂ of one step.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The (thresholded) clean-image estimate.
    pub x0: Tensor,
    /// The noise estimate (re-derived from x̂₀ when thresholded).
    pub eps: Tensor,
}

/// What DPM-Solver++ 2M carries between steps: the previous x̂₀ and its λ.
#[derive(Debug, Clone, Default)]
pub struct DpmState {
    last: Option<(Tensor, f64)>,
}

/// A stage's schedule: the ᾱ table and the sampler arithmetic.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: ScheduleConfig,
    alphas_cumprod: Vec<f64>,
}

/// `torch.linspace` in f64: the first half counted up from `start`, the second down from `end`.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                start + step * i as f64
            } else {
                end - step * (n - 1 - i) as f64
            }
        })
        .collect()
}

fn cosine_betas(t: usize) -> Vec<f64> {
    let f = |u: f64| {
        ((u / t as f64 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999))
        .collect()
}

impl Schedule {
    /// The schedule of `config`.
    ///
    /// # Errors
    /// [`GenerateError::InvalidConfig`] naming the key when T is 0, a linear β is outside
    /// (0, 1), or the thresholding settings are impossible.
    pub fn new(config: ScheduleConfig) -> Result<Self> {
        let bad = |key, reason: String| Err(GenerateError::InvalidConfig { key, reason });
        let t = config.num_train_timesteps;
        if t == 0 {
            return bad("num_train_timesteps", "must be ≥ 1".into());
        }
        if config.beta_schedule == BetaSchedule::Linear {
            for (key, b) in [
                ("beta_start", config.beta_start),
                ("beta_end", config.beta_end),
            ] {
                if !(b > 0.0 && b < 1.0) {
                    return bad(key, format!("{b} is outside (0, 1)"));
                }
            }
        }
        if !(config.dynamic_threshold_ratio > 0.0 && config.dynamic_threshold_ratio <= 1.0) {
            return bad(
                "dynamic_threshold_ratio",
                format!("{} is outside (0, 1]", config.dynamic_threshold_ratio),
            );
        }
        if !config.sample_max_value.is_finite() || config.sample_max_value <= 0.0 {
            return bad(
                "sample_max_value",
                format!("{} must be a positive number", config.sample_max_value),
            );
        }
        let betas = match config.beta_schedule {
            BetaSchedule::Linear => linspace(config.beta_start, config.beta_end, t),
            BetaSchedule::Cosine => cosine_betas(t),
        };
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Ok(Self {
            config,
            alphas_cumprod,
        })
    }

    /// The settings it was built from.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// ᾱ_t; any t < 0 is the clean image (ᾱ = 1). Timesteps past T − 1 read ᾱ_{T−1}.
    pub fn abar(&self, t: i64) -> f64 {
        match usize::try_from(t) {
            Err(_) => 1.0,
            Ok(i) => self.alphas_cumprod[i.min(self.alphas_cumprod.len() - 1)],
        }
    }

    /// The timesteps of an `n`-step run, trailing spacing: `t_i = round(T − i·T/n) − 1` (ties
    /// to even, as Python's `round`), from T − 1 down.
    ///
    /// # Errors
    /// [`GenerateError::InvalidRequest`] when `n` is not in `1..=T`.
    pub fn timesteps(&self, n: usize) -> Result<Vec<i64>> {
        let t = self.config.num_train_timesteps;
        if !(1..=t).contains(&n) {
            return Err(GenerateError::InvalidRequest {
                what: "steps",
                reason: format!("{n} steps requested; this stage allows 1..={t}"),
            });
        }
        Ok((0..n)
            .map(|i| (t as f64 - i as f64 * t as f64 / n as f64).round_ties_even() as i64 - 1)
            .collect())
    }

    /// (x̂₀, ε̂) from the network output at timestep t, before thresholding.
    ///
    /// # Errors
    /// When the shapes differ.
    pub fn split(&self, x_t: &Tensor, out: &Tensor, t: i64) -> Result<Prediction> {
        let a = self.abar(t);
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => Prediction {
                x0: x_t
                    .scale((1.0 / sa) as f32)?
                    .sub(&out.scale((sb / sa) as f32)?)?,
                eps: out.clone(),
            },
            PredictionType::V => Prediction {
                x0: x_t.scale(sa as f32)?.sub(&out.scale(sb as f32)?)?,
                eps: x_t.scale(sb as f32)?.add(&out.scale(sa as f32)?)?,
            },
        })
    }

    /// x̂₀ clipped or dynamically thresholded per the config (unchanged for `none`).
    ///
    /// Dynamic: per image, s = the ratio quantile of |x̂₀| (sorted values, position r·(n−1),
    /// linear interpolation, as `torch.quantile`), clamped to [1, max(sample_max_value, 1)];
    /// x̂₀ ← clamp(x̂₀, −s, s)/s. The runtime has no quantile op, so s is found on the host.
    ///
    /// # Errors
    /// When x̂₀ has no batch axis, or reading it back fails.
    pub fn threshold(&self, x0: &Tensor) -> Result<Tensor> {
        match self.config.thresholding {
            Thresholding::None => Ok(x0.clone()),
            Thresholding::Clip => Ok(x0.clamp(-1.0, 1.0)?),
            Thresholding::Dynamic => {
                let rows = x0.shape().first().copied().unwrap_or(0);
                let values = x0.to_vec()?;
                let per_row = values.len() / rows.max(1);
                let mut parts = Vec::with_capacity(rows);
                for (row, chunk) in values.chunks(per_row.max(1)).take(rows).enumerate() {
                    let s = quantile_abs(chunk, self.config.dynamic_threshold_ratio)
                        .clamp(1.0, self.config.sample_max_value.max(1.0))
                        as f32;
                    parts.push(x0.narrow(0, row, 1)?.clamp(-s, s)?.scale(1.0 / s)?);
                }
                let refs: Vec<&Tensor> = parts.iter().collect();
                Ok(Tensor::concat(&refs, 0)?)
            }
        }
    }

    /// The thresholded x̂₀ and the ε̂ re-derived from it: what every step uses.
    ///
    /// # Errors
    /// When the shapes differ.
    pub fn predict(&self, x_t: &Tensor, out: &Tensor, t: i64) -> Result<Prediction> {
        let p = self.split(x_t, out, t)?;
        if self.config.thresholding == Thresholding::None {
            return Ok(p);
        }
        let x0 = self.threshold(&p.x0)?;
        let a = self.abar(t);
        let sb = (1.0 - a).sqrt();
        let eps = x_t
            .scale((1.0 / sb) as f32)?
            .sub(&x0.scale((a.sqrt() / sb) as f32)?)?;
        Ok(Prediction { x0, eps })
    }

    /// DDIM with η = 0: x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂. Returns (x_prev, x̂₀).
    ///
    /// # Errors
    /// When the shapes differ.
    pub fn ddim_step(
        &self,
        x_t: &Tensor,
        out: &Tensor,
        t: i64,
        t_prev: i64,
    ) -> Result<(Tensor, Tensor)> {
        let p = self.predict(x_t, out, t)?;
        let ap = self.abar(t_prev);
        let x =
            p.x0.scale(ap.sqrt() as f32)?
                .add(&p.eps.scale((1.0 - ap).sqrt() as f32)?)?;
        Ok((x, p.x0))
    }

    /// DDPM (the paper's Eq. 4) in posterior form: β = 1 − ᾱ_t/ᾱ_prev,
    /// μ = √ᾱ_prev β/(1−ᾱ_t) x̂₀ + √(ᾱ_t/ᾱ_prev)(1−ᾱ_prev)/(1−ᾱ_t) x_t, plus
    /// √(β(1−ᾱ_prev)/(1−ᾱ_t))·z — no noise on the last step (`t_prev < 0`, `noise` unused).
    /// Returns (x_prev, x̂₀).
    ///
    /// # Errors
    /// When a non-last step gets no noise, or the shapes differ.
    pub fn ddpm_step(
        &self,
        x_t: &Tensor,
        out: &Tensor,
        t: i64,
        t_prev: i64,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let p = self.predict(x_t, out, t)?;
        let (a, ap) = (self.abar(t), self.abar(t_prev));
        let beta = 1.0 - a / ap;
        let mean =
            p.x0.scale((ap.sqrt() * beta / (1.0 - a)) as f32)?
                .add(&x_t.scale(((a / ap).sqrt() * (1.0 - ap) / (1.0 - a)) as f32)?)?;
        if t_prev < 0 {
            return Ok((mean, p.x0));
        }
        let Some(z) = noise else {
            return Err(GenerateError::InvalidRequest {
                what: "ddpm noise",
                reason: format!("the step from t = {t} to {t_prev} needs noise and got none"),
            });
        };
        let var = beta * (1.0 - ap) / (1.0 - a);
        Ok((mean.add(&z.scale(var.sqrt() as f32)?)?, p.x0))
    }

    /// λ(t) = ½ ln ᾱ_t − ½ ln(1−ᾱ_t).
    fn lambda(&self, t: i64) -> f64 {
        let a = self.abar(t);
        0.5 * a.ln() - 0.5 * (1.0 - a).ln()
    }

    /// DPM-Solver++ 2M (data prediction, midpoint form, first order on the first step; the
    /// last step returns x̂₀). `state` carries x̂₀ and λ between steps (start with the
    /// default). Returns (x_prev, x̂₀).
    ///
    /// # Errors
    /// When the shapes differ.
    pub fn dpmpp_2m_step(
        &self,
        x_t: &Tensor,
        out: &Tensor,
        t: i64,
        t_prev: i64,
        state: &mut DpmState,
    ) -> Result<(Tensor, Tensor)> {
        let p = self.predict(x_t, out, t)?;
        if t_prev < 0 {
            state.last = None;
            return Ok((p.x0.clone(), p.x0));
        }
        let (a, ap) = (self.abar(t), self.abar(t_prev));
        let (sigma, sigma_p, alpha_p) = ((1.0 - a).sqrt(), (1.0 - ap).sqrt(), ap.sqrt());
        let (lam_t, lam_p) = (self.lambda(t), self.lambda(t_prev));
        let h = lam_p - lam_t;
        let d = match &state.last {
            Some((x0_last, lam_last)) => {
                let r = (lam_t - lam_last) / h;
                p.x0.add(&p.x0.sub(x0_last)?.scale((0.5 / r) as f32)?)?
            }
            None => p.x0.clone(),
        };
        let x = x_t
            .scale((sigma_p / sigma) as f32)?
            .sub(&d.scale((alpha_p * (-h).exp_m1()) as f32)?)?;
        state.last = Some((p.x0.clone(), lam_t));
        Ok((x, p.x0))
    }
}

/// The `ratio` quantile of |values| as `torch.quantile` (linear interpolation), in f64.
pub fn quantile_abs(values: &[f32], ratio: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = values.iter().map(|x| f64::from(x.abs())).collect();
    v.sort_by(f64::total_cmp);
    let pos = ratio.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
