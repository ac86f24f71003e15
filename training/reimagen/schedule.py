"""Noise schedules and sampler steps (docs/generator.md "Schedules and samplers").

All in float64 on the schedule side (ᾱ tables), float32 on tensors. A step takes the model's
output for the current x_t (ε or v, already guided) and returns the next x.

- betas: linear (DDPM) or cosine (Nichol & Dhariwal, clipped at 0.999).
- timesteps(n): "trailing" spacing, t_i = round(T − i·T/n) − 1, from T−1 down; the last step goes
  to ᾱ = 1 (the clean image).
- x̂₀ from ε or v; clipping to [−1, 1] or Imagen's dynamic thresholding.
- DDPM (the paper's Eq. 4, in its x̂₀ / posterior-mean form), DDIM (η = 0), DPM-Solver++ 2M.

Not here: guidance (guidance.py), the model (model.py).
"""

from __future__ import annotations

import math

import torch


def betas(schedule: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008

        def f(t):
            return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - f(i + 1) / f(i), 0.999) for i in range(steps)], dtype=torch.float64
        )
    raise ValueError(f"unknown beta schedule {schedule!r}")


class Schedule:
    def __init__(self, cfg):
        self.T = cfg.num_train_timesteps
        self.betas = betas(cfg.beta_schedule, self.T, cfg.beta_start, cfg.beta_end)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)
        self.prediction_type = cfg.prediction_type
        self.thresholding = cfg.thresholding
        self.ratio = cfg.dynamic_threshold_ratio
        self.max_value = cfg.sample_max_value

    def abar(self, t: int) -> float:
        """ᾱ_t; t = −1 is the clean image (ᾱ = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def timesteps(self, n: int) -> list[int]:
        if not 1 <= n <= self.T:
            raise ValueError(f"steps must be in 1..={self.T}, got {n}")
        return [round(self.T - i * self.T / n) - 1 for i in range(n)]

    # -- training ------------------------------------------------------------------------------

    def add_noise(self, x0, noise, t):
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, t a LongTensor [B]."""
        a = self.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0, noise, t):
        if self.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    # -- sampling ------------------------------------------------------------------------------

    def split(self, x_t, out, t: int):
        """(x̂₀, ε̂) from the model output (ε or v) at timestep t, before thresholding."""
        a = self.abar(t)
        sa, sb = math.sqrt(a), math.sqrt(1 - a)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - sb * eps) / sa
        else:
            x0 = sa * x_t - sb * out
            eps = sb * x_t + sa * out
        return x0, eps

    def threshold(self, x0):
        if self.thresholding == "clip":
            return x0.clamp(-1.0, 1.0)
        if self.thresholding == "dynamic":
            # Imagen: s = the `ratio` quantile of |x̂₀| per sample (torch.quantile: sorted values,
            # position ratio·(n−1), linear interpolation), s ← clamp(s, 1, sample_max_value), and
            # x̂₀ ← clamp(x̂₀, −s, s)/s.
            flat = x0.reshape(x0.shape[0], -1).abs().double()
            s = torch.quantile(flat, self.ratio, dim=1)
            s = s.clamp(min=1.0, max=max(self.max_value, 1.0)).to(x0.dtype).view(-1, 1, 1, 1)
            return torch.maximum(torch.minimum(x0, s), -s) / s
        return x0

    def predict(self, x_t, out, t: int):
        """(thresholded x̂₀, ε̂ re-derived from it): what every step below uses."""
        x0, eps = self.split(x_t, out, t)
        if self.thresholding != "none":
            x0 = self.threshold(x0)
            a = self.abar(t)
            eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return x0, eps

    def ddim_step(self, x_t, out, t: int, t_prev: int):
        """DDIM with η = 0: x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂."""
        x0, eps = self.predict(x_t, out, t)
        ap = self.abar(t_prev)
        return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps

    def ddpm_step(self, x_t, out, t: int, t_prev: int, noise):
        """DDPM (Eq. 4) between t and t_prev, via the posterior q(x_prev | x_t, x̂₀):
        β = 1 − ᾱ_t/ᾱ_prev, mean = √ᾱ_prev β/(1−ᾱ_t) x̂₀ + √(ᾱ_t/ᾱ_prev)(1−ᾱ_prev)/(1−ᾱ_t) x_t,
        variance β (1−ᾱ_prev)/(1−ᾱ_t); no noise on the last step. Without thresholding this is
        exactly Eq. 4."""
        x0, _ = self.predict(x_t, out, t)
        a, ap = self.abar(t), self.abar(t_prev)
        beta = 1 - a / ap
        mean = (math.sqrt(ap) * beta / (1 - a)) * x0 + (math.sqrt(a / ap) * (1 - ap) / (1 - a)) * x_t
        if t_prev < 0:
            return mean
        var = beta * (1 - ap) / (1 - a)
        return mean + math.sqrt(var) * noise

    def dpmpp_2m_step(self, x_t, out, t: int, t_prev: int, state: dict):
        """DPM-Solver++ (2M), data prediction, midpoint form as diffusers with
        lower_order_final: first order on the first step and on the last (which returns x̂₀).
        `state` carries the previous x̂₀ and λ between steps (start with {})."""
        x0, _ = self.predict(x_t, out, t)

        def lam(tt):
            a = self.abar(tt)
            return 0.5 * math.log(a) - 0.5 * math.log(1 - a)

        if t_prev < 0:
            state.clear()
            return x0
        a, ap = self.abar(t), self.abar(t_prev)
        sigma, sigma_p, alpha_p = math.sqrt(1 - a), math.sqrt(1 - ap), math.sqrt(ap)
        lam_t, lam_p = lam(t), lam(t_prev)
        h = lam_p - lam_t
        if "x0" in state:
            h_last = lam_t - state["lam"]
            r = h_last / h
            d = x0 + (0.5 / r) * (x0 - state["x0"])
        else:
            d = x0
        x_prev = (sigma_p / sigma) * x_t - alpha_p * math.expm1(-h) * d
        state["x0"], state["lam"] = x0, lam_t
        return x_prev
