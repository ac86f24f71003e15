"""Trains the project's small CLIP on the emoji dataset and exports it in the Hugging Face layout.

One command, resumable: run it again with the same arguments and it continues from the newest
checkpoint in --out (the tokenizer, the validation split and the data order are fixed by the
first run). What it does, in order:

1. Reads the dataset (docs/dataset.md): the train split only. Held-out entities
   (blake3(name)[0] < 26, design.md §6) are never tokenised or trained on; the rule is re-checked
   here, not just read from the manifest. From the train entities a fixed ~6% get one rendition
   held back as validation (the entity's name is trained, that image is not).
2. Trains a CLIP-style tokenizer with `tokenizers` on the training captions: NFC, whitespace
   folding, lower case, CLIP's word regex, byte-level BPE with the `</w>` end-of-word suffix,
   the vocabulary laid out as CLIP's (256 bytes, 256 bytes + `</w>`, merges, then
   <|startoftext|> and <|endoftext|> last), the two markers added by a post-processor.
3. Trains a transformers `CLIPModel` (64×64 input, small ViT and text transformer) with the
   symmetric contrastive loss. Texts are the caption, "<entity> in <style> style", the caption
   with the entity's tags, or the bare entity name; a bare name matches every rendition of its
   entity in the batch (soft targets).
   Augmentations move, scale and turn the image on its white background and never touch colour
   (colour is what tells "red heart" from "blue heart"). AdamW, linear warm-up, cosine decay.
4. Checkpoints every --ckpt-minutes (atomic), exports every --export-minutes and at the end to
   --export-dir: f16 safetensors sharded ≤ 15 MB, config.json, tokenizer.json,
   preprocessor_config.json, a model card, the loss curve and training_record.json with the
   evaluation (validation renditions, and zero-shot on the held-out entities).

    nice -n 19 python training/clip/train_clip.py --data ~/.local/share/reimagen/emoji --out runs/clip

`--export-only` writes an export from the newest checkpoint without training (it does not touch
the checkpoint, so it is safe beside a running run when given another --export-dir); SIGUSR1
makes a running trainer export after its current step; SIGTERM/SIGINT make it checkpoint and
stop. `--bench N` times N training steps of the configured model and exits.

Not here: the dataset builder (`reimagen dataset build`), the Rust CLIP (src/embed/), the
generator's trainer (train_reimagen.py), checks of an exported folder (check_export.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# --------------------------------------------------------------------------------------------
# Constants shared with the Rust side (preprocessor_config.json carries them too).

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
# CLIP's word pattern (openai/CLIP simple_tokenizer.py), as Hugging Face writes it in tokenizer.json.
CLIP_WORD_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
RECORD_VERSION = 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Data


def is_held_out(entity: str) -> bool:
    """design.md §6: an entity is held out when blake3(name as UTF-8)[0] < 26."""
    import blake3

    return blake3.blake3(entity.encode("utf-8")).digest()[0] < 26


def _h(s: str) -> bytes:
    return hashlib.sha256(s.encode("utf-8")).digest()


@dataclass
class Rendition:
    id: str
    entity: str
    style: str
    caption: str
    path: Path
    tags: tuple[str, ...] = ()


@dataclass
class Dataset:
    train: list[Rendition]  # what the model trains on
    val: list[Rendition]  # train entities' held-back renditions (never trained on)
    heldout: list[Rendition]  # held-out entities (never trained on, names never tokenised)
    license_counts: dict[str, dict[str, int]]  # style -> license -> renditions
    manifest_sha256: str = ""
    packages: tuple[str, ...] = ()  # "name@version" from build.json, when present


def load_dataset(root: Path, val_byte: int = 16) -> Dataset:
    """Reads manifest.jsonl and splits it: train / validation renditions / held-out entities.

    Validation: a train entity with ≥ 2 renditions whose sha256("val:" + name)[0] < val_byte
    (16 → ~6%) has its rendition with the smallest sha256(id) held back.
    """
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"error: {manifest} not found (is the dataset built?)")
    rows = []
    with open(manifest) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                m = json.loads(line)
                rows.append(m)
                _ = (m["id"], m["entity"], m["style"], m["split"], m["caption"], m["files"]["64"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"error: {manifest}:{n}: bad manifest line ({e})")
    license_counts: dict[str, dict[str, int]] = {}
    by_entity: dict[str, list[Rendition]] = {}
    heldout: list[Rendition] = []
    for m in rows:
        held = is_held_out(m["entity"])
        if held != (m["split"] == "heldout"):
            raise SystemExit(
                f"error: {manifest}: {m['id']} has split {m['split']!r} but the held-out rule "
                f"says {'heldout' if held else 'train'} for entity {m['entity']!r}"
            )
        r = Rendition(m["id"], m["entity"], m["style"], m["caption"], root / m["files"]["64"],
                      tuple(m.get("tags") or ()))
        lic = license_counts.setdefault(m["style"], {})
        lic[m.get("license", "?")] = lic.get(m.get("license", "?"), 0) + 1
        if held:
            heldout.append(r)
        else:
            by_entity.setdefault(m["entity"], []).append(r)
    train, val = [], []
    for entity in sorted(by_entity):
        rs = sorted(by_entity[entity], key=lambda r: r.id)
        if len(rs) >= 2 and _h("val:" + entity)[0] < val_byte:
            v = min(rs, key=lambda r: _h(r.id))
            val.append(v)
            rs = [r for r in rs if r is not v]
        train.extend(rs)
    heldout.sort(key=lambda r: r.id)
    packages: tuple[str, ...] = ()
    try:
        build = json.loads((root / "build.json").read_text())
        packages = tuple(f"{p['name']}@{p['version']}" for p in build.get("packages", []))
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        pass  # build.json is informative only
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return Dataset(train, val, heldout, license_counts, digest, packages)


def load_images(rs: list[Rendition], size: int = 64) -> torch.Tensor:
    """[N, 3, size, size] uint8, RGB (any alpha composited on white)."""
    out = np.empty((len(rs), size, size, 3), dtype=np.uint8)
    for i, r in enumerate(rs):
        with Image.open(r.path) as im:
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = np.asarray(im)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# Tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table (ByteLevel's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _pipeline(tok):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Replace("</w>", " "), decoders.Strip(" ", 0, 1)]
    )


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A CLIP-layout byte-level BPE tokenizer trained on `texts` (see the module doc)."""
    from tokenizers import AddedToken, Tokenizer, models, processors, trainers

    base = list(bytes_to_unicode().values())
    n_merges = vocab_size - 2 * len(base) - 2
    if n_merges < 1:
        raise SystemExit(f"error: --vocab {vocab_size} leaves no room for merges (min 515)")
    probe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    _pipeline(probe)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 600,  # the trainer counts its own alphabet; trimmed below
        min_frequency=2,
        show_progress=False,
        initial_alphabet=base,
        end_of_word_suffix="</w>",
        continuing_subword_prefix="",
    )
    probe.train_from_iterator(texts, trainer)
    merges_raw = json.loads(probe.to_str())["model"]["merges"]
    vocab: dict[str, int] = {}
    for t in base + [c + "</w>" for c in base]:
        vocab[t] = len(vocab)
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        a, b = (m.split(" ") if isinstance(m, str) else m)
        if len(vocab) >= vocab_size - 2:
            break
        if a not in vocab or b not in vocab:
            continue  # cannot happen for a trainer's merge list; kept safe
        merges.append((a, b))
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=EOT,
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
        )
    )
    _pipeline(tok)
    tok.add_special_tokens(
        [AddedToken(SOT, special=True, normalized=False), AddedToken(EOT, special=True, normalized=False)]
    )
    sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)
    assert (sot, eot) == (len(vocab), len(vocab) + 1), (sot, eot, len(vocab))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}",
        pair=f"{SOT} $A {EOT} $B {EOT}",
        special_tokens=[(SOT, sot), (EOT, eot)],
    )
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


