"""Self-checks of the reference against its own spec (docs/generator.md), on the committed
fixtures: `python -m reimagen.check` from training/. Each check can fail:

- the fixtures' stored outputs are reproduced from the stored weights and inputs;
- the guidance branches batched into one UNet call equal the separate calls;
- a neighbour weight of 0 equals leaving that neighbour out (K = 1), and weight w equals an
  additive ln w on that neighbour's keys;
- the text states of the padded tokens do not change the valid tokens' states (causal tower);
- the f16 export loads back to the same tensors; every shard is ≤ the shard limit.

Not here: the Rust parity tests (tests/ in the crate).
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file

from .export import INDEX, export_stage, load_stage
from .guidance import Condition, branch_inputs, unet_call
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
    for name in ("base", "sr"):
        check_stage(name)
    print("all checks passed")


if __name__ == "__main__":
    main()
