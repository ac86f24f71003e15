"""Trains one Re-Imagen stage (base or super-resolution) on the emoji dataset
(docs/dataset.md; docs/training.md has the runs and the decisions).

    python training/train_reimagen.py train --data ~/.local/share/reimagen/emoji --clip models/clip \
        --config training/reimagen/configs/base32_cpu.json --out runs/base32
    python training/train_reimagen.py train ... --resume          # continue from runs/X/checkpoint.pt
    python training/train_reimagen.py train ... --init-from models/reimagen/base   # warm start
    python training/train_reimagen.py bench --data D --clip C --config CFG --seconds 60
    python training/train_reimagen.py export --run runs/base32 --out models/reimagen/base
    python training/train_reimagen.py fake-data --out /tmp/fake-emoji   # a tiny dataset for tests

What a run does, the paper's way (design.md §2, §6; issue 10 §3):
- examples: the train split's renditions, each with its top-2 neighbours from neighbours.jsonl;
  held-out entities are never read (not their images, not their captions);
- a fixed validation set of *held-back renditions of train entities* (a hash of the id picks
  ~4% of the renditions of entities with ≥ 2 renditions); they are never trained on and never
  serve as a training example's neighbour;
- independent dropout of the text (p = 0.1) and of the neighbours (p = 0.1); a share of the
  captions loses its entity name (p_drop_name) or gets a made-up one (p_pseudo_name), as a
  held-out entity's name reads to the model;
- AdamW, EMA of the weights, optional bf16 autocast, gradient clipping;
- every `eval_every` samples: the validation loss with and without neighbours (the same
  timesteps and noise every time) and the **neighbour gap** = without − with;
- checkpoints (atomic) every `checkpoint_every_s` seconds and at the end: resumable; SIGTERM or
  Ctrl-C ends the run after the current step, as reaching its limit does;
- or a warm start from an exported stage folder (`--init-from`, the committed resume point when
  the run folder is gone): model and EMA from its f16 weights, a fresh optimiser with a new
  warm-up, the step and sample counts carried on from its training.json;
- a loss-curve PNG and a JSONL log in the run folder; export of the EMA weights through
  reimagen.export (f16 shards ≤ 15 MB).

Not here: the model (training/reimagen/model.py), the dataset builder (Rust, `reimagen dataset
build`).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import pathlib
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import export_stage, load_stage  # noqa: E402
from reimagen.model import ReImagenUNet, UNetConfig, count_parameters  # noqa: E402
from reimagen.schedule import Schedule  # noqa: E402
from reimagen.text import TextEncoder  # noqa: E402

TRAIN_DEFAULTS = {
    "batch_size": 32,
    "lr": 2e-4,
    "weight_decay": 0.01,
    "warmup_steps": 200,
    "grad_clip": 1.0,
    "ema_decay": 0.999,
    "p_drop_text": 0.1,
    "p_drop_neighbours": 0.1,
    # The share of examples whose caption loses its entity name ("dog face, twemoji style" →
    # "twemoji style"): the way a held-out entity's prompt looks to a model that never read its
    # name. Only the neighbours then say which entity to draw (docs/training.md).
    "p_drop_name": 0.0,
    # The share of examples whose entity name is replaced by a made-up one, in their caption and
    # in the captions of their neighbours of the same entity ("dog face, twemoji style" →
    # "brillon tesk, twemoji style"): a held-out entity's name is a word the text encoder never
    # learnt, whose token states point at whatever entities share its pieces, so the model
    # learns that a name it does not know says nothing and the neighbours say what to draw.
    # Drawn after p_drop_name: the shares add up (docs/training.md).
    "p_pseudo_name": 0.0,
    "pseudo_names": 1024,     # the made-up names, each captioned in every style (encoded once
                              # at start, when p_pseudo_name > 0)
    "neighbours": 2,
    "neighbour_backprop": True,  # gradients through the neighbours' DStack pass (False: ~20% cheaper)
    "val_examples": 64,
    "val_heldback_percent": 4,
    # Whole train-split entities set apart for validation (blake2b("entity:" + name) mod 100 <
    # this): never trained on, they are to the model what a held-out entity is. 0: none.
    "val_entities_percent": 0,
    "eval_every_samples": 20000,
    "checkpoint_every_s": 600,
    "image_key": "64",        # which manifest `files` entry holds the target image
    "low_res_key": None,      # and the low-res one (SR stages); None: box-downsample the target
    "crop": 0,                # SR stages: train on random crops of this size (0: whole images)
    "threads": 2,
    # A cooldown (warm-up, stable, decay): from `decay_from_samples` the learning rate falls
    # linearly to 0 at `decay_to_samples`, where the run stops. None: a constant rate. Set in a
    # branch's config, so the stable run can go on from its own checkpoint (docs/training.md).
    "decay_from_samples": None,
    "decay_to_samples": None,
}


# --------------------------------------------------------------------------------------------
# Data


def read_jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def held_back(rendition_id: str, percent: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(rendition_id.encode(), digest_size=8).digest(), "big")
    return h % 100 < percent


def load_image(path: pathlib.Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def style_caption(style: str) -> str:
    """A caption without its entity: what "<entity>, <style> style" says when the entity's name
    means nothing to the model."""
    return f"{style} style"


def pseudo_names(entities: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` made-up entity names shaped like `entities`: as many words as a random entity has,
    each a real word of theirs one time in five, else a word drawn from the letter bigrams of
    their words (3–12 letters, not one of their words); none equal to an entity. Deterministic."""
    rng = random.Random(seed)
    vocab = sorted({w for e in entities for w in e.split()})
    known = set(vocab)
    chain: dict[str, list[str]] = {}
    for w in vocab:
        w = f"^{w}$"
        for a, b in zip(w, w[1:]):
            chain.setdefault(a, []).append(b)

    def word() -> str:
        while True:
            c, w = "^", ""
            while len(w) < 12:
                c = rng.choice(chain[c])
                if c == "$":
                    break
                w += c
            if len(w) >= 3 and w not in known:
                return w

    taken, out = set(entities), []
    while len(out) < n:
        words = len(rng.choice(entities).split())
        name = " ".join(rng.choice(vocab) if rng.random() < 0.2 else word() for _ in range(words))
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


