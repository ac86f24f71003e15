#!/usr/bin/env python3
"""Parity fixtures for the Rust CLIP (src/embed/clip/, tests/clip*.rs): small random-weight
transformers `CLIPModel`s of different shapes, run on fixed texts and images.

    python training/clip_fixtures.py [--out tests/fixtures/clip]

Pinned in training/requirements-fixtures.txt (transformers 5.24.0, torch 2.15.0, tokenizers).
Deterministic: a fixed seed per model, synthetic images drawn from a seeded generator, so running
it twice writes the same files. Each model gets tests/fixtures/clip/<name>/ holding

- the model folder as `save_pretrained` writes it (config.json, model.safetensors), so the Rust
  loader reads exactly what transformers writes;
- tokenizer.json: a byte-level BPE learnt here on a few sentences, laid out like
  openai/clip-vit-base-patch32's (NFC + whitespace collapse + lower-case, CLIP's split regex,
  `</w>` word suffix, <|startoftext|> … <|endoftext|> around every text, the two special tokens
  last so the end-of-text id is the largest, as in OpenAI's vocabulary);
- preprocessor_config.json written by `CLIPImageProcessorPil` (the PIL backend: PIL's bicubic);
- inputs.json: the texts, the image file names, the token ids and attention masks (truncated to
  max_position_embeddings, padded with <|endoftext|> to the longest text);
- images/*.png: the input images (odd sizes, portrait and landscape);
- expected.safetensors (f32): `pixel_values` [N,3,H,W] (what the processor gave),
  `text_embeds` / `image_embeds` (projected, L2-normalised), `text_last_hidden_state`
  [T,L,D] (after the final layer norm: the generator's text condition), `text_pooled`,
  `image_pooled` (before the projections).

The three models cover: quick_gelu vs gelu, eos_token_id = 2 (transformers' legacy argmax
pooling) vs the real end-of-text id (first occurrence), different widths, head counts, layer
counts, patch and image sizes, layer-norm eps, and texts longer than the context (truncation).
"""
import argparse
import json
import os
import pathlib

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MERGES = 60
# The split regex of openai/clip-vit-base-patch32's tokenizer.json.
CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

CORPUS = [
    "a photo of a cat sitting on a red sofa",
    "a photo of a dog running on the beach at sunset",
    "an oil painting of a lighthouse in a storm",
    "two people riding bicycles through a city street",
    "a bowl of fruit: apples, oranges and bananas!",
    "the mountain is covered with snow; the sky is blue",
    "A close-up photo of a Golden Retriever's face",
    "sketch of an old castle, black and white",
]

TEXTS = [
    "a photo of a cat",
    "A Dog running on the BEACH at sunset, with waves and seagulls and a lighthouse far away",
    "an oil painting of apples; unknown words: zyx qwv 42!",
    "",
]

