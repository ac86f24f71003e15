"""Guidance (the paper's Eq. 6 and friends) and the sampling loop of one stage.

Branches, named by the conditions they keep:
  "pn" = ε(x, c_p, c_n)   text and neighbours
  "p"  = ε(x, c_p)        neighbours dropped
  "n"  = ε(x, c_n)        text dropped (or the negative prompt in its place)
  "0"  = ε(x)             both dropped (the negative prompt in place of the text, if given)

Modes: joint (pn alone), standard CFG (pn against 0), interleaved (per step a seeded draw
R ~ U[0, 1): ε̂_p if R < η else ε̂_n), weighted (η·ε̂_p + (1−η)·ε̂_n). All branches a step needs go
through one UNet call, rows ordered branch-major ([branch 0 × B, branch 1 × B, …]). The
guidance is applied to the model output (ε or v; both are linear in the branches).

Not here: the steps themselves (schedule.py), the network (model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("joint", "standard", "interleaved", "weighted")


@dataclass
class Guidance:
    mode: str = "interleaved"
    w: float = 3.0  # standard CFG weight
    w_p: float = 3.0  # weight of ε̂_p (text guidance, against ε(x, c_n))
    w_n: float = 3.0  # weight of ε̂_n (neighbour guidance, against ε(x, c_p))
    eta: float = 0.5  # interleaving ratio / weighted mix

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"guidance mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


def eps_hat_p(e_pn, e_n, w_p):
    """Eq. 6: ε̂_p = w_p·ε(x, c_p, c_n) − (w_p − 1)·ε(x, c_n)."""
    return w_p * e_pn - (w_p - 1) * e_n


def eps_hat_n(e_pn, e_p, w_n):
    """Eq. 6: ε̂_n = w_n·ε(x, c_p, c_n) − (w_n − 1)·ε(x, c_p)."""
    return w_n * e_pn - (w_n - 1) * e_p


def standard_cfg(e_pn, e_0, w):
    """Classifier-free guidance against both conditions dropped: w·ε(x, c_p, c_n) − (w − 1)·ε(x)."""
    return w * e_pn - (w - 1) * e_0


def weighted(e_pn, e_n, e_p, w_p, w_n, eta):
    return eta * eps_hat_p(e_pn, e_n, w_p) + (1 - eta) * eps_hat_n(e_pn, e_p, w_n)


def interleaved_choice(r: float, eta: float) -> str:
    """'p' (use ε̂_p) when R < η, else 'n' (use ε̂_n)."""
    return "p" if r < eta else "n"


def branches(g: Guidance, choice: str | None = None) -> list[str]:
    if g.mode == "joint":
        return ["pn"]
    if g.mode == "standard":
        return ["pn", "0"]
    if g.mode == "interleaved":
        return ["pn", "n"] if choice == "p" else ["pn", "p"]
    return ["pn", "n", "p"]


def combine(g: Guidance, outs: dict, choice: str | None = None):
    if g.mode == "joint":
        return outs["pn"]
    if g.mode == "standard":
        return standard_cfg(outs["pn"], outs["0"], g.w)
    if g.mode == "interleaved":
        if choice == "p":
            return eps_hat_p(outs["pn"], outs["n"], g.w_p)
        return eps_hat_n(outs["pn"], outs["p"], g.w_n)
    return weighted(outs["pn"], outs["n"], outs["p"], g.w_p, g.w_n, g.eta)


@dataclass
class Condition:
    """What one generation is conditioned on (batch B of images share it).

    text / text_valid: [1, L, D] / [1, L] the prompt's token states; negative (optional): the
    negative prompt's, same L. nbr_feats: {key: [K, C, h, w]} from encode_neighbours (K may be
    0); nbr_weights: [K] ≥ 0. low_res: [B, 3, r, r] already noise-augmented and aug its level
    (super-resolution stages only)."""

    text: torch.Tensor
    text_valid: torch.Tensor
    nbr_feats: dict
    nbr_weights: torch.Tensor
    negative: torch.Tensor | None = None
    negative_valid: torch.Tensor | None = None
    low_res: torch.Tensor | None = None
    aug: int = 0


def branch_inputs(cond: Condition, names: list[str], b: int):
    """The UNet arguments for `names` branches × B rows (branch-major)."""
    texts, valids, weights = [], [], []
    k = cond.nbr_weights.shape[0]
    for name in names:
        keep_text, keep_nbr = name in ("pn", "p"), name in ("pn", "n")
        if keep_text:
            t, v = cond.text, cond.text_valid
        elif cond.negative is not None:
            t, v = cond.negative, cond.negative_valid
        else:
            t, v = cond.text, torch.zeros_like(cond.text_valid)
        texts.append(t.expand(b, -1, -1))
        valids.append(v.expand(b, -1))
        w = cond.nbr_weights if keep_nbr else torch.zeros(k)
        weights.append(w.view(1, k).expand(b, k))
    rows = b * len(names)
    feats = {key: f.unsqueeze(0).expand(rows, *f.shape) for key, f in cond.nbr_feats.items()}
    return torch.cat(texts), torch.cat(valids), feats, torch.cat(weights)


@torch.no_grad()
def unet_call(model, x, t: int, cond: Condition, names: list[str]):
    """One batched UNet call over the branches `names`; returns {name: output [B, …]}."""
    b = x.shape[0]
    n = len(names)
    text, valid, feats, weights = branch_inputs(cond, names, b)
    xs = x.repeat(n, 1, 1, 1)
    ts = torch.full((b * n,), float(t))
    low = cond.low_res.repeat(n, 1, 1, 1) if cond.low_res is not None else None
    aug = torch.full((b * n,), float(cond.aug)) if cond.low_res is not None else None
    out = model(xs, ts, text, valid, feats, weights, low_res=low, aug=aug)
    return dict(zip(names, out.chunk(n)))


@torch.no_grad()
def sample(model, schedule, x_T, cond: Condition, g: Guidance, sampler: str = "ddim",
           steps: int = 50, seed: int = 0, record: bool = False):
    """Run one stage from x_T. Returns (x₀, trace) where trace (when `record`) holds every step's
    timestep, the interleaved choice, the resulting x and (DDPM) the noise z it added."""
    gen = torch.Generator().manual_seed(seed)
    ts = schedule.timesteps(steps)
    x = x_T
    state: dict = {}
    trace = []
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        choice = None
        if g.mode == "interleaved":
            choice = interleaved_choice(float(torch.rand((), generator=gen)), g.eta)
        outs = unet_call(model, x, t, cond, branches(g, choice))
        out = combine(g, outs, choice)
        if sampler == "ddim":
            x = schedule.ddim_step(x, out, t, t_prev)
        elif sampler == "ddpm":
            noise = torch.randn(x.shape, generator=gen)
            x = schedule.ddpm_step(x, out, t, t_prev, noise)
        elif sampler == "dpmpp":
            x = schedule.dpmpp_2m_step(x, out, t, t_prev, state)
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
        if record:
            trace.append({"t": t, "t_prev": t_prev, "choice": choice, "x": x.clone(),
                          "noise": noise if sampler == "ddpm" else None})
    return x, trace