def encode(tok, texts: list[str], max_length: int) -> torch.Tensor:
    """[B, L] ids padded with <|endoftext|> (transformers pools at the first one)."""
    eot = tok.token_to_id(EOT)
    encs = tok.encode_batch(texts)
    L = min(max_length, max(len(e.ids) for e in encs))
    ids = torch.full((len(texts), L), eot, dtype=torch.long)
    for i, e in enumerate(encs):
        seq = e.ids[:L]
        if seq[-1] != eot:  # truncated: keep the end-of-text marker, it is where CLIP pools
            seq = seq[:-1] + [eot]
        ids[i, : len(seq)] = torch.tensor(seq)
    return ids


# --------------------------------------------------------------------------------------------
# Model


def make_config(args, vocab_size: int, sot: int, eot: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=args.text_width,
            intermediate_size=args.text_width * 4,
            num_hidden_layers=args.text_layers,
            num_attention_heads=args.text_width // 64,
            max_position_embeddings=args.max_text_len,
            hidden_act="quick_gelu",
            projection_dim=args.embed_dim,
            bos_token_id=sot,
            eos_token_id=eot,
            pad_token_id=eot,
        ),
        vision_config=dict(
            image_size=64,
            patch_size=args.patch,
            hidden_size=args.vision_width,
            intermediate_size=args.vision_width * 4,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=args.vision_width // 64,
            hidden_act="quick_gelu",
            projection_dim=args.embed_dim,
        ),
        projection_dim=args.embed_dim,
    )


MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 [B,3,H,W] → float [0,1], randomly moved, scaled and turned on white. No colour change."""
    B = x.shape[0]
    x = x.float() / 255.0
    ang = (torch.rand(B, generator=g) * 2 - 1) * math.radians(10)
    scale = 0.8 + torch.rand(B, generator=g) * 0.35  # >1 zooms out
    tx = (torch.rand(B, generator=g) * 2 - 1) * 0.15
    ty = (torch.rand(B, generator=g) * 2 - 1) * 0.15
    cos, sin = torch.cos(ang) * scale, torch.sin(ang) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # [B,2,3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample (x - 1) with zero padding so the area brought in from outside is white.
    y = F.grid_sample(x - 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (y + 1.0).clamp(0, 1)


def with_tags(r: Rendition) -> str:
    return f"{r.caption}: {', '.join(r.tags)}" if r.tags else r.caption


def texts_for(rs: list[Rendition], g: random.Random, p_caption: float, p_template: float,
              p_tags: float):
    """One text per rendition and whether it names the entity only.

    The caption, "<entity> in <style> style" (the product's prompt), the caption with the
    entity's tags (words shared across entities, which is what lets an unseen name land near
    its relatives), or the bare name.
    """
    texts, entity_only = [], []
    for r in rs:
        u = g.random()
        if u < p_caption:
            texts.append(r.caption)
        elif u < p_caption + p_template:
            texts.append(f"{r.entity} in {r.style} style")
        elif u < p_caption + p_template + p_tags:
            texts.append(with_tags(r))
        else:
            texts.append(r.entity)
        entity_only.append(texts[-1] == r.entity)
    return texts, entity_only


def soft_clip_loss(logits_t2i: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss; targets[i, j] = 1 where text i describes image j."""
    t2i = targets / targets.sum(1, keepdim=True)
    i2t = targets.t() / targets.t().sum(1, keepdim=True)
    lt = -(t2i * F.log_softmax(logits_t2i, 1)).sum(1).mean()
    li = -(i2t * F.log_softmax(logits_t2i.t(), 1)).sum(1).mean()
    return (lt + li) / 2


def embed_images(model, imgs_u8: torch.Tensor, bs: int = 256) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(imgs_u8), bs):
            x = normalise(imgs_u8[i : i + bs].float() / 255.0)
            out.append(F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1))
    return torch.cat(out) if out else torch.empty(0)


def embed_texts(model, tok, texts: list[str], max_len: int, bs: int = 512) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            ids = encode(tok, texts[i : i + bs], max_len)
            out.append(F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1))
    return torch.cat(out) if out else torch.empty(0)


# --------------------------------------------------------------------------------------------
# Evaluation


def topk_hits(sim: torch.Tensor, q_ent: list[str], g_ent: list[str], ks=(1, 5)) -> dict:
    """Share of queries whose top-k gallery items include one of the same entity."""
    res = {}
    if sim.shape[0] == 0:
        return {f"top{k}": None for k in ks} | {"queries": 0, "gallery": len(g_ent)}
    g = np.array(g_ent, dtype=object)
    order = sim.topk(min(max(ks), sim.shape[1]), dim=1).indices.numpy()
    for k in ks:
        hit = [q in set(g[order[i, :k]]) for i, q in enumerate(q_ent)]
        res[f"top{k}"] = round(float(np.mean(hit)), 4)
    res["queries"] = sim.shape[0]
    res["gallery"] = sim.shape[1]
    return res