MODELS = {
    # OpenAI's original configs: quick_gelu, eos_token_id = 2 (argmax pooling).
    "quickgelu-argmax": dict(
        seed=1,
        text=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=24, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  eos_token_id=2),
        vision=dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=24,
        processor=dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ),
    # gelu (erf), the real end-of-text id, a context shorter than the long text.
    "gelu-eos": dict(
        seed=2,
        text=dict(hidden_size=30, intermediate_size=48, num_hidden_layers=2, num_attention_heads=5,
                  max_position_embeddings=12, hidden_act="gelu", layer_norm_eps=1e-6,
                  eos_token_id="EOS"),
        vision=dict(hidden_size=36, intermediate_size=40, num_hidden_layers=1, num_attention_heads=3,
                    image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=16,
        processor=dict(size={"shortest_edge": 34}, crop_size={"height": 30, "width": 30}),
    ),
    # Odd sizes: 7-pixel patches, one head in the vision tower, a processor that crops a rectangle.
    "odd-sizes": dict(
        seed=3,
        text=dict(hidden_size=16, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=20, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                  eos_token_id="EOS"),
        vision=dict(hidden_size=20, intermediate_size=44, num_hidden_layers=3, num_attention_heads=1,
                    image_size=28, patch_size=7, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=20,
        processor=dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
    ),
}


def learn_bpe(words: list[str], merges: int) -> tuple[dict, list]:
    """A plain BPE learner, CLIP-style (`</w>` marks a word's last symbol), with ties broken by
    the pair's text: `tokenizers`' trainer breaks them by hash order, which changes between runs."""
    base = pre_tokenizers.ByteLevel.alphabet()
    vocab = sorted(base) + sorted(c + "</w>" for c in base)
    counts = {}
    for w in words:
        symbols = tuple(w[:-1]) + (w[-1] + "</w>",)
        counts[symbols] = counts.get(symbols, 0) + 1
    learned = []
    for _ in range(merges):
        pairs = {}
        for symbols, n in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        learned.append(best)
        vocab.append(best[0] + best[1])
        merged = {}
        for symbols, n in counts.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        counts = merged
    return {t: i for i, t in enumerate(vocab)}, learned


def build_tokenizer() -> Tokenizer:
    normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    words = [w for text in CORPUS
             for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    vocab, merges = learn_bpe(words, MERGES)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    # Added last, so they get the two largest ids, as in OpenAI's vocabulary.
    tok.add_special_tokens([BOS, EOS])
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.RobertaProcessing((EOS, eos), (BOS, bos),
                                                      trim_offsets=False, add_prefix_space=False)
    return tok


def tokenize(tok: Tokenizer, max_len: int):
    """Truncate to the context (the end-of-text token kept last), pad with <|endoftext|> to the
    longest text: what CLIPTokenizer(padding=True, truncation=True) does."""
    eos = tok.token_to_id(EOS)
    tok_trunc = Tokenizer.from_str(tok.to_str())
    tok_trunc.enable_truncation(max_length=max_len)
    tok_trunc.enable_padding(pad_id=eos, pad_token=EOS)
    batch = tok_trunc.encode_batch(TEXTS)
    return [e.ids for e in batch], [e.attention_mask for e in batch]


def make_images(rng: np.random.Generator):
    """Smooth gradients plus noise (so the bicubic resize has edges to ring on), odd sizes."""
    images = []
    for (w, h) in [(45, 37), (40, 61), (32, 32)]:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        base = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 3 + y / 5)], axis=-1)
        noise = rng.normal(0, 30, size=(h, w, 3))
        images.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def build(name: str, spec: dict, tok: Tokenizer, out: pathlib.Path):
    torch.manual_seed(spec["seed"])
    eos = tok.token_to_id(EOS)
    text = dict(spec["text"])
    if text["eos_token_id"] == "EOS":
        text["eos_token_id"] = eos
    text.update(vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(BOS), pad_token_id=eos)
    config = CLIPConfig(text_config=text, vision_config=spec["vision"],
                        projection_dim=spec["projection_dim"])
    model = CLIPModel(config).eval()
    # Random init leaves the layer norms at (1, 0) and the biases at 0; perturb every parameter
    # so a loader that skipped or swapped any tensor would fail the parity test.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)

    folder = out / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    processor = CLIPImageProcessorPil(**spec["processor"])
    processor.save_pretrained(folder)

    rng = np.random.default_rng(spec["seed"])
    images = make_images(rng)
    image_names = []
    for i, img in enumerate(images):
        image_names.append(f"images/{i}.png")
        img.save(folder / image_names[-1])
    # Re-read what was written, as the Rust side does.
    images = [Image.open(folder / n).convert("RGB") for n in image_names]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]

    ids, mask = tokenize(tok, config.text_config.max_position_embeddings)
    input_ids = torch.tensor(ids)
    attention_mask = torch.tensor(mask)
    with torch.no_grad():
        text_out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        vision_out = model.vision_model(pixel_values=pixels)
        text_embeds = model.text_projection(text_out.pooler_output)
        image_embeds = model.visual_projection(vision_out.pooler_output)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        # The same numbers through the public entry points.
        full = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels)
        assert torch.allclose(full.text_embeds, text_embeds, atol=1e-6)
        assert torch.allclose(full.image_embeds, image_embeds, atol=1e-6)

    save_file({
        "pixel_values": pixels.contiguous().float(),
        "text_embeds": text_embeds.contiguous(),
        "image_embeds": image_embeds.contiguous(),
        "text_last_hidden_state": text_out.last_hidden_state.contiguous(),
        "text_pooled": text_out.pooler_output.contiguous(),
        "image_pooled": vision_out.pooler_output.contiguous(),
    }, str(folder / "expected.safetensors"))
    with open(folder / "inputs.json", "w") as f:
        # One row per line: readable, and small.
        rows = lambda m: "[\n  " + ",\n  ".join(json.dumps(r) for r in m) + "\n ]"
        f.write("{\n \"texts\": " + json.dumps(TEXTS) + ",\n \"images\": " + json.dumps(image_names)
                + ",\n \"input_ids\": " + rows(ids) + ",\n \"attention_mask\": " + rows(mask) + "\n}\n")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, {size / 1024:.0f} KiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "clip"))
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    tok = build_tokenizer()
    for name, spec in MODELS.items():
        build(name, spec, tok, out)


if __name__ == "__main__":
    main()
