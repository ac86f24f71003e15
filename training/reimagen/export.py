"""Model folders on disk (docs/generator.md "Model folder"): a stage is config.json + f16
safetensors shards `model-0000N-of-0000M.safetensors` (each ≤ 15 MB) + model.safetensors.index.json
(always written, even for one shard); a cascade is cascade.json listing the stage folders.

Not here: the network (model.py), training checkpoints (train_reimagen.py keeps those as .pt).
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import load_file, save_file

from .model import ReImagenUNet, UNetConfig

MAX_SHARD_BYTES = 15_000_000
INDEX = "model.safetensors.index.json"


def export_stage(model: ReImagenUNet, folder, max_shard_bytes: int = MAX_SHARD_BYTES,
                 dtype: torch.dtype = torch.float16) -> list[str]:
    """Write `model` (its config and weights, cast to `dtype`) into `folder`. Returns the shard
    file names. Tensors go into shards in state_dict order, a new shard starting when the next
    tensor would pass `max_shard_bytes` (a single larger tensor gets a shard of its own)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    cfg = model.cfg.to_dict()
    cfg["dtype"] = "float16" if dtype == torch.float16 else "float32"
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shards: list[dict] = [{}]
    size = 0
    total = 0
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu", dtype).contiguous()
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
        total += n
    m = len(shards)
    names = [f"model-{i + 1:05d}-of-{m:05d}.safetensors" for i in range(m)]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names


def load_stage(folder, device: str = "cpu") -> ReImagenUNet:
    """Read a stage folder back into an f32 model (the inverse of export_stage)."""
    folder = pathlib.Path(folder)
    cfg = UNetConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = ReImagenUNet(cfg)
    index = json.loads((folder / INDEX).read_text())
    state = {}
    for fname in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(folder / fname)))
    missing = set(model.state_dict()) - set(state)
    extra = set(state) - set(model.state_dict())
    if missing or extra:
        raise ValueError(f"{folder}: missing tensors {sorted(missing)}, unexpected {sorted(extra)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device).eval()


def write_cascade(root, stages: list[dict]) -> None:
    """cascade.json: {"format": "reimagen-cascade", "version": 1, "stages": [{"name", "path",
    "resolution"}, …]} lowest resolution first; each path is a stage folder relative to root."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    doc = {"format": "reimagen-cascade", "version": 1, "stages": stages}
    (root / "cascade.json").write_text(json.dumps(doc, indent=2) + "\n")
