"""A tiny synthetic dataset in the emoji dataset format, for testing the CLIP trainer.

Entities are coloured shapes ("red circle"), styles draw them differently (filled, outlined,
black line art, with a shadow), so a model can learn entity-across-style the way it must on the
real emoji sets. The split follows the real rule (blake3(name)[0] < 26 is held out), and the
layout is docs/dataset.md's: manifest.jsonl, entities.jsonl, 64/<split>/<slug>/
<style>.png + .txt. Only the 64×64 images are written (the trainer reads nothing else).

    python training/clip/make_fake_dataset.py --out /tmp/fake-emoji

Not here: the real dataset (`reimagen dataset build`), the trainer (train_clip.py).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import blake3
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "brown": (130, 80, 40),
    "pink": (240, 120, 180),
    "cyan": (40, 200, 210),
    "grey": (120, 120, 120),
}
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart"]
STYLES = ["twemoji", "openmoji", "openmoji-black", "fluent-flat"]


def is_held_out(name: str) -> bool:
    """The project's held-out rule (design.md §6)."""
    return blake3.blake3(name.encode("utf-8")).digest()[0] < 26


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.35
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]
    if shape == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 17, cy - y * r / 17))
        return pts
    return None  # circle, ring: ellipses


def draw(shape: str, colour: tuple[int, int, int], style: str, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    cx = cy = size / 2
    r = size * 0.38
    fill: tuple[int, int, int] | None = colour
    outline: tuple[int, int, int] | None = None
    width = 1
    if style == "openmoji":
        outline, width = (0, 0, 0), 3
    elif style == "openmoji-black":
        fill, outline, width = None, (0, 0, 0), 3
    elif style == "fluent-flat":
        shadow = tuple(max(0, c - 70) for c in colour)
        pts = shape_points(shape, cx + 3, cy + 3, r)
        if pts is None:
            d.ellipse([cx + 3 - r, cy + 3 - r, cx + 3 + r, cy + 3 + r], fill=shadow)
        else:
            d.polygon(pts, fill=shadow)
    pts = shape_points(shape, cx, cy, r)
    if pts is None:
        box = [cx - r, cy - r, cx + r, cy + r]
        d.ellipse(box, fill=fill, outline=outline, width=width)
        if shape == "ring":
            inner = r * 0.5
            d.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=(255, 255, 255),
                      outline=outline, width=width)
    else:
        d.polygon(pts, fill=fill, outline=outline, width=width)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest, entities = [], []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            entity = f"{colour} {shape}"
            slug = entity.replace(" ", "-")
            split = "heldout" if is_held_out(entity) else "train"
            tags = [colour, shape]
            # Not every entity has every style, as on the real sets.
            styles = [s for i, s in enumerate(STYLES) if (len(entity) + i) % 5 != 0]
            entities.append({"entity": entity, "slug": slug, "split": split, "tags": tags,
                             "styles": styles})
            for style in styles:
                rel = f"64/{split}/{slug}/{style}.png"
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                draw(shape, rgb, style).save(path)
                caption = f"{entity}, {style} style"
                path.with_suffix(".txt").write_text(
                    f"{caption}\nentity: {entity}\ntags: {', '.join(tags)}\n")
                manifest.append({
                    "id": f"{slug}/{style}", "entity": entity, "slug": slug, "style": style,
                    "split": split, "caption": caption, "tags": tags,
                    "source": "synthetic", "license": "CC0-1.0", "files": {"64": rel},
                })
    manifest.sort(key=lambda m: m["id"])
    with open(out / "manifest.jsonl", "w") as f:
        for m in manifest:
            f.write(json.dumps(m) + "\n")
    with open(out / "entities.jsonl", "w") as f:
        for e in entities:
            f.write(json.dumps(e) + "\n")
    held = sum(e["split"] == "heldout" for e in entities)
    print(f"{len(entities)} entities ({held} held out), {len(manifest)} renditions in {out}")


if __name__ == "__main__":
    main()
