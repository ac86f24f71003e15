"""Builds tests/fixtures/reimagen/: a tiny random-weight Re-Imagen cascade and the reference
numbers the Rust generator is checked against (docs/generator.md "Fixtures").

Run from the repository root:  python training/reimagen_fixtures.py
(pinned versions: training/requirements-train.txt). Deterministic: the same versions write the
same files.

Layout written:
  clip/            a tiny random CLIPModel (save_pretrained: config.json, model.safetensors) and
                   a small CLIP-style byte-level BPE tokenizer.json
  cascade.json     the stage list: base (8×8), sr (8 → 16)
  base/, sr/       config.json + f16 shards (a small shard limit, so the index is exercised)
  base-cases.safetensors, sr-cases.safetensors   f32 inputs and outputs (names below)
  base-cases.json, sr-cases.json                 what the tests need to know: shapes, timesteps,
                                                 captions, token ids, guidance, interleaved choices

Every output is computed from the weights as stored (f16 → f32), so a runtime that widens the
stored f16 weights to f32 should match within float rounding.

Not here: the model itself (training/reimagen/).
"""

from __future__ import annotations

import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reimagen.export import export_stage, load_stage, write_cascade  # noqa: E402
from reimagen.guidance import Condition, Guidance, branch_inputs, branches, sample  # noqa: E402
from reimagen.model import ReImagenUNet, UNetConfig  # noqa: E402
from reimagen.schedule import Schedule  # noqa: E402
from reimagen.text import TextEncoder  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reimagen"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
CORPUS = [
    "dog face, twemoji style", "dog face, openmoji style", "cat face, fluent flat style",
    "steaming bowl, noto style", "tokyo tower, twemoji style", "flag: bhutan, openmoji style",
    "red apple, fluent modern style", "a dog face in the high contrast style",
]
PROMPT = "dog face in fluent flat style"
NEGATIVE = "blurry"
NEIGHBOUR_CAPTIONS = ["dog face, twemoji style", "dog face, openmoji black style with outlines"]
TEXT_MAX_LENGTH = 12

BASE = UNetConfig(
    sample_size=8, block_channels=[8, 16], layers_per_block=1, attention_levels=[1],
    neighbour_levels=[0], attention_head_dim=8, ff_mult=2, norm_groups=4, time_embed_dim=32,
    text_encoder="../clip", text_dim=32, text_max_length=TEXT_MAX_LENGTH,
    prediction_type="epsilon", beta_schedule="cosine", thresholding="dynamic",
    dynamic_threshold_ratio=0.9, sample_max_value=1.5,
)
SR = UNetConfig(
    sample_size=16, low_res_size=8, block_channels=[8, 16], layers_per_block=1,
    attention_levels=[1], neighbour_levels=[0], attention_head_dim=8, ff_mult=2, norm_groups=4,
    time_embed_dim=32, text_encoder="../clip", text_dim=32, text_max_length=TEXT_MAX_LENGTH,
    prediction_type="v_prediction", beta_schedule="linear", thresholding="clip",
    noise_aug_max=250, noise_aug_level=100, neighbour_positions=True,
)


def train_merges(corpus: list[str], n: int) -> list[tuple[str, str]]:
    """A plain BPE over the corpus' words with a deterministic tie-break (the `tokenizers`
    trainer breaks ties by hash order, which made the fixture change from run to run). The
    corpus is ASCII, which byte-level mapping leaves unchanged."""
    import re
    words: dict[tuple[str, ...], int] = {}
    for line in corpus:
        for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower()):
            sym = tuple(w[:-1]) + (w[-1] + "</w>",)
            words[sym] = words.get(sym, 0) + 1
    merges = []
    for _ in range(n):
        pairs: dict[tuple[str, str], int] = {}
        for sym, c in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for sym, c in words.items():
            out, k = [], 0
            while k < len(sym):
                if k + 1 < len(sym) and (sym[k], sym[k + 1]) == best:
                    out.append(sym[k] + sym[k + 1])
                    k += 2
                else:
                    out.append(sym[k])
                    k += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def build_tokenizer() -> Tokenizer:
    """CLIP-style: NFC, whitespace folding, lower case, CLIP's split regex, byte-level symbols,
    BPE with the `</w>` end-of-word suffix, <|startoftext|>/<|endoftext|> last in the vocabulary
    and added by the post-processor."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = train_merges(CORPUS, 40)
    vocab: dict[str, int] = {}
    for tok in alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(tok, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS])
    tok.post_processor = processors.RobertaProcessing(
        (EOS, vocab[EOS]), (BOS, vocab[BOS]), trim_offsets=False, add_prefix_space=False)
    return tok


def build_clip(folder: pathlib.Path) -> None:
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                         hidden_act="quick_gelu", bos_token_id=tok.token_to_id(BOS),
                         eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(EOS)),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8,
                           hidden_act="quick_gelu"),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(folder))
    tok.save(str(folder / "tokenizer.json"))


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norm scales near 1, biases and null embeddings non-zero), so
    every tensor of the spec moves the outputs."""
    g = torch.Generator().manual_seed(seed)
    norms = {f"{m}.weight" for m, mod in model.named_modules()
             if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in norms:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("null") or name == "null_text":
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.3 / fan_in ** 0.5))


