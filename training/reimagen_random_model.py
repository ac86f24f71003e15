"""A random-weight Re-Imagen model folder at a shipped stage config, for measuring the Rust
runtime (docs/generator.md §9) before trained weights exist.

    python training/reimagen_random_model.py --config training/reimagen/configs/base64_cpu.json \
        --clip models/clip --out /tmp/reimagen-random

writes OUT/cascade.json (one stage, "base"), OUT/base/ (config.json + f16 shards) and a copy of
the CLIP folder as OUT/clip (text_dim is set to that CLIP's hidden size). The weights are
PyTorch's default initialisation under a fixed seed; the numbers they produce mean nothing, the
time they take is what is measured.

Not here: the fixtures (reimagen_fixtures.py), training (train_reimagen.py).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import export_stage, write_cascade  # noqa: E402
from reimagen.model import ReImagenUNet, UNetConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="a training config (its `model` part is used)")
    ap.add_argument("--clip", required=True, help="a CLIP folder for the text condition")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    clip = json.loads((pathlib.Path(args.clip) / "config.json").read_text())
    model_cfg = dict(json.loads(pathlib.Path(args.config).read_text())["model"])
    model_cfg["text_dim"] = clip["text_config"]["hidden_size"]
    model_cfg["text_max_length"] = min(model_cfg.get("text_max_length", 32),
                                       clip["text_config"]["max_position_embeddings"])
    model_cfg["text_encoder"] = "../clip"
    cfg = UNetConfig.from_dict(model_cfg)
    torch.manual_seed(args.seed)
    model = ReImagenUNet(cfg)
    export_stage(model, out / "base")
    if (out / "clip").exists():
        shutil.rmtree(out / "clip")
    shutil.copytree(args.clip, out / "clip")
    write_cascade(out, [{"name": "base", "path": "base", "resolution": cfg.sample_size}])
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