class EmojiData:
    """The train split in memory: images (uint8), caption token states (f16), neighbours."""

    def __init__(self, root, enc: TextEncoder, cfg: UNetConfig, train: dict, log=print):
        root = pathlib.Path(root)
        # Only renditions that exist at the sizes this stage reads (noto has no 256 rendition).
        keys = [train["image_key"]] + ([train["low_res_key"]] if cfg.is_super_resolution
                                       and train.get("low_res_key") else [])
        manifest = [m for m in read_jsonl(root / "manifest.jsonl")
                    if m["split"] == "train" and all(k in m["files"] for k in keys)]
        by_id = {m["id"]: m for m in manifest}
        neighbours = {n["id"]: n for n in read_jsonl(root / "neighbours.jsonl") if n["id"] in by_id}
        per_entity: dict[str, int] = {}
        for m in manifest:
            per_entity[m["entity"]] = per_entity.get(m["entity"], 0) + 1
        # Validation entities (val_entities_percent): whole train-split entities set apart — never
        # trained on, never a training example's neighbour — as a held-out entity is to the
        # model, so their losses measure what the neighbours bring to an entity it never drew.
        vpct = train["val_entities_percent"]
        unseen_entities = {m["entity"] for m in manifest
                           if vpct and held_back("entity:" + m["entity"], vpct)}
        by_hash = lambda i: hashlib.blake2b(i.encode(), digest_size=8).digest()  # noqa: E731
        pct = train["val_heldback_percent"]
        val_ids = sorted(
            (m["id"] for m in manifest
             if per_entity[m["entity"]] >= 2 and held_back(m["id"], pct) and m["id"] in neighbours
             and m["entity"] not in unseen_entities), key=by_hash)
        unseen_ids = sorted((m["id"] for m in manifest
                             if m["entity"] in unseen_entities and m["id"] in neighbours), key=by_hash)
        heldback = {m["id"] for m in manifest
                    if held_back(m["id"], pct) or m["entity"] in unseen_entities}
        self.ids = [m["id"] for m in manifest]
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.train_ids = [i for i in self.ids if i not in heldback and i in neighbours]
        k = train["neighbours"]
        s = cfg.sample_size

        t0 = time.time()
        self.images = torch.from_numpy(np.stack(
            [load_image(root / by_id[i]["files"][train["image_key"]], s) for i in self.ids]))
        self.low = None
        if cfg.is_super_resolution:
            r = cfg.low_res_size
            key = train["low_res_key"]
            if key:
                self.low = torch.from_numpy(np.stack(
                    [load_image(root / by_id[i]["files"][key], r) for i in self.ids]))
            else:
                self.low = (F.interpolate(self.images.float(), size=(r, r), mode="area")
                            .round().clamp(0, 255).to(torch.uint8))
        log(f"data: images loaded in {time.time() - t0:.1f}s "
            f"({self.images.numel() / 2**20:.0f} MiB uint8)")
        t0 = time.time()
        states, valid = enc.encode([by_id[i]["caption"] for i in self.ids])
        self.text = states.half()
        self.text_valid = valid
        # The captions without the entity name: one per style, shared by its renditions.
        styles = sorted({by_id[i]["style"] for i in self.ids})
        s_states, s_valid = enc.encode([style_caption(s) for s in styles])
        self.style_row = torch.tensor([styles.index(by_id[i]["style"]) for i in self.ids])
        self.style_text, self.style_valid = s_states.half(), s_valid
        log(f"data: {len(self.ids)} captions encoded in {time.time() - t0:.1f}s")
        # Made-up names (p_pseudo_name): pseudo_text[j, s] holds "<name j>, <style s> style".
        entities = sorted({by_id[i]["entity"] for i in self.ids})
        entity_index = {e: n for n, e in enumerate(entities)}
        self.entity_row = torch.tensor([entity_index[by_id[i]["entity"]] for i in self.ids])
        self.pseudo_text = self.pseudo_valid = None
        if train["p_pseudo_name"] > 0:
            t0 = time.time()
            names = pseudo_names(entities, train["pseudo_names"])
            p_states, p_valid = enc.encode([f"{n}, {s} style" for n in names for s in styles])
            shape = (len(names), len(styles))
            self.pseudo_text = p_states.half().view(*shape, *p_states.shape[1:])
            self.pseudo_valid = p_valid.view(*shape, -1)
            log(f"data: {len(names)} made-up names × {len(styles)} styles encoded in "
                f"{time.time() - t0:.1f}s (e.g. {', '.join(names[:3])})")

        # Neighbour table [N, K] of row indices (−1 = none). Held-back renditions never serve as
        # a training example's neighbour; a validation example keeps all its neighbours.
        self.nbr = torch.full((len(self.ids), k), -1, dtype=torch.long)
        val_set = set(val_ids) | set(unseen_ids)
        for i in self.ids:
            if i not in neighbours:
                continue
            cands = [n for n in neighbours[i]["neighbours"] if n in self.index and n != i]
            if i not in val_set:
                cands = [n for n in cands if n not in heldback]
            for j, n in enumerate(cands[:k]):
                self.nbr[self.index[i], j] = self.index[n]
        # Validation examples need a neighbour, or "with" and "without" are the same call.
        self.val_ids = [i for i in val_ids if int(self.nbr[self.index[i]].max()) >= 0]
        self.val_ids = self.val_ids[: train["val_examples"]]
        self.unseen_ids = [i for i in unseen_ids if int(self.nbr[self.index[i]].max()) >= 0]
        self.unseen_ids = self.unseen_ids[: train["val_examples"]]
        log(f"data: {len(self.ids)} train-split renditions, {len(self.train_ids)} training "
            f"examples, {len(heldback)} held back, {len(self.val_ids)} validation examples"
            + (f", {len(self.unseen_ids)} examples of {len(unseen_entities)} unseen validation "
               f"entities"
               if unseen_entities else ""))

    def drop_names(self, b: dict, rows: torch.Tensor, which: torch.Tensor) -> None:
        """Give the examples `which` (bool [B]) their style-only caption, in place."""
        st = self.style_row[rows[which]]
        b["text"][which] = self.style_text[st].float()
        b["text_valid"][which] = self.style_valid[st]

    def pseudo_name(self, b: dict, rows: torch.Tensor, which: torch.Tensor,
                    picks: torch.Tensor) -> None:
        """Give the examples `which` (bool [B]) the made-up name `picks[i]` in their caption and
        in their neighbours' captions of the same entity (a KB would hold the unknown name in
        both), in place."""
        idx = which.nonzero().flatten()
        if len(idx) == 0:
            return
        r, j = rows[idx], picks[idx]
        b["text"][idx] = self.pseudo_text[j, self.style_row[r]].float()
        b["text_valid"][idx] = self.pseudo_valid[j, self.style_row[r]]
        k = self.nbr.shape[1]
        nb = self.nbr[r]
        same = ((nb >= 0) & (self.entity_row[nb.clamp(min=0)] == self.entity_row[r, None])).flatten()
        slots = (idx[:, None] * k + torch.arange(k)).flatten()[same]
        jj = j[:, None].expand(-1, k).flatten()[same]
        st = self.style_row[nb.flatten()[same]]
        b["nbr_text"][slots] = self.pseudo_text[jj, st].float()
        b["nbr_valid"][slots] = self.pseudo_valid[jj, st]

    def batch(self, rows: torch.Tensor):
        """Targets, text, neighbour images/text/weights (weight 0 where a slot is empty)."""
        x0 = to_model_range(self.images[rows])
        nb = self.nbr[rows]
        present = nb >= 0
        nb_rows = nb.clamp(min=0).flatten()
        return {
            "x0": x0,
            "text": self.text[rows].float(),
            "text_valid": self.text_valid[rows].clone(),
            "nbr_images": to_model_range(self.images[nb_rows]),
            "nbr_text": self.text[nb_rows].float(),
            "nbr_valid": self.text_valid[nb_rows],
            "nbr_weights": present.float(),
            "low": None if self.low is None else to_model_range(self.low[rows]),
        }


