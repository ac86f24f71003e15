"""Does a `reimagen bench entities` run keep the asked style? Scores every case image of a
bench folder against the style captions alone ("twemoji style", …) with a CLIP folder, and
prints per arm how often the case's own style ranks first and its mean cosine similarity to its
style's caption (docs/entities.md).

    python training/bench_style.py --clip models/clip BENCH_OUT [BENCH_OUT …]

A bench folder's cases are `cases/ENTITY/STYLE/ARM.png`; the styles are the folder names.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import CLIPModel
from transformers.utils import logging as hf_logging


class Scorer:
    def __init__(self, folder: pathlib.Path):
        hf_logging.set_verbosity_error()
        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        self.size = pre["crop_size"]["height"]
        self.mean = torch.tensor(pre["image_mean"]).view(3, 1, 1)
        self.std = torch.tensor(pre["image_std"]).view(3, 1, 1)

    @staticmethod
    def _features(out) -> torch.Tensor:
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out, dim=-1)

    @torch.no_grad()
    def text(self, captions: list[str]) -> torch.Tensor:
        enc = self.tok.encode_batch(captions)
        pad = self.tok.token_to_id("<|endoftext|>")
        n = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [pad] * (n - len(e.ids)) for e in enc])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (n - len(e.ids)) for e in enc])
        return self._features(self.model.get_text_features(input_ids=ids, attention_mask=mask))

    @torch.no_grad()
    def image(self, path: pathlib.Path) -> torch.Tensor:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255
        x = (x - self.mean) / self.std
        return self._features(self.model.get_image_features(pixel_values=x[None]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", required=True, type=pathlib.Path)
    ap.add_argument("runs", nargs="+", type=pathlib.Path, help="bench output folders")
    args = ap.parse_args()
    torch.set_num_threads(2)
    scorer = Scorer(args.clip)
    for run in args.runs:
        cases = sorted((run / "cases").glob("*/*/*.png"))
        if not cases:
            raise SystemExit(f"{run}: no cases/ENTITY/STYLE/ARM.png (not a bench output folder?)")
        styles = sorted({c.parent.name for c in cases})
        style_text = scorer.text([f"{s} style" for s in styles])
        for arm in sorted({c.stem for c in cases}):
            files = [c for c in cases if c.stem == arm]
            sims = [style_text @ scorer.image(f) for f in files]
            own = [styles.index(f.parent.name) for f in files]
            top = sum(int(s.argmax()) == o for s, o in zip(sims, own))
            mean = float(np.mean([float(s[o]) for s, o in zip(sims, own)]))
            print(f"{run} {arm}: own style first in {top} of {len(files)} ({top / len(files):.1%}), "
                  f"mean similarity to its style's caption {mean:.3f}")


if __name__ == "__main__":
    main()
