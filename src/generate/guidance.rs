//! Guidance (docs/generator.md §7, the paper's Eq. 6): the four branches a UNet call can
//! batch, which branches each mode needs per step, and the arithmetic that mixes their outputs —
//! joint, standard classifier-free, the paper's ε̂_p / ε̂_n, interleaved (a seeded draw per step
//! picks one) and weighted. It works on the raw network output (ε or v; both are linear in the
//! branches).
//!
//! Not here: the draws themselves ([`super::sampler::Draws`]), the steps ([`super::sampler`]).

use serde::{Deserialize, Serialize};

use super::{GenerateError, Result};
use crate::tensor::Tensor;

/// A branch of a UNet call, named by the conditions it keeps (c_p the prompt, c_n the
/// neighbours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Branch {
    /// `pn` = ε(x, c_p, c_n): text and neighbours.
    Both,
    /// `p` = ε(x, c_p): neighbours dropped (all weights 0).
    TextOnly,
    /// `n` = ε(x, c_n): text dropped (or the negative prompt in its place).
    NeighboursOnly,
    /// `0` = ε(x): both dropped (the negative prompt in place of the text, if given).
    Neither,
}

/// Which text a branch's rows are conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSource {
    /// The prompt's token states.
    Prompt,
    /// The negative prompt's token states (it replaces the dropped text).
    Negative,
    /// No text: every token masked, the null text token alone.
    Dropped,
}

impl Branch {
    /// The reference's short name: `"pn"`, `"p"`, `"n"` or `"0"`.
    pub fn name(self) -> &'static str {
        match self {
            Branch::Both => "pn",
            Branch::TextOnly => "p",
            Branch::NeighboursOnly => "n",
            Branch::Neither => "0",
        }
    }

    /// Whether the prompt is kept.
    pub fn keeps_text(self) -> bool {
        matches!(self, Branch::Both | Branch::TextOnly)
    }

    /// Whether the neighbours are kept (otherwise their weights are all 0).
    pub fn keeps_neighbours(self) -> bool {
        matches!(self, Branch::Both | Branch::NeighboursOnly)
    }

    /// The text this branch is conditioned on: a negative prompt replaces the dropped text.
    pub fn text_source(self, has_negative_prompt: bool) -> TextSource {
        match (self.keeps_text(), has_negative_prompt) {
            (true, _) => TextSource::Prompt,
            (false, true) => TextSource::Negative,
            (false, false) => TextSource::Dropped,
        }
    }
}

/// Comma-separated branch names, for messages.
pub fn branch_names(branches: &[Branch]) -> String {
    branches
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the branches are mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuidanceMode {
    /// No guidance: ε(x, c_p, c_n) alone.
    Joint,
    /// Classifier-free guidance against both conditions dropped.
    Standard,
    /// Per step, a seeded draw R ~ U[0, 1): ε̂_p when R < η, else ε̂_n.
    #[default]
    Interleaved,
    /// η·ε̂_p + (1 − η)·ε̂_n every step.
    Weighted,
}

/// The guidance settings of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    /// The mode.
    pub mode: GuidanceMode,
    /// The standard CFG weight w.
    pub w: f32,
    /// The weight of ε̂_p (text guidance, against ε(x, c_n)).
    pub w_p: f32,
    /// The weight of ε̂_n (neighbour guidance, against ε(x, c_p)).
    pub w_n: f32,
    /// The interleaving ratio / weighted mix η ∈ [0, 1].
    pub eta: f32,
}

impl Default for Guidance {
    /// The reference's defaults: interleaved, all weights 3, η = 0.5.
    fn default() -> Self {
        Self {
            mode: GuidanceMode::Interleaved,
            w: 3.0,
            w_p: 3.0,
            w_n: 3.0,
            eta: 0.5,
        }
    }
}

impl std::fmt::Display for Guidance {
    /// The mode and the settings it uses: `interleaved, η = 0.5, w_p = 3, w_n = 3`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.mode {
            GuidanceMode::Joint => return f.write_str("none"),
            GuidanceMode::Standard => return write!(f, "standard, w = {}", self.w),
            GuidanceMode::Interleaved => "interleaved",
            GuidanceMode::Weighted => "weighted",
        };
        write!(
            f,
            "{name}, η = {}, w_p = {}, w_n = {}",
            self.eta, self.w_p, self.w_n
        )
    }
}

/// Which of Eq. 6's two guided outputs an interleaved step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterleavedChoice {
    /// ε̂_p (text guidance; batches `pn` with `n`).
    Text,
    /// ε̂_n (neighbour guidance; batches `pn` with `p`).
    Neighbours,
}

impl InterleavedChoice {
    /// The reference's name of the choice: `"p"` or `"n"`.
    pub fn name(self) -> &'static str {
        match self {
            InterleavedChoice::Text => "p",
            InterleavedChoice::Neighbours => "n",
        }
    }
}

/// The interleaved choice for a draw `r` ∈ [0, 1): ε̂_p when `r < η`, else ε̂_n.
pub fn interleaved_choice(r: f64, eta: f32) -> InterleavedChoice {
    if r < f64::from(eta) {
        InterleavedChoice::Text
    } else {
        InterleavedChoice::Neighbours
    }
}

impl Guidance {
    /// Joint (no guidance).
    pub fn joint() -> Self {
        Self {
            mode: GuidanceMode::Joint,
            ..Self::default()
        }
    }

    /// Standard classifier-free guidance with weight `w`.
    pub fn standard(w: f32) -> Self {
        Self {
            mode: GuidanceMode::Standard,
            w,
            ..Self::default()
        }
    }