# --------------------------------------------------------------------------------------------
# Model step


def crop_batch(b: dict, cfg: UNetConfig, size: int, gen: torch.Generator | None = None) -> dict:
    """Crop training for a super-resolution stage (its convolutions do not care about the image
    size): the target and the neighbours are cut to `size`×`size` at random offsets (one per
    batch, from `gen`; the centre without one), and the low-res image is kept whole — model_loss
    noise-augments it at its own size, upsamples it to the stage's size as inference does, then
    cuts the target's window (`low_window`). A 64×64 crop of a 256×256 stage costs 1/16 of a
    whole image."""
    s = cfg.sample_size

    def offset():
        if gen is None:
            return (s - size) // 2, (s - size) // 2
        return tuple(int(v) for v in torch.randint(s - size + 1, (2,), generator=gen))

    out = dict(b)
    oy, ox = offset()
    out["x0"] = b["x0"][..., oy:oy + size, ox:ox + size]
    out["low_window"] = (oy, ox, size)
    ny, nx = offset()
    out["nbr_images"] = b["nbr_images"][..., ny:ny + size, nx:nx + size]
    return out


def model_loss(model, sched: Schedule, b: dict, t, noise, aug=None, aug_noise=None,
               nbr_grad: bool = True):
    """The diffusion loss of one batch (t, noise and the SR augmentation given, so validation can
    fix them). With `nbr_grad` false the neighbour pass runs without autograd: the shared DStack
    then learns only from the noisy image's path and the neighbour attention learns to read its
    t = 0 features (about a fifth less compute per step; `neighbour_backprop` in the config).
    A batch from crop_batch carries `low_window`: the low-res image's upsampled crop is used."""
    cfg = model.cfg
    n, k = b["nbr_weights"].shape
    with torch.set_grad_enabled(nbr_grad and torch.is_grad_enabled()):
        feats = model.encode_neighbours(b["nbr_images"], b["nbr_text"], b["nbr_valid"])
    feats = {key: f.view(n, k, *f.shape[1:]) for key, f in feats.items()}
    x_t = sched.add_noise(b["x0"], noise, t)
    low = None
    if cfg.is_super_resolution:
        low = b["low"]
        if aug is not None:  # a = 0 means no augmentation (docs/generator.md §6)
            low = torch.where((aug > 0).view(-1, 1, 1, 1), sched.add_noise(low, aug_noise, aug), low)
    window = b.get("low_window")
    if low is not None and window is not None:
        oy, ox, size = window
        s = cfg.sample_size
        low = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
        low = low[..., oy:oy + size, ox:ox + size]
    out = model(x_t, t.float(), b["text"], b["text_valid"], feats, b["nbr_weights"], low_res=low,
                aug=None if aug is None else aug.float(), low_res_upsampled=window is not None)
    return F.mse_loss(out.float(), sched.target(b["x0"], noise, t), reduction="none").mean((1, 2, 3))