def evaluate(model, tok, data: Dataset, imgs: dict, max_len: int, full: bool) -> dict:
    """Entity retrieval on validation renditions and zero-shot on held-out entities.

    - val text→image: each held-back rendition's caption against all held-back renditions
      (images never trained on; names trained). Hit: same entity.
    - val image→image: each held-back rendition against the trained renditions of the
      validation entities plus a fixed sample of other trained renditions (all of them when
      `full`). Hit: same entity.
    - held-out text→image / image→image: the same among the held-out entities' renditions only
      (names and images never trained on); image→image leaves the query out of the gallery.
    - held-out style pick: among one held-out entity's renditions, does the caption pick the
      rendition of the style it names?
    - train text→image on a fixed sample of 500 trained renditions (how well it fits).
    """
    model.eval()
    out: dict = {}
    rng = np.random.default_rng(0)
    # Validation renditions.
    if data.val:
        v_img = embed_images(model, imgs["val"])
        v_txt = embed_texts(model, tok, [r.caption for r in data.val], max_len)
        v_ent = [r.entity for r in data.val]
        out["val_text_to_image"] = topk_hits(v_txt @ v_img.t(), v_ent, v_ent) | {
            "chance_top1": round(1 / len(set(v_ent)), 4)
        }
        val_entities = set(v_ent)
        same = [i for i, r in enumerate(data.train) if r.entity in val_entities]
        others = [i for i, r in enumerate(data.train) if r.entity not in val_entities]
        if not full and len(others) > 3000:
            others = sorted(rng.choice(others, 3000, replace=False).tolist())
        gi = same + others
        g_img = embed_images(model, imgs["train"][gi])
        g_ent = [data.train[i].entity for i in gi]
        out["val_image_to_image"] = topk_hits(v_img @ g_img.t(), v_ent, g_ent)
    # Held-out entities: zero-shot.
    if data.heldout:
        h_img = embed_images(model, imgs["heldout"])
        h_txt = embed_texts(model, tok, [r.caption for r in data.heldout], max_len)
        h_ent = [r.entity for r in data.heldout]
        out["heldout_text_to_image"] = topk_hits(h_txt @ h_img.t(), h_ent, h_ent) | {
            "chance_top1": round(1 / len(set(h_ent)), 4)
        }
        s = h_img @ h_img.t()
        s.fill_diagonal_(-2.0)
        multi = [i for i, e in enumerate(h_ent) if h_ent.count(e) > 1]
        out["heldout_image_to_image"] = topk_hits(s[multi][:, :], [h_ent[i] for i in multi], h_ent)
        out["heldout_image_to_image"]["gallery"] = len(h_ent) - 1
        # Style pick within each entity.
        st = h_txt @ h_img.t()
        picks, chance = [], []
        for i, r in enumerate(data.heldout):
            cand = [j for j, e in enumerate(h_ent) if e == r.entity]
            if len(cand) < 2:
                continue
            best = max(cand, key=lambda j: st[i, j].item())
            picks.append(best == i)
            chance.append(1 / len(cand))
        out["heldout_style_pick"] = {
            "top1": round(float(np.mean(picks)), 4) if picks else None,
            "queries": len(picks),
            "chance_top1": round(float(np.mean(chance)), 4) if chance else None,
        }
    # Fit on trained renditions.
    if data.train:
        idx = sorted(rng.choice(len(data.train), min(500, len(data.train)), replace=False).tolist())
        t_img = embed_images(model, imgs["train"][idx])
        t_txt = embed_texts(model, tok, [data.train[i].caption for i in idx], max_len)
        t_ent = [data.train[i].entity for i in idx]
        out["train_text_to_image"] = topk_hits(t_txt @ t_img.t(), t_ent, t_ent)
    model.train()
    return out


