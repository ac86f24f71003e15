"""Assembles the shipped generator (models/reimagen) from training runs: each stage's EMA weights
exported as a stage folder (f16, shards ≤ 15 MB), cascade.json listing them lowest resolution
first, each run's loss curve and sample sheet, and a model card (README.md) written from the runs'
own records: the data, the held-out rule, each stage's training (steps, samples, hours, device)
and its last validation losses with and without neighbours (the neighbour gap).

    python training/ship_generator.py --data ~/.local/share/reimagen/emoji \
        --stage base=runs/base32 --stage sr64=runs/sr32to64 --stage sr256=runs/sr64to256 \
        --out models/reimagen --clip-rel ../../clip

A stage that is not trained again may be given as its exported stage folder instead of a run
(`--stage sr64=models/reimagen-old/sr64`): it is copied unchanged, its card row read from its
training.json (which lists every evaluation since exports began keeping them all).

Every stage names the CLIP text tower by `--clip-rel` (relative to the stage folder): the
shipped models/clip is ../../clip from models/reimagen/<stage>. A stage whose run has no
evaluation, or whose low-res size does not match the stage below, stops the script.

Not here: training (train_reimagen.py), the export format (reimagen/export.py).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import pathlib
import shutil
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import write_cascade  # noqa: E402
from reimagen.model import ReImagenUNet, UNetConfig, count_parameters  # noqa: E402
from train_reimagen import export, read_jsonl  # noqa: E402


def stage_record(name: str, run: pathlib.Path) -> dict:
    """A stage from a run folder (its checkpoint's EMA weights are exported) or from an exported
    stage folder (shipped unchanged: a stage that was not trained again, whose run is elsewhere)."""
    if not (run / "checkpoint.pt").exists():
        return folder_record(name, run)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = UNetConfig.from_dict(saved["config"])
    state = saved["state"]
    if not state["evals"]:
        raise SystemExit(f"{run}: the run has no evaluation; train it longer before shipping")
    return {
        "name": name, "run": run, "cfg": cfg, "train": saved["train"], "state": state,
        "params": count_parameters(ReImagenUNet(cfg)),
    }


def folder_record(name: str, folder: pathlib.Path) -> dict:
    """An exported stage folder's record: config.json and training.json (export writes both)."""
    try:
        cfg = UNetConfig.from_dict(json.loads((folder / "config.json").read_text()))
        rec = json.loads((folder / "training.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{folder}: neither a run (no checkpoint.pt) nor an exported stage: {e}")
    if not rec.get("evals"):
        raise SystemExit(f"{folder}: its training.json has no evaluation")
    state = {"step": rec["steps"], "samples": rec["samples"], "elapsed": rec["elapsed_s"],
             "evals": rec["evals"], "init_from": rec.get("init_from")}
    return {"name": name, "run": folder, "folder": True, "cfg": cfg,
            "train": {"batch_size": rec.get("batch_size")}, "state": state,
            "params": count_parameters(ReImagenUNet(cfg))}


def ship_folder(src: pathlib.Path, dest: pathlib.Path, clip_rel: str) -> None:
    """Copy an exported stage folder, pointing its text encoder at `clip_rel`."""
    shutil.copytree(src, dest)
    config = dest / "config.json"
    doc = json.loads(config.read_text())
    doc["text_encoder"] = clip_rel
    config.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"shipped {src} unchanged to {dest}")


def data_summary(data: pathlib.Path) -> dict:
    manifest = read_jsonl(data / "manifest.jsonl")
    split = collections.Counter(m["split"] for m in manifest)
    entities = collections.defaultdict(set)
    for m in manifest:
        entities[m["split"]].add(m["entity"])
    styles = sorted({m["style"] for m in manifest})
    return {"renditions": split, "entities": {k: len(v) for k, v in entities.items()},
            "styles": styles}


def card(stages: list[dict], data: dict, clip_rel: str, trained_on: str, note: str) -> str:
    when = datetime.date.today().isoformat()
    lines = [
        "# reimagen generator (small, CPU-trained, on multi-style emoji)",
        "",
        *([f"**{note}**", ""] if note else []),
        "The project's own Re-Imagen cascade (docs/generator.md): "
        + " → ".join(f"{s['cfg'].sample_size}×{s['cfg'].sample_size}" for s in stages)
        + ". Each stage is a retrieval-conditioned UNet: the noisy image cross-attends to the "
        "K retrieved neighbours' feature maps (computed by the same downsampling stack at t = 0) "
        "and to the caption's CLIP text states. The text encoder is the shipped CLIP "
        f"(`{clip_rel}` from each stage folder, models/clip). Loaded by `reimagen generate`, "
        "`reimagen demo` and `reimagen init` (the default generator of a new KB).",
        "",
        "## Stages",
        "",
        "| stage | size | from | channels | attention levels | neighbour levels | prediction | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        c = s["cfg"]
        lines.append(
            f"| `{s['name']}` | {c.sample_size}×{c.sample_size} | "
            f"{f'{c.low_res_size}×{c.low_res_size}' if c.is_super_resolution else 'noise'} | "
            f"{list(c.block_channels)} | {list(c.attention_levels)} | {list(c.neighbour_levels)} | "
            f"{c.prediction_type} | {s['params'] / 1e6:.2f} M |")
    r, e = data["renditions"], data["entities"]
    lines += [
        "",
        "## Data",
        "",
        f"The emoji dataset of `reimagen dataset build` (docs/dataset.md): {e.get('train', 0)} "
        f"training entities with {r.get('train', 0)} renditions in the styles "
        f"{', '.join(data['styles'])}; {e.get('heldout', 0)} held-out entities with "
        f"{r.get('heldout', 0)} renditions. Each training example is conditioned on its top-2 "
        "neighbours by BM25 from the training KB (excluding itself and, for half of the "
        "examples, its own style). Text and neighbours are each dropped with p = 0.1.",
        "",
        "**Held-out rule** (design.md §6): an entity whose `blake3(name as UTF-8)` first byte is "
        "< 26 is never trained on — not its images, not its captions — so `reimagen bench "
        "entities` measures what retrieval brings to entities the model never saw.",
        "",
        "## Training runs",
        "",
        "| stage | steps | samples | batch | hours | val loss with neighbours | without | neighbour gap "
        "| gap, entity names dropped | gap, made-up names |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        st, ev = s["state"], s["state"]["evals"][-1]
        lines.append(
            f"| `{s['name']}` | {st['step']:,} | {st['samples']:,} | {s['train']['batch_size'] or '—'} | "
            f"{st['elapsed'] / 3600:.2f} | {ev['with']:.4f} | {ev['without']:.4f} | "
            f"{ev['gap']:+.5f} | "
            + (f"{ev['noname_gap']:+.5f} |" if "noname_gap" in ev else "— |")
            + (f" {ev['pseudo_with']:.4f} / {ev['pseudo_without']:.4f}: {ev['pseudo_gap']:+.5f} |"
               if "pseudo_gap" in ev else " — |"))
    lines += [
        "",
        f"Trained on {trained_on} by `training/train_reimagen.py`; docs/training.md has the "
        "configs, the commands and the throughput. The **neighbour gap** is the validation loss with the neighbours' "
        "weights set to 0 minus the loss with them, on a fixed set of held-back renditions of "
        "training entities (same timesteps and noise each time): above zero means the model "
        "uses what it retrieves. Each stage folder holds `loss.png` (train loss, validation "
        "with and without neighbours, the gap) and `samples.png` (target, its two neighbours, a "
        "sample with them, a sample without). The last column is the same gap with the "
        "captions' entity names dropped (\"twemoji style\"), as a held-out entity's name "
        "means nothing to the model: there the neighbours are the only clue. The last one "
        "gives the captions, and the same-entity neighbours' captions, a made-up name "
        "(\"gindige ster, twemoji style\"), as a held-out entity's prompt reads to a text "
        "encoder that never learnt its name: loss with / without neighbours, and the gap.",
        "",
        "Gap per evaluation:",
        "",
    ]
    for s in stages:
        gaps = ", ".join(f"{e['samples'] // 1000}k: {e['gap']:+.4f}" for e in s["state"]["evals"])
        lines.append(f"- `{s['name']}`: {gaps}")
    lines += ["", "(An export kept only its last evaluation until 2026-12-04; the runs before, "
              "with their evaluations, are in docs/training.md, Runs.)"]
    starts = [s for s in stages if s["state"].get("init_from")]
    if starts:
        lines += ["", "Warm starts (`train_reimagen.py --init-from`: the weights of an earlier "
                  "export, a fresh optimiser; the counts above include the earlier training):", ""]
        for s in starts:
            init = s["state"]["init_from"]
            lines.append(f"- `{s['name']}`: from {init.get('samples') or 0:,} samples "
                         f"({init.get('prediction_type', s['cfg'].prediction_type)} then)")
    lines += [
        "",
        "## License",
        "",
        "The weights are derived from the renderings of the emoji art sets of the dataset; "
        "their licenses apply, as for the shipped CLIP (models/clip/README.md has the "
        "renditions per style and license; `LICENSES/` at the repository root holds the "
        "attribution and how share-alike is treated).",
        "",
        f"Assembled {when} by `training/ship_generator.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", action="append", required=True, metavar="NAME=RUN",
                    help="a stage name and its run folder (or exported stage folder), lowest "
                         "resolution first")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--data", required=True, type=pathlib.Path, help="the emoji dataset")
    ap.add_argument("--clip-rel", default="../../clip")
    ap.add_argument("--trained-on", default="the CPU (2 threads, PyTorch, f32)",
                    help="the hardware line of the model card")
    ap.add_argument("--note", default="", help="a status line under the card's title")
    args = ap.parse_args()

    stages = []
    for spec in args.stage:
        name, _, run = spec.partition("=")
        if not name or not run:
            raise SystemExit(f"--stage {spec!r}: expected NAME=RUN_FOLDER")
        stages.append(stage_record(name, pathlib.Path(run)))
    for lower, upper in zip(stages, stages[1:]):
        if upper["cfg"].low_res_size != lower["cfg"].sample_size:
            raise SystemExit(f"stage {upper['name']} upsamples from {upper['cfg'].low_res_size}, "
                             f"but {lower['name']} makes {lower['cfg'].sample_size}")
    if stages[0]["cfg"].is_super_resolution:
        raise SystemExit(f"the first stage ({stages[0]['name']}) must be a base stage")

    # A stage folder shipped unchanged must not be one that --out replaces (before it is read).
    dests = [(args.out / s["name"]).resolve() for s in stages]
    for s in stages:
        src = s["run"].resolve()
        if s.get("folder") and any(src == d or d in src.parents for d in dests):
            raise SystemExit(f"{s['run']} is inside what --out {args.out} replaces; "
                             "ship to another folder")
    args.out.mkdir(parents=True, exist_ok=True)
    for s in stages:
        folder = args.out / s["name"]
        if folder.exists():
            shutil.rmtree(folder)
        if s.get("folder"):
            ship_folder(s["run"], folder, args.clip_rel)
            continue
        export(s["run"], folder, args.clip_rel)
        for png in ("loss.png", "samples.png"):
            if (s["run"] / png).exists():
                shutil.copy(s["run"] / png, folder / png)
    write_cascade(args.out, [{"name": s["name"], "path": s["name"],
                              "resolution": s["cfg"].sample_size} for s in stages])
    (args.out / "README.md").write_text(card(stages, data_summary(args.data), args.clip_rel,
                                               args.trained_on, args.note))
    print(f"shipped {len(stages)} stage(s) to {args.out}")


if __name__ == "__main__":
    main()