def to_device(b: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in b.items()}


class Validation:
    """Fixed validation batches with fixed timesteps and noise: losses are comparable across
    evaluations and the with/without-neighbours difference is paired.

    Two sets: held-back renditions of train entities (keys without a prefix, "noname_…",
    "pseudo_…") and, when the config sets `val_entities_percent`, renditions of validation
    entities the model never trained on ("unseen_…", "unseen_pseudo_…")."""

    def __init__(self, data: EmojiData, sched: Schedule, cfg: UNetConfig, seed: int = 1234,
                 crop: int = 0):
        self.sets = []
        g = torch.Generator().manual_seed(seed)
        rows = torch.tensor([data.index[i] for i in data.val_ids], dtype=torch.long)
        batch = data.batch(rows)
        # The same examples with the entity name dropped from their captions: the neighbours
        # are then the only clue to the entity, as for a held-out entity's prompt.
        noname = {**batch, "text": batch["text"].clone(), "text_valid": batch["text_valid"].clone()}
        data.drop_names(noname, rows, torch.ones(len(rows), dtype=torch.bool))
        arms = [("", batch), ("noname_", noname)]
        # And with made-up names in their captions and their same-entity neighbours' captions:
        # a held-out entity's prompt, whose name the text encoder never learnt.
        if data.pseudo_text is not None:
            arms.append(("pseudo_", self.made_up(data, batch, rows, seed + 1)))
        self.add(arms, g, sched, cfg, crop)
        if data.unseen_ids:
            rows = torch.tensor([data.index[i] for i in data.unseen_ids], dtype=torch.long)
            batch = data.batch(rows)
            arms = [("unseen_", batch)]
            if data.pseudo_text is not None:
                arms.append(("unseen_pseudo_", self.made_up(data, batch, rows, seed + 3)))
            self.add(arms, torch.Generator().manual_seed(seed + 2), sched, cfg, crop)

    @staticmethod
    def made_up(data: EmojiData, batch: dict, rows: torch.Tensor, seed: int) -> dict:
        picks = torch.randint(len(data.pseudo_text), (len(rows),),
                              generator=torch.Generator().manual_seed(seed))
        out = {**batch, **{k: batch[k].clone() for k in ("text", "text_valid", "nbr_text", "nbr_valid")}}
        data.pseudo_name(out, rows, torch.ones(len(rows), dtype=torch.bool), picks)
        return out

    def add(self, arms, g, sched: Schedule, cfg: UNetConfig, crop: int) -> None:
        if crop:  # the centre crop, so evaluations stay comparable
            arms = [(p, crop_batch(b, cfg, crop)) for p, b in arms]
        first = arms[0][1]
        n = len(first["x0"])
        if n == 0:
            return
        # Stratified timesteps so every noise level is represented.
        t = ((torch.arange(n) + torch.rand(n, generator=g)) * sched.T / max(n, 1)).long()
        t = t.clamp(0, sched.T - 1)
        noise = torch.randn(first["x0"].shape, generator=g)
        aug = aug_noise = None
        if cfg.is_super_resolution and cfg.noise_aug_level > 0:
            aug = torch.full((n,), cfg.noise_aug_level, dtype=torch.long)
            aug_noise = torch.randn(first["low"].shape, generator=g)
        self.sets.append((arms, t, noise, aug, aug_noise))

    def keys(self) -> list[str]:
        """The keys `run` returns."""
        return [p + a for arms, *_ in self.sets for p, _ in arms for a in ("with", "without", "gap")]

    @torch.no_grad()
    def run(self, model, sched, device, chunk: int = 32) -> dict:
        """Validation losses: "with" and "without" neighbours on the full captions (their
        difference is the neighbour gap), the same two with the entity names dropped
        ("noname_with", "noname_without", their difference "noname_gap"), with made-up names
        ("pseudo_…", when the data has them), and on the unseen validation entities
        ("unseen_…", "unseen_pseudo_…", when the config sets them apart)."""
        if not self.sets:
            return {}
        model.eval()
        res = {}
        for arms, t, noise, aug, aug_noise in self.sets:
            for prefix, full in arms:
                for arm in ("with", "without"):
                    losses = []
                    for s in range(0, len(t), chunk):
                        sl = slice(s, s + chunk)
                        b = {k: (v[sl] if torch.is_tensor(v) and k not in ("nbr_images", "nbr_text", "nbr_valid")
                                 else v) for k, v in full.items()}
                        kk = full["nbr_weights"].shape[1]
                        nsl = slice(s * kk, (s + chunk) * kk)
                        for key in ("nbr_images", "nbr_text", "nbr_valid"):
                            b[key] = full[key][nsl]
                        if arm == "without":
                            b["nbr_weights"] = torch.zeros_like(b["nbr_weights"])
                        b = to_device(b, device)
                        losses.append(model_loss(
                            model, sched, b, t[sl].to(device), noise[sl].to(device),
                            None if aug is None else aug[sl].to(device),
                            None if aug_noise is None else aug_noise[sl].to(device)).cpu())
                    res[prefix + arm] = float(torch.cat(losses).mean())
                res[prefix + "gap"] = res[prefix + "without"] - res[prefix + "with"]
        model.train()
        return res


# --------------------------------------------------------------------------------------------
# Run


def load_config(path) -> tuple[UNetConfig, dict, dict]:
    doc = json.loads(pathlib.Path(path).read_text())
    train = {**TRAIN_DEFAULTS, **doc.get("train", {})}
    unknown = set(doc.get("train", {})) - set(TRAIN_DEFAULTS)
    if unknown:
        raise SystemExit(f"{path}: unknown train keys {sorted(unknown)}")
    return doc["model"], train, doc