    /// Interleaved guidance with weights `w_p`, `w_n` and ratio `eta`.
    pub fn interleaved(w_p: f32, w_n: f32, eta: f32) -> Self {
        Self {
            mode: GuidanceMode::Interleaved,
            w_p,
            w_n,
            eta,
            ..Self::default()
        }
    }

    /// Weighted guidance: `eta·ε̂_p + (1 − eta)·ε̂_n`.
    pub fn weighted(w_p: f32, w_n: f32, eta: f32) -> Self {
        Self {
            mode: GuidanceMode::Weighted,
            ..Self::interleaved(w_p, w_n, eta)
        }
    }

    /// Checks that the weights are finite and η ∈ [0, 1].
    ///
    /// # Errors
    /// [`GenerateError::InvalidRequest`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("guidance.w", self.w),
            ("guidance.w_p", self.w_p),
            ("guidance.w_n", self.w_n),
        ] {
            if !v.is_finite() {
                return Err(GenerateError::InvalidRequest {
                    what,
                    reason: format!("{v} is not a finite number"),
                });
            }
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return Err(GenerateError::InvalidRequest {
                what: "guidance.eta",
                reason: format!("{} is outside [0, 1]", self.eta),
            });
        }
        Ok(())
    }

    /// Whether a step needs a draw (interleaved mode).
    pub fn needs_draw(&self) -> bool {
        self.mode == GuidanceMode::Interleaved
    }

    /// The branches one step batches, in call order (branch-major rows). `choice` is used by
    /// the interleaved mode only (ε̂_n when absent).
    pub fn branches(&self, choice: Option<InterleavedChoice>) -> Vec<Branch> {
        match self.mode {
            GuidanceMode::Joint => vec![Branch::Both],
            GuidanceMode::Standard => vec![Branch::Both, Branch::Neither],
            GuidanceMode::Interleaved => match choice {
                Some(InterleavedChoice::Text) => vec![Branch::Both, Branch::NeighboursOnly],
                _ => vec![Branch::Both, Branch::TextOnly],
            },
            GuidanceMode::Weighted => vec![Branch::Both, Branch::NeighboursOnly, Branch::TextOnly],
        }
    }

    /// Mixes the outputs of the branches [`Guidance::branches`] returned for the same `choice`
    /// (`outputs[i]` belongs to `branches[i]`).
    ///
    /// # Errors
    /// [`GenerateError::ModelOutput`] when the outputs do not match those branches; a tensor
    /// error when their shapes differ.
    pub fn combine(&self, outputs: &[Tensor], choice: Option<InterleavedChoice>) -> Result<Tensor> {
        let branches = self.branches(choice);
        if outputs.len() != branches.len() {
            return Err(GenerateError::ModelOutput {
                branches: branch_names(&branches),
                found: vec![outputs.len()],
                expected: vec![branches.len()],
            });
        }
        let at = |b: Branch| branches.iter().position(|&x| x == b).unwrap_or(0);
        match self.mode {
            GuidanceMode::Joint => Ok(outputs[0].clone()),
            GuidanceMode::Standard => standard_cfg(
                &outputs[at(Branch::Both)],
                &outputs[at(Branch::Neither)],
                self.w,
            ),
            GuidanceMode::Interleaved => match choice {
                Some(InterleavedChoice::Text) => eps_hat_p(
                    &outputs[at(Branch::Both)],
                    &outputs[at(Branch::NeighboursOnly)],
                    self.w_p,
                ),
                _ => eps_hat_n(
                    &outputs[at(Branch::Both)],
                    &outputs[at(Branch::TextOnly)],
                    self.w_n,
                ),
            },
            GuidanceMode::Weighted => weighted(
                &outputs[at(Branch::Both)],
                &outputs[at(Branch::NeighboursOnly)],
                &outputs[at(Branch::TextOnly)],
                self.w_p,
                self.w_n,
                self.eta,
            ),
        }
    }
}

/// `w·a − (w − 1)·b`: the shape shared by every guided output.
fn extrapolate(a: &Tensor, b: &Tensor, w: f32) -> Result<Tensor> {
    Ok(a.scale(w)?.sub(&b.scale(w - 1.0)?)?)
}

/// Eq. 6: ε̂_p = w_p·ε(x, c_p, c_n) − (w_p − 1)·ε(x, c_n).
///
/// # Errors
/// When the shapes differ.
pub fn eps_hat_p(e_pn: &Tensor, e_n: &Tensor, w_p: f32) -> Result<Tensor> {
    extrapolate(e_pn, e_n, w_p)
}

/// Eq. 6: ε̂_n = w_n·ε(x, c_p, c_n) − (w_n − 1)·ε(x, c_p).
///
/// # Errors
/// When the shapes differ.
pub fn eps_hat_n(e_pn: &Tensor, e_p: &Tensor, w_n: f32) -> Result<Tensor> {
    extrapolate(e_pn, e_p, w_n)
}

/// Classifier-free guidance against both conditions dropped: w·ε(x, c_p, c_n) − (w − 1)·ε(x).
///
/// # Errors
/// When the shapes differ.
pub fn standard_cfg(e_pn: &Tensor, e_0: &Tensor, w: f32) -> Result<Tensor> {
    extrapolate(e_pn, e_0, w)
}

/// The weighted mix η·ε̂_p + (1 − η)·ε̂_n.
///
/// # Errors
/// When the shapes differ.
pub fn weighted(
    e_pn: &Tensor,
    e_n: &Tensor,
    e_p: &Tensor,
    w_p: f32,
    w_n: f32,
    eta: f32,
) -> Result<Tensor> {
    let p = eps_hat_p(e_pn, e_n, w_p)?.scale(eta)?;
    let n = eps_hat_n(e_pn, e_p, w_n)?.scale(1.0 - eta)?;
    Ok(p.add(&n)?)
}