# --------------------------------------------------------------------------------------------
# Checkpoints, export, records


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def plot_loss(history: list[dict], evals: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    w = max(1, min(50, len(loss) // 20))  # trailing mean over w steps
    csum = np.cumsum([0.0] + loss)
    ema = [(csum[i + 1] - csum[max(0, i + 1 - w)]) / min(w, i + 1) for i in range(len(loss))]
    ax = axes[0]
    ax.plot(steps, loss, color="#9ecae1", lw=0.6, label="loss (per step)")
    ax.plot(steps, ema, color="#08519c", lw=1.5, label=f"mean of {w} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    for key, label in [
        ("val_text_to_image", "val text→image"),
        ("val_image_to_image", "val image→image"),
        ("heldout_text_to_image", "held-out text→image (zero-shot)"),
        ("heldout_image_to_image", "held-out image→image"),
    ]:
        pts = [(e["step"], e["eval"][key]["top1"]) for e in evals if key in e["eval"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_xlim(0, max(steps[-1], 1))
    ax.set_ylabel("top-1 entity retrieval")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_preprocessor(dst: Path) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 64},
        resample=3,  # bicubic, as CLIP
        do_center_crop=True,
        crop_size={"height": 64, "width": 64},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    ).save_pretrained(dst)


def write_tokenizer_files(tok, dst: Path, max_len: int) -> None:
    tok.save(str(dst / "tokenizer.json"))
    # So transformers' AutoTokenizer picks the fast tokenizer from tokenizer.json as is.
    (dst / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": SOT,
                "eos_token": EOT,
                "unk_token": EOT,
                "pad_token": EOT,
                "model_max_length": max_len,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
        + "\n"
    )


def export(model, tok, args, record: dict, dst: Path) -> None:
    """The Hugging Face folder, written to a temporary sibling and swapped in."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    import copy

    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(tmp, max_shard_size="15MB", safe_serialization=True)
    del half
    write_tokenizer_files(tok, tmp, args.max_text_len)
    write_preprocessor(tmp)
    plot_loss(record["history"], record["evals"], tmp / "loss_curve.png", record["title"])
    # The record keeps at most ~400 loss points (the checkpoint keeps every step).
    hist = record["history"]
    every = max(1, math.ceil(len(hist) / 400))
    slim = record | {"history_every": every,
                     "history": [h for i, h in enumerate(hist) if i % every == every - 1]}
    (tmp / "training_record.json").write_text(json.dumps(slim, indent=1) + "\n")
    write_model_card(tmp, record)
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old)
    else:
        os.replace(tmp, dst)


def fmt_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def write_model_card(dst: Path, rec: dict) -> None:
    c = rec["config"]
    ev = rec["evals"][-1]["eval"] if rec["evals"] else {}
    run = rec["run"]
    data = rec["data"]

    def row(name, key, note):
        e = ev.get(key)
        if not e:
            return f"| {name} | n/a | n/a | | {note} |"
        ch = e.get("chance_top1")
        return (
            f"| {name} | {fmt_pct(e.get('top1'))} | {fmt_pct(e.get('top5'))} | "
            f"{e.get('queries')} / {e.get('gallery', '')} | {note}"
            + (f" (chance top-1 {fmt_pct(ch)})" if ch else "")
            + " |"
        )

    lic_lines = "\n".join(
        f"| {style} | {', '.join(f'{k} ({v})' for k, v in sorted(lics.items()))} |"
        for style, lics in sorted(data["licenses_by_style"].items())
    )
    sp = ev.get("heldout_style_pick", {})
    interim = (
        f"\n**An intermediate export** of a run still in progress (step {run['step']:,} of "
        f"{c['steps']:,}); a later export of the same run replaces it.\n"
        if run["step"] < c["steps"] else ""
    )

    def ratio_line(ev: dict) -> str:
        parts = []
        for key, name in [("heldout_text_to_image", "zero-shot text→image"),
                          ("heldout_image_to_image", "held-out image→image")]:
            e = ev.get(key) or {}
            ch = e.get("chance_top1") or (1 / max(1, data["entities_heldout"]))
            if e.get("top1") is not None:
                parts.append(f"{name} top-1 is {e['top1'] / ch:.0f}× chance ({fmt_pct(ch)})")
        return ("On the held-out entities, " + "; ".join(parts) + ".") if parts else ""

    card = f"""# reimagen CLIP (small, 64×64, trained on multi-style emoji)

The project's own small CLIP: a KB's embedder (`reimagen init --embedder models/clip`) and the
text encoder the generator is trained with. Hugging Face `CLIPModel` layout (config.json, f16 safetensors sharded
≤ 15 MB, tokenizer.json, preprocessor_config.json): it loads with transformers'
`CLIPModel.from_pretrained` and with the project's Rust loader. Trained by
`training/clip/train_clip.py` (docs/training.md, section CLIP).

```python
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
model = CLIPModel.from_pretrained("models/clip")  # f16 weights; pass dtype=torch.float32 on CPU
tok = AutoTokenizer.from_pretrained("models/clip")
proc = CLIPImageProcessor.from_pretrained("models/clip")
text = model.get_text_features(**tok(["dog face in twemoji style"], return_tensors="pt")).pooler_output
```

## Model

| | vision | text |
|---|---|---|
| width × layers × heads | {c['vision_width']} × {c['vision_layers']} × {c['vision_width'] // 64} | {c['text_width']} × {c['text_layers']} × {c['text_width'] // 64} |
| input | 64×64 RGB, patch {c['patch']} ({(64 // c['patch']) ** 2} patches + class token) | ≤ {c['max_text_len']} tokens, vocabulary {c['vocab_size']} |
| activation | quick_gelu | quick_gelu, causal mask, pooled at the first `<|endoftext|>` (eos_token_id {c['eos_token_id']}) |

Projection dimension {c['embed_dim']}; {rec['parameters']:,} parameters; f16 weights. Tokenizer: byte-level
BPE as CLIP's (lower case, `</w>` end-of-word suffix, `<|startoftext|>` {c['bos_token_id']} and
`<|endoftext|>` {c['eos_token_id']} added by the post-processor), trained on the training captions only.
Preprocessing: shortest side to 64 (bicubic), centre crop 64, CLIP mean/std.

## Data

The emoji dataset built by `reimagen dataset build` (docs/dataset.md): each entity ("dog face")
has renditions in several art styles. {data['entities_train']} training entities with
{data['renditions_train']} trained renditions; {data['renditions_val']} validation renditions (one held back
from each of {data['renditions_val']} training entities: the name was trained, that image was not);
{data['entities_heldout']} held-out entities with {data['renditions_heldout']} renditions.
Styles: {', '.join(data['styles'])}. Packages: {', '.join(data.get('packages') or ['n/a'])};
manifest sha256 `{data.get('manifest_sha256', '')[:16]}…`.

**Held-out rule** (design.md §6): an entity whose `blake3(name as UTF-8)` first byte is < 26 is
never trained on: neither its images nor its captions (the tokenizer never saw them either).
The trainer recomputes the rule and stops if the manifest disagrees.

Training texts: the caption ({c['p_caption']:.0%}), "<entity> in <style> style" ({c['p_template']:.0%}),
the caption with the entity's tags ({c['p_tags']:.0%}), or the bare entity name
({1 - c['p_caption'] - c['p_template'] - c['p_tags']:.0%}, which matches every rendition of the entity in the batch). Augmentations: random shift (±{int(0.15 * 32)} px), scale (0.8–1.15) and rotation (±10°)
on the white background; never colour, never flips.

## Training run
{interim}
| | |
|---|---|
| steps | {run['step']:,} of {c['steps']:,} planned (batch {c['batch']}, {run['samples']:,} samples, {run['epochs']:.1f} epochs) |
| time | {run['train_seconds'] / 3600:.2f} h of training |
| device | {run['device']} |
| optimiser | AdamW (lr {c['lr']}, weight decay {c['weight_decay']}, β₂ 0.98), {c['warmup']} warm-up steps, cosine to {c['min_lr_frac']}×lr |
| final loss | {run['final_loss']:.3f} (mean of the last 50 steps; starts near ln(batch) = {math.log(c['batch']):.2f}) |
| logit scale | {run['logit_scale']:.1f} |

![loss curve](loss_curve.png)

## Evaluation (step {rec['evals'][-1]['step'] if rec['evals'] else 'n/a'}; hit = a retrieved image of the same entity)

| task | top-1 | top-5 | queries / gallery | note |
|---|---|---|---|---|
{row('validation text→image', 'val_text_to_image', 'caption vs. held-back renditions')}
{row('validation image→image', 'val_image_to_image', 'held-back rendition vs. trained renditions')}
{row('**held-out text→image (zero-shot)**', 'heldout_text_to_image', 'names and images never trained on: the honest number')}
{row('held-out image→image', 'heldout_image_to_image', 'another style of an unseen entity')}
{row('trained text→image', 'train_text_to_image', 'fit on 500 trained renditions')}

Held-out style pick (the caption picks the right style among one held-out entity's renditions):
{fmt_pct(sp.get('top1'))} over {sp.get('queries', 0)} queries (chance {fmt_pct(sp.get('chance_top1'))}).

{ratio_line(ev)}

## License

The weights are derived from the art sets below; their licenses apply (see `LICENSES/` at the
repository root for attribution and how share-alike is treated). Renditions per style and license:

| style | license (renditions) |
|---|---|
{lic_lines}
"""
    (dst / "README.md").write_text(card)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train the project's small CLIP (see module doc).")
    ap.add_argument("--data", type=Path, default=Path.home() / ".local/share/reimagen/emoji")
    ap.add_argument("--out", type=Path, default=Path("runs/clip"))
    ap.add_argument("--export-dir", type=Path, default=None, help="default: OUT/export")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-text-len", type=int, default=32)
    ap.add_argument("--vision-width", type=int, default=192)
    ap.add_argument("--vision-layers", type=int, default=6)
    ap.add_argument("--text-width", type=int, default=192)
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--p-caption", type=float, default=0.5)
    ap.add_argument("--p-template", type=float, default=0.2)
    ap.add_argument("--p-tags", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--export-minutes", type=float, default=20.0)
    ap.add_argument("--max-minutes", type=float, default=None, help="stop this invocation after")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="with no checkpoint in OUT: start from an export (e.g. models/clip): its "
                         "weights, tokenizer, config and step; the optimiser starts fresh")
    ap.add_argument("--bench", type=int, default=0, help="time N steps and exit")
    return ap.parse_args(argv)


# Arguments that shape the model, the tokenizer or the data: fixed by the first run.
FIXED = [
    "vocab", "max_text_len", "vision_width", "vision_layers", "text_width", "text_layers",
    "patch", "embed_dim", "seed", "batch",
]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from tokenizers import Tokenizer
    from transformers import CLIPModel

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    export_dir = args.export_dir or out / "export"
    ckpt_path = out / "ckpt.pt"
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    if ckpt is not None:
        for k in FIXED:
            if getattr(args, k) != ckpt["args"][k]:
                log(f"note: --{k.replace('_', '-')} {getattr(args, k)} differs from the "
                    f"checkpoint's {ckpt['args'][k]}; keeping the checkpoint's")
                setattr(args, k, ckpt["args"][k])
        if args.steps != ckpt["args"]["steps"]:
            log(f"note: --steps {args.steps} (checkpoint planned {ckpt['args']['steps']}): "
                "the cosine schedule follows the new total")

    t0 = time.time()
    data = load_dataset(args.data)
    if not data.train:
        raise SystemExit(f"error: {args.data}: no training renditions")
    log(f"data: {len(data.train)} train / {len(data.val)} val renditions, "
        f"{len(data.heldout)} held-out renditions of "
        f"{len({r.entity for r in data.heldout})} held-out entities")

    init = None
    if ckpt is None and args.init_from is not None:
        # A fresh machine has the shipped export but not the optimiser checkpoint: continue
        # from the export's weights and step (AdamW's moments restart, with 50 steps of warm-up).
        init = json.loads((args.init_from / "training_record.json").read_text())
        for k in FIXED:
            if k in init["config"] and getattr(args, k) != init["config"][k]:
                log(f"note: --{k.replace('_', '-')} {getattr(args, k)} differs from "
                    f"{args.init_from}'s {init['config'][k]}; keeping the export's")
                setattr(args, k, init["config"][k])
        shutil.copyfile(args.init_from / "tokenizer.json", out / "tokenizer.json")

    tok_path = out / "tokenizer.json"
    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
    else:
        corpus = [with_tags(r) for r in data.train] + [
            f"{r.entity} in {r.style} style" for r in data.train
        ]
        tok = train_tokenizer(corpus, args.vocab, args.max_text_len)
        tok.save(str(tok_path))
    vocab_size = tok.get_vocab_size()
    sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)

    config = make_config(args, vocab_size, sot, eot)
    torch.manual_seed(args.seed)
    model = CLIPModel(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in n or "logit_scale" in n else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    state = {"step": 0, "train_seconds": 0.0, "history": [], "evals": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state = ckpt["state"]
        log(f"resumed from {ckpt_path} at step {state['step']}")
    elif init is not None:
        exported = CLIPModel.from_pretrained(args.init_from, torch_dtype=torch.float32)
        model.load_state_dict(exported.state_dict())
        state["step"] = init["run"]["step"]
        state["train_seconds"] = init["run"]["train_seconds"]
        state["evals"] = init["evals"]
        state["rewarm_from"] = state["step"]
        log(f"initialised from {args.init_from} at step {state['step']} (fresh optimiser)")
    del ckpt
    if state.get("manifest_sha256", data.manifest_sha256) != data.manifest_sha256:
        log("note: the dataset's manifest changed since the last checkpoint; training goes on "
            "with the new one (the held-out rule does not depend on it)")
    state["manifest_sha256"] = data.manifest_sha256

    imgs = {
        "train": load_images(data.train),
        "val": load_images(data.val),
        "heldout": load_images(data.heldout),
    }
    log(f"model {n_params:,} parameters; vocabulary {vocab_size}; images loaded in "
        f"{time.time() - t0:.0f}s")

    device_name = f"CPU ({args.threads} threads, torch {torch.__version__}, nice {os.nice(0)})"

    def record() -> dict:
        hist = state["history"]
        last = hist[-50:]
        cfg = {k: getattr(args, k) for k in FIXED + [
            "steps", "lr", "min_lr_frac", "weight_decay", "warmup", "p_caption", "p_template",
            "p_tags"]}
        cfg |= {"vocab_size": vocab_size, "bos_token_id": sot, "eos_token_id": eot}
        return {
            "version": RECORD_VERSION,
            "title": f"CLIP {n_params / 1e6:.1f}M, batch {args.batch}, {state['step']} steps",
            "config": cfg,
            "parameters": n_params,
            "data": {
                "dir": str(args.data),
                "manifest_sha256": data.manifest_sha256,
                "packages": list(data.packages),
                "renditions_train": len(data.train),
                "renditions_val": len(data.val),
                "renditions_heldout": len(data.heldout),
                "entities_train": len({r.entity for r in data.train}),
                "entities_heldout": len({r.entity for r in data.heldout}),
                "styles": sorted({r.style for r in data.train}),
                "licenses_by_style": data.license_counts,
            },
            "run": {
                "step": state["step"],
                "samples": state["step"] * args.batch,
                "epochs": state["step"] * args.batch / len(data.train),
                "train_seconds": state["train_seconds"],
                "device": device_name,
                "final_loss": float(np.mean([h["loss"] for h in last])) if last else float("nan"),
                "logit_scale": model.logit_scale.detach().exp().item(),
            },
            "history": hist,
            "evals": state["evals"],
        }

    def save_ckpt() -> None:
        atomic_torch_save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
             "args": vars(args) | {"data": str(args.data), "out": str(args.out),
                                   "export_dir": str(args.export_dir)}},
            ckpt_path,
        )
        log(f"checkpoint step {state['step']} -> {ckpt_path}")

    def do_export(full: bool) -> None:
        te = time.time()
        ev = evaluate(model, tok, data, imgs, args.max_text_len, full=full)
        state["evals"].append({"step": state["step"], "full": full, "eval": ev})
        export(model, tok, args, record(), export_dir)
        brief = {k: v.get("top1") for k, v in ev.items()}
        log(f"export step {state['step']} -> {export_dir} ({time.time() - te:.0f}s): {brief}")

    if args.export_only:
        # Leaves ckpt.pt alone: a run may be training from it right now.
        do_export(full=True)
        return

    # Data order: a fixed permutation per epoch, so a resumed run sees what it would have seen.
    N = len(data.train)
    steps_per_epoch = N // args.batch
    if steps_per_epoch < 1:
        raise SystemExit(f"error: batch {args.batch} exceeds the {N} training renditions")

    stop = {"flag": False}

    def on_signal(signum, _frame):
        log(f"signal {signum}: saving a checkpoint and stopping")
        stop["flag"] = True

    def on_usr1(_signum, _frame):
        log("SIGUSR1: exporting after this step")
        stop["export"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_usr1)

    last_ckpt = last_export = time.time()
    t_start = time.time()
    window_t, window_n = time.time(), 0
    bench_times = []
    while state["step"] < args.steps and not stop["flag"]:
        step = state["step"]
        epoch, pos = divmod(step, steps_per_epoch)
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
        idx = perm[pos * args.batch : (pos + 1) * args.batch]
        g = torch.Generator().manual_seed(args.seed * 7919 + step)
        rg = random.Random(args.seed * 104729 + step)
        rs = [data.train[i] for i in idx.tolist()]
        ts, tc0 = time.time(), time.process_time()
        x = normalise(augment(imgs["train"][idx], g))
        texts, entity_only = texts_for(rs, rg, args.p_caption, args.p_template, args.p_tags)
        ids = encode(tok, texts, args.max_text_len)
        ents = [r.entity for r in rs]
        targets = torch.eye(len(rs))
        for i, eo in enumerate(entity_only):
            if eo:
                for j, e in enumerate(ents):
                    if e == ents[i]:
                        targets[i, j] = 1.0
        lr = lr_at(step, args)
        if "rewarm_from" in state:  # a fresh optimiser after --init-from: 50 steps of warm-up
            lr *= min(1.0, (step - state["rewarm_from"] + 1) / 50)
        for grp in opt.param_groups:
            grp["lr"] = lr
        img_e = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
        txt_e = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * txt_e @ img_e.t()
        loss = soft_clip_loss(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        dt = time.time() - ts
        state["train_seconds"] += dt
        state["step"] += 1
        state["history"].append({"step": state["step"], "loss": round(loss.item(), 5),
                                 "lr": lr, "t": round(state["train_seconds"], 1)})
        window_n += 1
        if args.bench:
            bench_times.append((dt, time.process_time() - tc0))
            if len(bench_times) >= args.bench:
                warm = bench_times[2:] or bench_times
                wall = float(np.median([w for w, _ in warm]))
                cpu = float(np.median([c for _, c in warm]))
                sps = args.batch / wall
                # CPU seconds per step / threads: what the step would take on idle cores.
                print(json.dumps({"params": n_params, "batch": args.batch,
                                  "median_step_s": round(wall, 3),
                                  "samples_per_s": round(sps, 1),
                                  "samples_per_hour": int(sps * 3600),
                                  "cpu_s_per_step": round(cpu, 3),
                                  "idle_estimate_samples_per_hour":
                                      int(args.batch / (cpu / args.threads) * 3600),
                                  "load_avg_1m": os.getloadavg()[0]}))
                return
            continue
        if state["step"] % args.log_every == 0:
            now = time.time()
            sps = window_n * args.batch / (now - window_t)
            log(f"step {state['step']}/{args.steps} loss {loss.item():.4f} lr {lr:.2e} "
                f"scale {model.logit_scale.exp().item():.1f} {sps:.1f} samples/s "
                f"(epoch {state['step'] * args.batch / N:.2f})")
            window_t, window_n = now, 0
        now = time.time()
        if now - last_export >= args.export_minutes * 60 or stop.pop("export", False):
            do_export(full=False)
            last_export = now = time.time()
        if now - last_ckpt >= args.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = time.time()
        if args.max_minutes is not None and now - t_start >= args.max_minutes * 60:
            log(f"--max-minutes {args.max_minutes} reached")
            break
    save_ckpt()
    do_export(full=state["step"] >= args.steps)
    save_ckpt()  # with the evaluation in its history
    if state["step"] >= args.steps:
        log(f"done: {state['step']} steps in {state['train_seconds'] / 3600:.2f} h")


if __name__ == "__main__":
    main()