def build(args, log=print):
    model_dict, train, doc = load_config(args.config)
    torch.set_num_threads(train["threads"] if args.device == "cpu" else os.cpu_count())
    clip = pathlib.Path(args.clip)
    model_dict = dict(model_dict)
    probe = json.loads((clip / "config.json").read_text())
    text_cfg = probe.get("text_config", probe)
    model_dict["text_dim"] = text_cfg["hidden_size"]
    model_dict["text_max_length"] = min(model_dict.get("text_max_length", 32),
                                        text_cfg["max_position_embeddings"])
    cfg = UNetConfig.from_dict(model_dict)
    enc = TextEncoder(clip, cfg.text_max_length)
    return cfg, train, doc, enc


def init_from(folder: pathlib.Path, cfg: UNetConfig, model, ema, device) -> dict:
    """Warm start from an exported stage folder: its weights (f16 → f32) into the model and the
    EMA, the counts of its training.json carried on, the optimiser fresh (a new warm-up starts at
    `opt_step0`). The folder's model config must equal the run's, but for the text encoder path
    and the dtype, which export rewrites, the prediction type and the neighbour position code:
    the weights are the same set, and a run may retarget its output (ε → v) or give its
    neighbour attention positions, and learn the new meaning from the old features."""
    try:
        loaded = load_stage(folder)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--init-from {folder}: {e}")
    free = ("text_encoder", "dtype", "prediction_type", "neighbour_positions")
    mine = {k: v for k, v in cfg.to_dict().items() if k not in free}
    theirs = {k: v for k, v in loaded.cfg.to_dict().items() if k not in free}
    if mine != theirs:
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise SystemExit(f"--init-from {folder}: its config differs from the run's in {diff}")
    model.load_state_dict(loaded.state_dict())
    ema.load_state_dict(loaded.state_dict())
    model.to(device)
    ema.to(device)
    record = folder / "training.json"
    prior = json.loads(record.read_text()) if record.exists() else {}
    step = int(prior.get("steps", 0))
    retarget = loaded.cfg.prediction_type != cfg.prediction_type
    if retarget:
        print(f"--init-from {folder}: its output predicts {loaded.cfg.prediction_type}; this run "
              f"trains it to predict {cfg.prediction_type}", flush=True)
    return {"step": step, "samples": int(prior.get("samples", 0)),
            "elapsed": float(prior.get("elapsed_s", 0.0)), "history": [],
            # The validation losses of another target are not comparable: a retargeted run's
            # curve starts afresh.
            "evals": [] if retarget else list(prior.get("evals", [])), "opt_step0": step,
            "init_from": {"folder": str(folder), "prediction_type": loaded.cfg.prediction_type,
                          **{k: prior.get(k) for k in ("steps", "samples")}}}


