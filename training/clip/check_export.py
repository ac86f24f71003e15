"""Checks an exported CLIP folder (models/clip/ or a run's export) the way its users load it.

    python training/clip/check_export.py models/clip [--data ~/.local/share/reimagen/emoji]

Fails (exit 1, naming the file and the reason) unless:
- every *.safetensors file is ≤ 15 MB and holds only f16 tensors; a sharded folder has its
  model.safetensors.index.json naming every shard;
- transformers loads it (`CLIPModel`, `AutoTokenizer`, `CLIPImageProcessor`) and the tokenizer
  through transformers gives the same ids as `tokenizers` reading tokenizer.json;
- every encoding starts with <|startoftext|> and ends with <|endoftext|> = text_config.eos_token_id
  (so transformers pools at the first end-of-text, not the legacy argmax), and padding a text
  with <|endoftext|> does not change its embedding;
- the image processor turns a 64×64 image into the trainer's normalisation (max |Δ| < 1e-5) and a
  256×256 image into a 64×64 input;
- with --data: the held-out entities' image→image top-1 is above chance (the model is trained).

Not here: training (train_clip.py), the Rust loader's own parity tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_clip as tc  # noqa: E402

LIMIT = 15 * 1000 * 1000


def fail(msg: str) -> None:
    print(f"FAIL: {msg}")
    sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--data", type=Path, default=None)
    args = ap.parse_args()
    d: Path = args.folder
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    shards = sorted(d.glob("*.safetensors"))
    if not shards:
        fail(f"{d}: no *.safetensors")
    total = 0
    for s in shards:
        size = s.stat().st_size
        total += size
        if size > LIMIT:
            fail(f"{s}: {size} bytes > 15 MB")
        with safe_open(s, "pt") as f:
            for k in f.keys():
                dt = f.get_slice(k).get_dtype()
                if dt != "F16":
                    fail(f"{s}: tensor {k} is {dt}, not F16")
    if len(shards) > 1:
        idx = d / "model.safetensors.index.json"
        if not idx.is_file():
            fail(f"{idx}: missing for {len(shards)} shards")
        named = set(json.loads(idx.read_text())["weight_map"].values())
        if named != {s.name for s in shards}:
            fail(f"{idx}: names {sorted(named)}, folder has {[s.name for s in shards]}")
    print(f"ok: {len(shards)} f16 shard(s), {total / 1e6:.1f} MB, each ≤ 15 MB")

    cfg = json.loads((d / "config.json").read_text())
    eos = cfg["text_config"]["eos_token_id"]
    model = CLIPModel.from_pretrained(d, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    sot, eot = tok.token_to_id(tc.SOT), tok.token_to_id(tc.EOT)
    if eot != eos or eos == 2:
        fail(f"{d}/config.json: eos_token_id {eos}, tokenizer's <|endoftext|> is {eot}")
    if model.text_model.eos_token_id != eot:
        fail(f"transformers' text model pools at eos {model.text_model.eos_token_id}, not {eot}")
    auto = AutoTokenizer.from_pretrained(d)
    texts = ["Dog Face, twemoji style", "flag: Bhutan in openmoji style", "  TOKYO   tower ",
             "ünïcödé — 🐶 emoji", "x" * 300]
    for t in texts:
        ids = tok.encode(t).ids
        if ids[0] != sot or ids[-1] != eot:
            fail(f"tokenizer.json: {t!r} -> {ids} does not start/end with {sot}/{eot}")
        if len(ids) > cfg["text_config"]["max_position_embeddings"]:
            fail(f"tokenizer.json: {t!r} gives {len(ids)} ids > max_position_embeddings")
        a = auto(t, truncation=True)["input_ids"]
        if a != ids:
            fail(f"AutoTokenizer and tokenizers disagree on {t!r}: {a} vs {ids}")
    print(f"ok: tokenizer ({tok.get_vocab_size()} tokens; sot {sot}, eot {eot}); "
          f"{texts[0]!r} -> {tok.encode(texts[0]).tokens}")

    with torch.inference_mode():
        ids = torch.tensor([tok.encode(texts[0]).ids])
        padded = torch.cat([ids, torch.full((1, 7), eot)], 1)
        a = model.get_text_features(input_ids=ids).pooler_output
        b = model.get_text_features(input_ids=padded).pooler_output
        if not torch.allclose(a, b, atol=1e-5):
            fail(f"padding with <|endoftext|> changes the text embedding by {(a - b).abs().max()}")
    print("ok: pooling at the first <|endoftext|>; padding does not change the embedding")

    proc = CLIPImageProcessor.from_pretrained(d)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    got = proc(images=im, return_tensors="pt")["pixel_values"]
    want = tc.normalise(torch.from_numpy(np.asarray(im)).permute(2, 0, 1)[None].float() / 255)
    diff = (got - want).abs().max().item()
    if diff > 1e-5:
        fail(f"{d}/preprocessor_config.json: a 64×64 image differs from training by {diff}")
    big = proc(images=im.resize((256, 300)), return_tensors="pt")["pixel_values"]
    if tuple(big.shape) != (1, 3, 64, 64):
        fail(f"{d}/preprocessor_config.json: a 256×300 image becomes {tuple(big.shape)}")
    print(f"ok: preprocessing matches training (max |Δ| {diff:.1e}); 256×300 -> 64×64")

    if args.data:
        data = tc.load_dataset(args.data)
        imgs = tc.load_images(data.heldout)
        e = tc.embed_images(model, imgs)
        ents = [r.entity for r in data.heldout]
        s = e @ e.t()
        s.fill_diagonal_(-2)
        multi = [i for i, x in enumerate(ents) if ents.count(x) > 1]
        res = tc.topk_hits(s[multi], [ents[i] for i in multi], ents)
        chance = 1 / len(set(ents))
        print(f"held-out image→image: top-1 {res['top1']}, top-5 {res['top5']} "
              f"over {res['queries']} queries (chance ≈ {chance:.3f})")
        if res["top1"] <= 2 * chance:
            fail("held-out image→image top-1 is at chance: the model is not trained")
    print("all checks passed")


if __name__ == "__main__":
    main()
