"""How a base stage reads the entity name in a prompt: samples of held-out entities with their
real name, with no name and with a made-up one, each beside the entity's target and its two
neighbours (docs/training.md, "Made-up names").

    python training/probe_names.py --data ~/.local/share/reimagen/emoji --clip models/clip \
        --model before=runs/ship-a/base --model after=models/reimagen/base \
        --case fox:twemoji:openmoji:fluent-flat --case "tokyo tower:twemoji:openmoji:fluent-flat" \
        --out docs/img/names.png

A case is ENTITY:TARGET_STYLE:NEIGHBOUR_STYLE:NEIGHBOUR_STYLE (renditions of the dataset's
64 px folder, train or held out). Every row samples the same noise (DDIM, 25 steps, no guidance,
the neighbours at weight 1); the neighbours' captions carry the same name as the prompt's.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import load_stage  # noqa: E402
from reimagen.guidance import Condition, Guidance, sample  # noqa: E402
from reimagen.schedule import Schedule  # noqa: E402
from reimagen.text import TextEncoder  # noqa: E402
from train_reimagen import load_image, read_jsonl, to_model_range  # noqa: E402

MADE_UP = "brillon tesk"  # a made-up name outside the trainer's pool (pseudo_names)


def caption(name: str, style: str) -> str:
    return f"{name}, {style} style" if name else f"{style} style"


@torch.no_grad()
def rows_for(model, enc, sched, data: pathlib.Path, by_key: dict, case: list[str], samples: int,
             seed: int):
    entity, target, *nbr_styles = case
    files = []
    for style in (target, *nbr_styles):
        m = by_key.get((entity, style))
        if m is None:
            raise SystemExit(f"{data / 'manifest.jsonl'}: no {style} rendition of {entity!r}")
        files.append(data / m["files"]["64"])
    size = model.cfg.sample_size
    images = to_model_range(torch.from_numpy(np.stack([load_image(f, size) for f in files])))
    x_T = torch.randn(samples, 3, size, size, generator=torch.Generator().manual_seed(seed))
    out = []
    for label, name in (("real name", entity), ("no name", ""), ("made-up name", MADE_UP)):
        states, valid = enc.encode([caption(name, s) for s in (target, *nbr_styles)])
        feats = model.encode_neighbours(images[1:], states[1:], valid[1:])
        cond = Condition(states[:1], valid[:1], feats, torch.ones(len(nbr_styles)))
        x, _ = sample(model, sched, x_T, cond, Guidance("joint"), "ddim", 25, seed)
        out.append((f"{entity}: {label}", torch.cat([*images, *x], dim=2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the emoji dataset (reimagen dataset build)")
    ap.add_argument("--clip", required=True, help="the CLIP folder the stages were trained with")
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=STAGE_DIR")
    ap.add_argument("--case", action="append", required=True,
                    metavar="ENTITY:TARGET_STYLE:STYLE:STYLE")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = pathlib.Path(args.data)
    by_key = {(m["entity"], m["style"]): m for m in read_jsonl(data / "manifest.jsonl")}
    cases = [c.split(":") for c in args.case]
    for c in cases:
        if len(c) < 3:
            raise SystemExit(f"--case {':'.join(c)!r}: want ENTITY:TARGET_STYLE:STYLE[:STYLE…]")
    tiles = []
    enc = None
    for spec in args.model:
        label, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--model {spec!r}: want LABEL=STAGE_DIR")
        model = load_stage(folder)
        if enc is None:
            enc = TextEncoder(args.clip, model.cfg.text_max_length)
        sched = Schedule(model.cfg)
        for case in cases:
            for text, strip in rows_for(model, enc, sched, data, by_key, case, args.samples,
                                        args.seed):
                tiles.append((f"{label} · {text}", strip))
    s = args.scale
    label_w = 260
    strips = [((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for _, t in tiles]
    h, w = strips[0].shape[0] * s, strips[0].shape[1] * s
    sheet = Image.new("RGB", (label_w + w, h * len(strips)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((text, _), strip) in enumerate(zip(tiles, strips)):
        sheet.paste(Image.fromarray(strip).resize((w, h), Image.Resampling.NEAREST), (label_w, i * h))
        draw.text((6, i * h + h // 2 - 6), text, fill="black")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(tiles)} rows)")


if __name__ == "__main__":
    main()