def save_checkpoint(path: pathlib.Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def plot(run: pathlib.Path, history: list[dict], evals: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if history:
        xs = [h["samples"] for h in history]
        ax.plot(xs, [h["loss"] for h in history], lw=0.6, alpha=0.4, label="train loss")
        ax.plot(xs, [h["loss_ema"] for h in history], lw=1.2, label="train loss (smoothed)")
    if evals:
        xs = [e["samples"] for e in evals]
        ax.plot(xs, [e["with"] for e in evals], "o-", label="val, with neighbours")
        ax.plot(xs, [e["without"] for e in evals], "s-", label="val, neighbours dropped")
        ax2 = ax.twinx()
        ax2.plot(xs, [e["gap"] for e in evals], "k^--", label="neighbour gap")
        named = [e for e in evals if "noname_gap" in e]
        if named:
            ax2.plot([e["samples"] for e in named], [e["noname_gap"] for e in named], "v:",
                     color="grey", label="gap, entity names dropped")
        ax2.axhline(0, color="k", lw=0.5)
        ax2.set_ylabel("neighbour gap (without − with)")
    ax.set_xlabel("training samples")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    # One legend for both axes, below the plot, where it hides no curve.
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3,
                  fontsize="small", frameon=False)
    ax.set_title(run.name)
    fig.tight_layout()
    fig.savefig(run / "loss.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def cooldown_factor(tr: dict, samples: int) -> float:
    """The learning rate's multiplier at `samples`: 1 before the cooldown, then a linear fall to
    0 at `decay_to_samples`."""
    start, end = tr["decay_from_samples"], tr["decay_to_samples"]
    if end is None or samples <= start:
        return 1.0
    return max(0.0, (end - samples) / (end - start))


def train(args) -> None:
    run = pathlib.Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "log.jsonl", "a", encoding="utf-8")

    def log(msg):
        print(msg, flush=True)

    cfg, tr, doc, enc = build(args, log)
    device = torch.device(args.device)
    data = EmojiData(args.data, enc, cfg, tr, log)
    sched = Schedule(cfg)
    model = ReImagenUNet(cfg).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
    state = {"step": 0, "samples": 0, "elapsed": 0.0, "history": [], "evals": []}
    ckpt = run / "checkpoint.pt"
    if args.resume and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["config"] != cfg.to_dict():
            raise SystemExit(f"{ckpt}: its model config differs from {args.config}")
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"]["torch"])
        random.setstate(saved["rng"]["python"])
        log(f"resumed at step {state['step']} ({state['samples']} samples)")
    elif args.init_from:
        state = init_from(pathlib.Path(args.init_from), cfg, model, ema, device)
        torch.manual_seed(args.seed + state["step"])
        random.seed(args.seed + state["step"])
        log(f"warm start from {args.init_from} at step {state['step']} ({state['samples']} samples)")
    else:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
    log(f"model: {count_parameters(model) / 1e6:.2f}M parameters, {cfg.sample_size}×{cfg.sample_size}"
        f"{' from ' + str(cfg.low_res_size) if cfg.is_super_resolution else ''}")
    crop = tr["crop"]
    if crop and not cfg.is_super_resolution:
        raise SystemExit(f"{args.config}: crop training is for super-resolution stages only")
    if crop and (crop > cfg.sample_size or crop % (2 ** (len(cfg.block_channels) - 1))):
        raise SystemExit(f"{args.config}: crop {crop} must be ≤ sample_size and divisible by "
                         f"2^(levels-1)")
    crop_gen = torch.Generator().manual_seed(args.seed + state["step"])
    val = Validation(data, sched, cfg, crop=crop)
    bs = tr["batch_size"]
    n_train = len(data.train_ids)
    train_rows = torch.tensor([data.index[i] for i in data.train_ids], dtype=torch.long)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def checkpoint():
        save_checkpoint(ckpt, {
            "config": cfg.to_dict(), "train": tr, "model": model.state_dict(),
            "ema": ema.state_dict(), "opt": opt.state_dict(), "state": state,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}})
        plot(run, state["history"], state["evals"])

    def evaluate():
        res = val.run(ema, sched, device)
        if res:
            rec = {"kind": "eval", "step": state["step"], "samples": state["samples"], **res}
            state["evals"].append(rec)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log(f"eval @ {state['samples']} samples: val with {res['with']:.4f}, "
                f"without {res['without']:.4f}, neighbour gap {res['gap']:+.5f}; names dropped: "
                f"with {res['noname_with']:.4f}, without {res['noname_without']:.4f}, "
                f"gap {res['noname_gap']:+.5f}"
                + (f"; made-up names: with {res['pseudo_with']:.4f}, without "
                   f"{res['pseudo_without']:.4f}, gap {res['pseudo_gap']:+.5f}"
                   if "pseudo_gap" in res else "")
                + (f"; unseen entities: with {res['unseen_with']:.4f}, without "
                   f"{res['unseen_without']:.4f}, gap {res['unseen_gap']:+.5f}"
                   if "unseen_gap" in res else "")
                + (f"; unseen, made-up names: with {res['unseen_pseudo_with']:.4f}, without "
                   f"{res['unseen_pseudo_without']:.4f}, gap {res['unseen_pseudo_gap']:+.5f}"
                   if "unseen_pseudo_gap" in res else ""))

    limit_samples = args.max_samples or float("inf")
    decay = (tr["decay_from_samples"], tr["decay_to_samples"])
    if decay != (None, None):
        if None in decay or decay[0] >= decay[1]:
            raise SystemExit(f"{args.config}: decay_from_samples and decay_to_samples are set "
                             f"together, the first below the second (got {decay})")
        limit_samples = min(limit_samples, decay[1])
    limit_s = args.minutes * 60 if args.minutes else float("inf")
    start = time.time()
    last_ckpt = start
    started_elapsed = state["elapsed"]
    started_samples = state["samples"]
    next_eval = (state["samples"] // tr["eval_every_samples"] + 1) * tr["eval_every_samples"]
    loss_ema = state["history"][-1]["loss_ema"] if state["history"] else None
    model.train()
    if state["evals"] and set(val.keys()) - set(state["evals"][-1]):
        evaluate()  # where a resumed run starts on the made-up-names losses
    # SIGTERM / SIGINT end the run after the current step, with the same evaluation, checkpoint,
    # sheet and export as a run that reached its limit.
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    while state["samples"] < limit_samples and time.time() - start < limit_s and not stop:
        rows = train_rows[torch.randint(n_train, (bs,))]
        b = data.batch(rows)
        if crop:
            b = crop_batch(b, cfg, crop, crop_gen)
        drop_text = torch.rand(bs) < tr["p_drop_text"]
        if tr["p_drop_name"] > 0 or tr["p_pseudo_name"] > 0:
            u = torch.rand(bs)  # one draw: dropped below p_drop_name, made up in the next share
            data.drop_names(b, rows, (u < tr["p_drop_name"]) & ~drop_text)
            if tr["p_pseudo_name"] > 0:
                pseudo = (u >= tr["p_drop_name"]) & (u < tr["p_drop_name"] + tr["p_pseudo_name"])
                data.pseudo_name(b, rows, pseudo & ~drop_text,
                                 torch.randint(len(data.pseudo_text), (bs,)))
        b["text_valid"][drop_text] = 0.0
        drop_nbr = torch.rand(bs) < tr["p_drop_neighbours"]
        b["nbr_weights"][drop_nbr] = 0.0
        b = to_device(b, device)
        t = torch.randint(sched.T, (bs,), device=device)
        noise = torch.randn_like(b["x0"])
        aug = aug_noise = None
        if cfg.is_super_resolution and cfg.noise_aug_max > 0:
            aug = torch.randint(cfg.noise_aug_max, (bs,), device=device)
            aug_noise = torch.randn_like(b["low"])
        lr = tr["lr"] * min(1.0, (state["step"] - state.get("opt_step0", 0) + 1) / tr["warmup_steps"])
        lr *= cooldown_factor(tr, state["samples"])
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast:
            loss = model_loss(model, sched, b, t, noise, aug, aug_noise,
                              nbr_grad=tr["neighbour_backprop"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        with torch.no_grad():
            d = min(tr["ema_decay"], (1 + state["step"]) / (10 + state["step"]))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        state["step"] += 1
        state["samples"] += bs
        state["elapsed"] = started_elapsed + time.time() - start
        lv = float(loss.detach())
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        if state["step"] % 10 == 0:
            rec = {"kind": "train", "step": state["step"], "samples": state["samples"],
                   "loss": lv, "loss_ema": loss_ema, "lr": lr, "elapsed_s": state["elapsed"]}
            state["history"].append(rec)
            logf.write(json.dumps(rec) + "\n")
        if state["step"] % 50 == 0:
            log(f"step {state['step']}  samples {state['samples']}  loss {loss_ema:.4f}  "
                f"{(state['samples'] - started_samples) / max(time.time() - start, 1e-9):.1f} "
                f"samples/s")
        if state["samples"] >= next_eval:
            evaluate()
            next_eval += tr["eval_every_samples"]
        if time.time() - last_ckpt > tr["checkpoint_every_s"]:
            checkpoint()
            last_ckpt = time.time()
    if stop:
        log(f"stopping on signal {stop[0]} at step {state['step']}")
    if not state["evals"] or state["evals"][-1]["samples"] != state["samples"]:
        evaluate()
    checkpoint()
    if args.sheet:
        sample_sheet(run, ema, sched, data)
    if args.export:
        export(run, args.export, args.clip_rel)
    log(f"done: {state['step']} steps, {state['samples']} samples, {state['elapsed'] / 60:.1f} min")


def export(run, out, clip_rel: str | None = None) -> None:
    run = pathlib.Path(run)
    saved = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    cfg = UNetConfig.from_dict(saved["config"])
    if clip_rel:
        cfg.text_encoder = clip_rel
    model = ReImagenUNet(cfg)
    model.load_state_dict(saved["ema"])
    files = export_stage(model, out)
    # Every evaluation (a warm start carries them on) and what a card needs to list the run
    # without its checkpoint: ship_generator.py can ship an exported stage unchanged.
    st = saved["state"]
    card = {"steps": st["step"], "samples": st["samples"], "elapsed_s": st["elapsed"],
            "batch_size": saved["train"]["batch_size"], "evals": st["evals"],
            **({"init_from": st["init_from"]} if st.get("init_from") else {})}
    (pathlib.Path(out) / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {len(files)} shard(s) to {out}")


@torch.no_grad()
def sample_sheet(run: pathlib.Path, model, sched: Schedule, data: EmojiData, n: int = 6,
                 steps: int = 25, seed: int = 0) -> None:
    """samples.png: for n validation examples, rows of [target | neighbour 1 | neighbour 2 |
    sample with neighbours | sample with neighbours dropped], DDIM, joint guidance (the raw
    model, so the two columns differ only by the neighbours), same x_T for both."""
    from reimagen.guidance import Condition, Guidance, sample
    cfg = model.cfg
    model = copy.deepcopy(model).cpu().float().eval()  # a few calls: the CPU does them anywhere
    rows = torch.tensor([data.index[i] for i in data.val_ids[:n]], dtype=torch.long)
    if len(rows) == 0:
        return
    b = data.batch(rows)
    k = b["nbr_weights"].shape[1]
    g = torch.Generator().manual_seed(seed)
    tiles = []
    for r in range(len(rows)):
        nb = slice(r * k, (r + 1) * k)
        feats = model.encode_neighbours(b["nbr_images"][nb], b["nbr_text"][nb], b["nbr_valid"][nb])
        x_T = torch.randn(1, 3, cfg.sample_size, cfg.sample_size, generator=g)
        low = None if b["low"] is None else b["low"][r:r + 1]
        outs = []
        for w in (b["nbr_weights"][r], torch.zeros(k)):
            cond = Condition(b["text"][r:r + 1], b["text_valid"][r:r + 1], feats, w,
                             low_res=low, aug=0)
            x, _ = sample(model, sched, x_T, cond, Guidance("joint"), "ddim", steps, seed)
            outs.append(x[0])
        tiles.append([b["x0"][r], *b["nbr_images"][nb], *outs])
    grid = torch.stack([torch.cat(list(t), dim=2) for t in tiles])
    grid = torch.cat(list(grid), dim=1)
    img = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(img).save(run / "samples.png")


def bench(args) -> None:
    """samples/s of training steps (fwd + bwd + AdamW, neighbours included) for `seconds`,
    after two warm-up steps, on synthetic tensors of the config's shapes (no dataset needed)."""
    model_dict, tr, _ = load_config(args.config)
    torch.set_num_threads(tr["threads"] if args.device == "cpu" else os.cpu_count())
    cfg = UNetConfig.from_dict(model_dict)
    device = torch.device(args.device)
    sched = Schedule(cfg)
    model = ReImagenUNet(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bs, k, s, L = tr["batch_size"], tr["neighbours"], cfg.sample_size, cfg.text_max_length
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    crop_gen = torch.Generator().manual_seed(0)

    def step():
        b = {"x0": torch.rand(bs, 3, s, s, device=device) * 2 - 1,
             "text": torch.randn(bs, L, cfg.text_dim, device=device),
             "text_valid": torch.ones(bs, L, device=device),
             "nbr_images": torch.rand(bs * k, 3, s, s, device=device) * 2 - 1,
             "nbr_text": torch.randn(bs * k, L, cfg.text_dim, device=device),
             "nbr_valid": torch.ones(bs * k, L, device=device),
             "nbr_weights": torch.ones(bs, k, device=device),
             "low": (torch.rand(bs, 3, cfg.low_res_size, cfg.low_res_size, device=device) * 2 - 1
                     if cfg.is_super_resolution else None)}
        if tr["crop"]:
            b = crop_batch(b, cfg, tr["crop"], crop_gen)
        t = torch.randint(sched.T, (bs,), device=device)
        aug = torch.randint(max(cfg.noise_aug_max, 1), (bs,), device=device) \
            if cfg.is_super_resolution else None
        with autocast:
            loss = model_loss(model, sched, b, t, torch.randn_like(b["x0"]), aug,
                              None if aug is None else torch.randn_like(b["low"]),
                              nbr_grad=tr["neighbour_backprop"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    n = 0
    load0 = os.getloadavg()[0]
    c0 = time.process_time()
    t0 = time.time()
    while time.time() - t0 < args.seconds:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.time() - t0
    cpu = time.process_time() - c0
    rec = {"config": str(args.config), "params_M": round(count_parameters(model) / 1e6, 3),
           "batch": bs, "neighbours": k, "neighbour_backprop": tr["neighbour_backprop"], "steps": n, "seconds": round(dt, 1),
           "samples_per_s": round(n * bs / dt, 1), "samples_per_hour": round(n * bs / dt * 3600),
           "device": args.device, "threads": torch.get_num_threads(), "bf16": args.bf16,
           # Other processes share this machine's cores: the CPU seconds this process got, and
           # the samples per CPU-second, say how much of the machine the figure had.
           "cpu_seconds": round(cpu, 1), "samples_per_cpu_s": round(n * bs / max(cpu, 1e-9), 2),
           "loadavg_1m_before": load0, "loadavg_1m_after": os.getloadavg()[0]}
    print(json.dumps(rec), flush=True)


# --------------------------------------------------------------------------------------------
# A tiny fake dataset in the real format (for tests before the builder's output exists)


def fake_data(out) -> None:
    out = pathlib.Path(out)
    rng = np.random.default_rng(0)
    shapes = ["circle", "square", "triangle", "ring", "cross", "diamond"]
    colours = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
               "gold": (230, 180, 30)}
    styles = ["twemoji", "openmoji", "fluent-flat"]
    manifest, entities, neighbours = [], [], []
    for shape in shapes:
        for cname, rgb in colours.items():
            entity = f"{cname} {shape}"
            slug = entity.replace(" ", "-")
            split = "heldout" if hashlib.blake2b(entity.encode()).digest()[0] < 26 else "train"
            entities.append({"entity": entity, "slug": slug, "split": split,
                             "tags": [cname, shape], "styles": styles})
            for si, style in enumerate(styles):
                files = {}
                for size in (64, 256):
                    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
                    r = np.hypot(xx, yy)
                    mask = {"circle": r < 0.35, "square": (abs(xx) < 0.3) & (abs(yy) < 0.3),
                            "triangle": (yy > -0.3) & (yy < 0.3) & (abs(xx) < (yy + 0.3) / 2),
                            "ring": (r < 0.38) & (r > 0.22),
                            "cross": ((abs(xx) < 0.1) | (abs(yy) < 0.1)) & (r < 0.4),
                            "diamond": abs(xx) + abs(yy) < 0.38}[shape]
                    img = np.full((size, size, 3), 255, np.uint8)
                    col = np.array(rgb) * (1 - 0.25 * si)
                    img[mask] = col.astype(np.uint8)
                    if si == 1:  # an outline style
                        edge = mask & ~np.roll(mask, 2, 0)
                        img[edge] = 0
                    noise = rng.integers(-6, 7, img.shape)
                    img = np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)
                    rel = f"{size}/{split}/{slug}/{style}.png"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(out / rel)
                    caption = f"{entity}, {style} style"
                    (out / rel).with_suffix(".txt").write_text(
                        f"{caption}\nentity: {entity}\ntags: {cname}, {shape}\n")
                    files[str(size)] = rel
                manifest.append({"id": f"{slug}/{style}", "entity": entity, "slug": slug,
                                 "style": style, "split": split,
                                 "caption": f"{entity}, {style} style", "tags": [cname, shape],
                                 "source": "fake", "license": "CC0-1.0", "files": files})
    manifest.sort(key=lambda m: m["id"])
    train = [m for m in manifest if m["split"] == "train"]
    for i, m in enumerate(train):
        exclude = i % 2 == 0
        same = [o["id"] for o in train if o["entity"] == m["entity"] and o["id"] != m["id"]
                and not (exclude and o["style"] == m["style"])]
        other = [o["id"] for o in train if o["entity"] != m["entity"] and o["style"] == m["style"]]
        nb = (same + other)[:2]
        neighbours.append({"id": m["id"], "neighbours": nb, "scores": [9.0, 5.0][:len(nb)],
                           "exclude_own_style": exclude})
    for name, rows in (("manifest", manifest), ("entities", entities), ("neighbours", neighbours)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"fake dataset: {len(manifest)} renditions ({len(train)} train) in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--device", default="cpu")
        p.add_argument("--bf16", action="store_true", help="bf16 autocast")
        if name == "train":
            p.add_argument("--data", required=True)
            p.add_argument("--clip", required=True, help="the CLIP folder (text tower, frozen)")
            p.add_argument("--out", required=True, help="the run folder")
            p.add_argument("--resume", action="store_true")
            p.add_argument("--init-from", metavar="STAGE_DIR",
                           help="warm start from an exported stage folder (when there is no "
                                "checkpoint to --resume from)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--max-samples", type=int, default=0)
            p.add_argument("--minutes", type=float, default=0)
            p.add_argument("--export", help="export the EMA weights here at the end")
            p.add_argument("--sheet", action="store_true",
                           help="write samples.png (validation examples, with and without "
                                "neighbours) at the end")
            p.add_argument("--clip-rel", default="../clip",
                           help="text_encoder path written into the exported config.json")
        else:
            p.add_argument("--seconds", type=float, default=60)
    p = sub.add_parser("export")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clip-rel", default="../clip")
    p = sub.add_parser("fake-data")
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "train":
        train(args)
    elif args.cmd == "bench":
        bench(args)
    elif args.cmd == "export":
        export(args.run, args.out, args.clip_rel)
    else:
        fake_data(args.out)


if __name__ == "__main__":
    main()
