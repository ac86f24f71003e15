"""Self-checks of the reference against its own spec (docs/generator.md), on the committed
fixtures: `python -m reimagen.check` from training/. Each check can fail:

- the fixtures' stored outputs are reproduced from the stored weights and inputs;
- the guidance branches batched into one UNet call equal the separate calls;
- a neighbour weight of 0 equals leaving that neighbour out (K = 1), and weight w equals an
  additive ln w on that neighbour's keys;
- the text states of the padded tokens do not change the valid tokens' states (causal tower);
- the f16 export loads back to the same tensors; every shard is ≤ the shard limit;
- every stored trajectory is replayed from x_T with only what the fixture stores (the
  interleaved choices, the DDPM noise) and the step formulas, as a Rust test would;
- DDPM's posterior form equals the paper's Eq. 4 without thresholding; DDIM and DPM-Solver++
  given the true ε land on x₀.

Not here: the Rust parity tests (tests/ in the crate).
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file

from .export import INDEX, export_stage, load_stage
from .guidance import Condition, Guidance, branch_inputs, combine, unet_call
from .schedule import Schedule
from .text import TextEncoder

FIX = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reimagen"


def close(a, b, what, tol=1e-5):
    err = (a - b).abs().max().item()
    scale = b.abs().max().item() + 1e-12
    assert err <= tol * max(1.0, scale), f"{what}: max |Δ| {err:.3g} (scale {scale:.3g})"
    print(f"ok  {what}: max |Δ| {err:.2e}")


def check_stage(name: str) -> None:
    model = load_stage(FIX / name)
    cfg = model.cfg
    case = load_file(str(FIX / f"{name}-cases.safetensors"))
    meta = json.loads((FIX / f"{name}-cases.json").read_text())
    feats = model.encode_neighbours(case["neighbour_images"], case["neighbour_text_states"],
                                    case["neighbour_text_valid"])
    for key, f in feats.items():
        close(f, case[f"neighbour_features.{key}"], f"{name} neighbour features {key}")
    low = case.get("call.low_res")
    aug = meta["call"]["low_res_aug"] or 0
    cond = Condition(case["prompt_states"], case["prompt_valid"], feats,
                     case["call.neighbour_weights"], low_res=low, aug=aug)
    x, t = case["call.x_t"], case["call.t"]
    b = x.shape[0]
    for br in ("pn", "p", "n", "0"):
        text, valid, f, w = branch_inputs(cond, [br], b)
        with torch.no_grad():
            out = model(x, t, text, valid, f, w, low_res=low,
                        aug=torch.full((b,), float(aug)) if low is not None else None)
        close(out, case[f"call.out.{br}"], f"{name} UNet call, branch {br}")
    # Batched branches = separate calls (same t for all rows here).
    tt = int(t[0])
    batched = unet_call(model, x[:1], tt, Condition(
        cond.text, cond.text_valid, feats, cond.nbr_weights,
        low_res=None if low is None else low[:1], aug=aug), ["pn", "p", "n", "0"])
    for br, out in batched.items():
        text, valid, f, w = branch_inputs(cond, [br], 1)
        with torch.no_grad():
            one = model(x[:1], t[:1], text, valid, f, w, low_res=None if low is None else low[:1],
                        aug=torch.full((1,), float(aug)) if low is not None else None)
        close(out, one, f"{name} batched branch {br} = its own call")
    # A zero weight = that neighbour left out.
    first = {k: v[:1] for k, v in feats.items()}
    text, valid, f, w = branch_inputs(
        Condition(cond.text, cond.text_valid, first, torch.tensor([1.0]), low_res=low, aug=aug),
        ["pn"], b)
    with torch.no_grad():
        alone = model(x, t, text, valid, f, w, low_res=low,
                      aug=torch.full((b,), float(aug)) if low is not None else None)
    close(alone, case["call.out.pn_second_masked"], f"{name} weight 0 = neighbour left out")
    # Weight w = additive ln w: scaling both weights by c changes nothing except against the
    # null key; so check instead that doubling one weight equals adding ln 2 to its bias.
    nb = model.neighbour_tokens({k: v.unsqueeze(0) for k, v in feats.items()},
                                torch.tensor([[2.0, 0.5]]))
    for key, (_, bias) in nb.items():
        hw = feats[key].shape[2] * feats[key].shape[3]
        assert torch.allclose(bias[0, :hw], torch.full((hw,), float(torch.log(torch.tensor(2.0)))))
        assert torch.allclose(bias[0, hw:], torch.full((hw,), float(torch.log(torch.tensor(0.5)))))
    print(f"ok  {name} neighbour bias = ln w per neighbour's pixels")
    # Export round trip and shard limit.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        files = export_stage(model, tmp, max_shard_bytes=30_000)
        for fname in files:
            size = (pathlib.Path(tmp) / fname).stat().st_size
            assert size <= 30_000 + 16_384, f"{fname} is {size} bytes"
        again = load_stage(tmp)
        for k, v in model.state_dict().items():
            assert torch.equal(v, again.state_dict()[k]), k
        assert json.loads((pathlib.Path(tmp) / INDEX).read_text())["weight_map"]
    print(f"ok  {name} export round trip ({len(files)} shards)")
    _ = cfg


def replay(name: str) -> None:
    model = load_stage(FIX / name)
    sched = Schedule(model.cfg)
    case = load_file(str(FIX / f"{name}-cases.safetensors"))
    meta = json.loads((FIX / f"{name}-cases.json").read_text())
    feats = model.encode_neighbours(case["neighbour_images"], case["neighbour_text_states"],
                                    case["neighbour_text_valid"])
    aug = meta["call"]["low_res_aug"] or 0
    low = case["call.low_res"][:1] if "call.low_res" in case else None
    for run, tr in meta["trajectories"].items():
        neg = tr["negative_prompt"]
        cond = Condition(case["prompt_states"], case["prompt_valid"], feats,
                         case["call.neighbour_weights"],
                         negative=case["negative_states"] if neg else None,
                         negative_valid=case["negative_valid"] if neg else None,
                         low_res=low, aug=aug)
        g = Guidance(**tr["guidance"])
        x = case[f"{run}.x_T"]
        ts = tr["timesteps"]
        state: dict = {}
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            choice = tr["choices"][i]
            outs = unet_call(model, x, t, cond, tr["branches_per_step"][i])
            out = combine(g, outs, choice)
            if tr["sampler"] == "ddim":
                x = sched.ddim_step(x, out, t, t_prev)
            elif tr["sampler"] == "dpmpp":
                x = sched.dpmpp_2m_step(x, out, t, t_prev, state)
            else:
                z = case.get(f"{run}.z.{i}", torch.zeros_like(x))
                x = sched.ddpm_step(x, out, t, t_prev, z)
            close(x, case[f"{run}.x.{i}"], f"{name} {run} step {i} replayed", tol=1e-4)


def check_samplers() -> None:
    from .model import UNetConfig
    for schedule in ("linear", "cosine"):
        cfg = UNetConfig(beta_schedule=schedule, thresholding="none")
        sched = Schedule(cfg)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
        eps = torch.randn(2, 3, 4, 4, generator=g)
        z = torch.randn(2, 3, 4, 4, generator=g)
        t = 600
        x_t = sched.add_noise(x0, eps, torch.tensor([t, t]))
        # Eq. 4 with consecutive timesteps: x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t + σ_t z, σ² = β̃.
        beta = float(sched.betas[t])
        a, ap = sched.abar(t), sched.abar(t - 1)
        eq4 = (x_t - beta / (1 - a) ** 0.5 * eps) / (1 - beta) ** 0.5 \
            + (beta * (1 - ap) / (1 - a)) ** 0.5 * z
        close(sched.ddpm_step(x_t, eps, t, t - 1, z), eq4, f"DDPM step = Eq. 4 ({schedule})")
        close(sched.ddim_step(x_t, eps, t, -1), x0, f"DDIM with the true ε lands on x₀ ({schedule})")
        st: dict = {}
        xx = sched.dpmpp_2m_step(x_t, eps, t, 300, st)
        e2 = (xx - sched.abar(300) ** 0.5 * x0) / (1 - sched.abar(300)) ** 0.5
        close(sched.dpmpp_2m_step(xx, e2, 300, -1, st), x0,
              f"DPM-Solver++ with the true ε lands on x₀ ({schedule})", tol=1e-4)
        cfg_v = UNetConfig(beta_schedule=schedule, thresholding="none", prediction_type="v_prediction")
        sched_v = Schedule(cfg_v)
        v = sched_v.target(x0, eps, torch.tensor([t, t]))
        x0v, epsv = sched_v.split(x_t, v, t)
        close(x0v, x0, f"v-prediction recovers x₀ ({schedule})", tol=1e-4)
        close(epsv, eps, f"v-prediction recovers ε ({schedule})", tol=1e-4)
    assert Schedule(UNetConfig()).timesteps(4) == [999, 749, 499, 249]


def check_text() -> None:
    meta = json.loads((FIX / "base-cases.json").read_text())
    enc = TextEncoder(FIX / "clip", meta["config"]["text_max_length"])
    states, valid = enc.encode([meta["captions"]["prompt"]])
    n = int(valid.sum())
    ids, _ = enc.tokenize([meta["captions"]["prompt"]])
    with torch.no_grad():
        unpadded = enc.model(input_ids=ids[:, :n]).last_hidden_state
    close(states[:, :n], unpadded, "text states of valid tokens ignore the padding")
    case = load_file(str(FIX / "base-cases.safetensors"))
    close(states, case["prompt_states"], "prompt token states")


def main() -> None:
    torch.manual_seed(0)
    check_text()
    check_samplers()
    for name in ("base", "sr"):
        check_stage(name)
        replay(name)
    print("all checks passed")


if __name__ == "__main__":
    main()