def pack(d: dict) -> dict:
    return {k: v.detach().float().contiguous() for k, v in d.items()}


def stage_cases(name: str, cfg: UNetConfig, seed: int, enc: TextEncoder) -> None:
    model = ReImagenUNet(cfg)
    randomize(model, seed)
    export_stage(model, OUT / name, max_shard_bytes=40_000)
    model = load_stage(OUT / name)  # compute from the stored (f16-rounded) weights
    sched = Schedule(cfg)
    g = torch.Generator().manual_seed(seed + 100)
    s = cfg.sample_size
    k = len(NEIGHBOUR_CAPTIONS)
    tensors: dict = {}
    meta: dict = {"stage": name, "sample_size": s, "config": cfg.to_dict()}

    prompt, prompt_valid = enc.encode([PROMPT])
    negative, negative_valid = enc.encode([NEGATIVE])
    nbr_text, nbr_valid = enc.encode(NEIGHBOUR_CAPTIONS)
    ids, _ = enc.tokenize([PROMPT, NEGATIVE] + NEIGHBOUR_CAPTIONS)
    meta["captions"] = {"prompt": PROMPT, "negative": NEGATIVE, "neighbours": NEIGHBOUR_CAPTIONS}
    meta["token_ids"] = {"prompt": ids[0].tolist(), "negative": ids[1].tolist(),
                         "neighbours": ids[2:].tolist()}
    nbr_images = torch.rand(k, 3, s, s, generator=g) * 2 - 1
    with torch.no_grad():
        feats = model.encode_neighbours(nbr_images, nbr_text, nbr_valid)
    tensors.update(prompt_states=prompt, prompt_valid=prompt_valid, negative_states=negative,
                   negative_valid=negative_valid, neighbour_text_states=nbr_text,
                   neighbour_text_valid=nbr_valid, neighbour_images=nbr_images)
    tensors.update({f"neighbour_features.{key}": f for key, f in feats.items()})
    meta["neighbour_feature_keys"] = list(feats)

    # One UNet call, B = 2 rows at different timesteps, under each condition.
    b = 2
    x_t = torch.randn(b, 3, s, s, generator=g)
    t = [37, 811]
    weights = torch.tensor([1.0, 0.5])
    low_res = aug = None
    if cfg.is_super_resolution:
        r = cfg.low_res_size
        low_res = torch.rand(b, 3, r, r, generator=g) * 2 - 1
        aug = cfg.noise_aug_level
        tensors["call.low_res"] = low_res
    cond = Condition(prompt, prompt_valid, feats, weights, low_res=low_res, aug=aug or 0)
    tensors.update({"call.x_t": x_t, "call.t": torch.tensor(t, dtype=torch.float32),
                    "call.neighbour_weights": weights})
    with torch.no_grad():
        for branch in ("pn", "p", "n", "0"):
            text, valid, f, w = _one_branch(cond, branch, b)
            out = model(x_t, torch.tensor(t, dtype=torch.float32), text, valid, f, w,
                        low_res=low_res,
                        aug=torch.full((b,), float(aug)) if low_res is not None else None)
            tensors[f"call.out.{branch}"] = out
        # A zero weight masks that neighbour: equal to calling with the first neighbour alone.
        w0 = torch.tensor([1.0, 0.0])
        cond0 = Condition(prompt, prompt_valid, feats, w0, low_res=low_res, aug=aug or 0)
        text, valid, f, w = _one_branch(cond0, "pn", b)
        tensors["call.out.pn_second_masked"] = model(
            x_t, torch.tensor(t, dtype=torch.float32), text, valid, f, w, low_res=low_res,
            aug=torch.full((b,), float(aug)) if low_res is not None else None)
        tensors["call.neighbour_weights_second_masked"] = w0
    meta["call"] = {"batch": b, "t": t, "neighbour_weights": weights.tolist(),
                    "low_res_aug": aug, "branches": {
                        "pn": "text and neighbours", "p": "neighbours dropped (weights 0)",
                        "n": "text dropped (text_valid 0)", "0": "both dropped"}}

    # Short trajectories from a stored x_T (no RNG needs to match: the interleaved draws are
    # stored as choices).
    meta["trajectories"] = {}
    runs = [
        ("ddim_interleaved", "ddim", Guidance("interleaved", w_p=2.0, w_n=3.0, eta=0.5), False),
        ("ddim_standard_negative", "ddim", Guidance("standard", w=2.5), True),
        ("dpmpp_weighted", "dpmpp", Guidance("weighted", w_p=2.0, w_n=1.5, eta=0.3), False),
        ("ddpm_joint", "ddpm", Guidance("joint"), False),
    ]
    for run, sampler, gd, use_negative in runs:
        x_T = torch.randn(1, 3, s, s, generator=g)
        low = low_res[:1] if low_res is not None else None
        c = Condition(prompt, prompt_valid, feats, weights,
                      negative=negative if use_negative else None,
                      negative_valid=negative_valid if use_negative else None,
                      low_res=low, aug=aug or 0)
        recorder = _Recorder(model)
        x0, trace = sample(recorder, sched, x_T, c, gd, sampler=sampler, steps=4, seed=seed,
                           record=True)
        tensors[f"{run}.x_T"] = x_T
        for i, step in enumerate(trace):
            tensors[f"{run}.x.{i}"] = step["x"]
            # The raw model output of each branch this step ran (before guidance), so a sampler
            # can be checked step by step without a UNet.
            for branch, out in zip(branches(gd, step["choice"]), recorder.calls[i].chunk(
                    len(branches(gd, step["choice"])))):
                tensors[f"{run}.out.{i}.{branch}"] = out
            if step["noise"] is not None and step["t_prev"] >= 0:  # DDPM: the z each step added
                tensors[f"{run}.z.{i}"] = step["noise"]
        meta["trajectories"][run] = {
            "sampler": sampler, "steps": 4, "timesteps": [st["t"] for st in trace],
            "guidance": vars(gd), "negative_prompt": use_negative,
            "choices": [st["choice"] for st in trace],
            "branches_per_step": [branches(gd, st["choice"]) for st in trace],
            "x_names": [f"{run}.x.{i}" for i in range(len(trace))],
            "out_names": [[f"{run}.out.{i}.{br}" for br in branches(gd, st["choice"])]
                          for i, st in enumerate(trace)],
            "low_res": "call.low_res[0:1]" if low is not None else None,
        }
    save_file(pack(tensors), str(OUT / f"{name}-cases.safetensors"))
    meta["tensors"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
    meta["schedule"] = {"alphas_cumprod_at": {str(tt): sched.abar(tt) for tt in
                                              sorted({*t, *sched.timesteps(4)})}}
    (OUT / f"{name}-cases.json").write_text(json.dumps(meta, indent=2) + "\n")


class _Recorder:
    """Calls the model and keeps each call's output ([branches × B, …], branch-major)."""

    def __init__(self, model):
        self.model = model
        self.calls: list[torch.Tensor] = []

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.calls.append(out.detach().clone())
        return out


def _one_branch(cond: Condition, branch: str, b: int):
    return branch_inputs(cond, [branch], b)


def main() -> None:
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    build_clip(OUT / "clip")
    write_cascade(OUT, [{"name": "base", "path": "base", "resolution": 8},
                        {"name": "sr", "path": "sr", "resolution": 16}])
    enc = TextEncoder(OUT / "clip", TEXT_MAX_LENGTH)
    stage_cases("base", BASE, 1, enc)
    stage_cases("sr", SR, 2, enc)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
