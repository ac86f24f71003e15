"""The Re-Imagen UNet, exactly as docs/generator.md specifies it (tensor names, order of ops).

The model is split the paper's way: `dstack` (conv_in, the down levels, the bottleneck) and
`ustack` (the up levels with skips, the output head). Neighbours go through the same DStack with
t = 0 (`encode_neighbours`); their feature maps do not depend on t or x_t, so a sampler computes
them once per generation. The noisy image's features cross-attend to the neighbours' maps at the
levels the config names and at the bottleneck.

Every op used maps onto one op of the Rust tensor runtime (conv2d, group norm (+SiLU), linear,
layer norm, GELU/SiLU, attention with an additive mask, nearest/bilinear resize, concat,
add/mul, sinusoidal timestep embedding), so the spec can be implemented twice.

Not here: noise schedules and samplers (schedule.py), guidance (guidance.py), file formats
(export.py), the text encoder (text.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 1
MODEL_TYPE = "reimagen_unet"


@dataclass
class UNetConfig:
    """A stage's config.json. See docs/generator.md "config.json" for every key."""

    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    low_res_size: int | None = None
    block_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])
    neighbour_levels: list[int] = field(default_factory=lambda: [1])
    # Add a fixed 2-D sine-cosine position code to the neighbour attention's queries and keys
    # (not its values), so a pixel can find "the same place" in a neighbour (docs/generator.md).
    neighbour_positions: bool = False
    attention_head_dim: int = 32
    ff_mult: int = 2
    norm_groups: int = 8
    norm_eps: float = 1e-5
    layer_norm_eps: float = 1e-5
    time_embed_dim: int = 128
    time_flip_sin_to_cos: bool = True
    time_freq_shift: float = 0.0
    time_max_period: float = 10000.0
    text_encoder: str = "../clip"
    text_dim: int = 64
    text_max_length: int = 32
    prediction_type: str = "epsilon"
    beta_schedule: str = "cosine"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    thresholding: str = "dynamic"
    dynamic_threshold_ratio: float = 0.995
    sample_max_value: float = 1.5
    noise_aug_max: int = 0
    noise_aug_level: int = 0
    model_type: str = MODEL_TYPE
    format_version: int = FORMAT_VERSION
    dtype: str = "float16"

    @property
    def is_super_resolution(self) -> bool:
        return self.low_res_size is not None

    @property
    def levels(self) -> int:
        return len(self.block_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.json: unknown keys {unknown}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(key, why):
            raise ValueError(f"config.json: `{key}` {why}")

        if self.model_type != MODEL_TYPE:
            bad("model_type", f"must be {MODEL_TYPE!r}")
        if self.format_version != FORMAT_VERSION:
            bad("format_version", f"must be {FORMAT_VERSION}")
        if not self.block_channels:
            bad("block_channels", "is empty")
        if self.sample_size % (2 ** (self.levels - 1)) != 0:
            bad("sample_size", f"must be divisible by 2^(levels-1) = {2 ** (self.levels - 1)}")
        for key in ("attention_levels", "neighbour_levels"):
            for lv in getattr(self, key):
                if not 0 <= lv < self.levels:
                    bad(key, f"names level {lv}, the model has {self.levels}")
        attended = {*self.attention_levels, *self.neighbour_levels, self.levels - 1}
        for i, ch in enumerate(self.block_channels):
            if i in attended and ch % self.attention_head_dim:
                bad("block_channels", f"{ch} (level {i}, with attention) is not a multiple of "
                    "attention_head_dim")
            if ch % self.norm_groups:
                bad("block_channels", f"{ch} is not a multiple of norm_groups")
        if self.neighbour_positions:
            for lv in {*self.neighbour_levels, self.levels - 1}:
                if self.block_channels[lv] % 4:
                    bad("block_channels", f"{self.block_channels[lv]} (level {lv}, neighbour "
                        "positions) is not a multiple of 4")
        if self.layers_per_block < 1:
            bad("layers_per_block", "must be ≥ 1")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            bad("prediction_type", "must be epsilon or v_prediction")
        if self.beta_schedule not in ("linear", "cosine"):
            bad("beta_schedule", "must be linear or cosine")
        if self.thresholding not in ("none", "clip", "dynamic"):
            bad("thresholding", "must be none, clip or dynamic")
        if self.low_res_size is not None and (
            self.low_res_size <= 0 or self.low_res_size > self.sample_size
        ):
            bad("low_res_size", "must be in 1..=sample_size")
        if self.dtype not in ("float16", "float32"):
            bad("dtype", "must be float16 or float32")


def timestep_embedding(t: torch.Tensor, dim: int, cfg: UNetConfig) -> torch.Tensor:
    """diffusers' get_timestep_embedding: f_i = max_period^(−i/(half − freq_shift)), i < dim/2;
    [sin | cos] or, with flip_sin_to_cos, [cos | sin]; a zero column when dim is odd."""
    half = dim // 2
    exponent = -math.log(cfg.time_max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - cfg.time_freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if cfg.time_flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """linear_1 → SiLU → linear_2."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResBlock(nn.Module):
    """GN+SiLU → conv1 → + time_proj(SiLU(temb)) → GN+SiLU → conv2, plus a 1×1 `skip` conv when
    the channel count changes."""

    def __init__(self, cin: int, cout: int, temb: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb_silu):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(emb_silu)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    """Multi-head attention: softmax(q·kᵀ/√d + bias)·v over heads of `head_dim`; q, k, v without
    bias, `to_out` with bias. `bias` is additive, [B, Lk] (one value per key, broadcast over
    queries and heads)."""

    def __init__(self, dim: int, kv_dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, ctx, bias=None, ctx_v=None):
        """`ctx_v`: the values' input when it differs from the keys' (`ctx`)."""
        b, lq, _ = x.shape
        lk = ctx.shape[1]

        def split(t, length):
            return t.view(b, length, self.heads, self.head_dim).transpose(1, 2)

        q = split(self.to_q(x), lq)
        k = split(self.to_k(ctx), lk)
        v = split(self.to_v(ctx if ctx_v is None else ctx_v), lk)
        mask = None if bias is None else bias[:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, lq, self.heads * self.head_dim))


def to_tokens(h):
    """[B, C, H, W] → [B, H·W, C] (pixels row-major)."""
    return h.flatten(2).transpose(1, 2)


def from_tokens(t, hw):
    b, _, c = t.shape
    return t.transpose(1, 2).reshape(b, c, hw[0], hw[1])


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text token states, feed-forward; each pre-norm
    (layer norm) and residual, on the feature map's pixels as tokens."""

    def __init__(self, dim: int, cfg: UNetConfig):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn1 = Attention(dim, dim, cfg.attention_head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.attn2 = Attention(dim, cfg.text_dim, cfg.attention_head_dim)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ff_in = nn.Linear(dim, dim * cfg.ff_mult)
        self.ff_out = nn.Linear(dim * cfg.ff_mult, dim)

    def forward(self, h, text, text_bias):
        hw = h.shape[2:]
        x = to_tokens(h)
        n = self.norm1(x)
        x = x + self.attn1(n, n)
        x = x + self.attn2(self.norm2(x), text, text_bias)
        x = x + self.ff_out(F.gelu(self.ff_in(self.norm3(x))))
        return from_tokens(x, hw)


def position_code(h: int, w: int, dim: int) -> torch.Tensor:
    """[h·w, dim]: the fixed 2-D sine-cosine code of each pixel (row-major). The first dim/2
    channels code the row y, the rest the column x, each as [sin(p·ω_i) | cos(p·ω_i)] with
    ω_i = 100^(−i/(dim/4)), i = 0 … dim/4 − 1 (p in pixels of this level)."""
    quarter = dim // 4
    omega = 100.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    ys = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)

    def code(p):
        a = p[:, None] * omega[None, :]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([code(ys), code(xs)], dim=1).float()


class NeighbourAttention(nn.Module):
    """The noisy image's pixels attend to [null; the K neighbours' pixels at this level].

    The learned `null` key is always present, so dropped neighbours (all masked) give a learned
    "no neighbour" output and the softmax never sees an empty row."""

    def __init__(self, dim: int, cfg: UNetConfig):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.norm_kv = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.null = nn.Parameter(torch.zeros(1, dim))
        self.attn = Attention(dim, dim, cfg.attention_head_dim)
        self.positions = cfg.neighbour_positions

    def forward(self, h, nbr_tokens, nbr_bias):
        """h [B, C, H, W]; nbr_tokens [B, M, C] (M = K·h·w); nbr_bias [B, M] (ln w per token).
        With positions, each neighbour's map has the query map's size (h·w = H·W)."""
        hw = h.shape[2:]
        x = to_tokens(h)
        b, lq, c = x.shape
        kv = torch.cat([self.null[None].expand(b, -1, -1), nbr_tokens], dim=1)
        bias = torch.cat([torch.zeros(b, 1, dtype=nbr_bias.dtype, device=nbr_bias.device), nbr_bias], 1)
        q_in, kv_n = self.norm_q(x), self.norm_kv(kv)
        k_in = kv_n
        if self.positions:
            m = nbr_tokens.shape[1]
            if m % lq:
                raise ValueError(f"neighbour maps of {m} tokens do not tile the {lq}-pixel map")
            code = position_code(hw[0], hw[1], c).to(x.device, x.dtype)
            q_in = q_in + code
            k_in = kv_n + torch.cat([torch.zeros(1, c, device=x.device, dtype=x.dtype),
                                     code.repeat(m // lq, 1)])
        x = x + self.attn(q_in, k_in, bias, ctx_v=kv_n)
        return from_tokens(x, hw)


class Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


MID = "mid"


def neighbour_keys(cfg: UNetConfig) -> list[str]:
    """The neighbour feature maps a model uses, in order: "level{i}" for each neighbour level,
    then "mid" (the bottleneck)."""
    return [f"level{i}" for i in sorted(cfg.neighbour_levels)] + [MID]


class ReImagenUNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch = cfg.block_channels
        c0 = ch[0]
        temb = cfg.time_embed_dim
        cin = cfg.in_channels * (2 if cfg.is_super_resolution else 1)
        self.conv_in = nn.Conv2d(cin, c0, 3, padding=1)
        self.time_embed = TimestepMLP(c0, temb)
        self.aug_embed = TimestepMLP(c0, temb) if cfg.is_super_resolution else None
        self.null_text = nn.Parameter(torch.zeros(1, cfg.text_dim))

        skips = [c0]
        cur = c0
        self.down = nn.ModuleList()
        for i, c in enumerate(ch):
            lv = Level()
            for _ in range(cfg.layers_per_block):
                lv.res.append(ResBlock(cur, c, temb, cfg))
                cur = c
                if i in cfg.attention_levels:
                    lv.attn.append(TransformerBlock(c, cfg))
                skips.append(c)
            if i in cfg.neighbour_levels:
                lv.neighbour_attn = NeighbourAttention(c, cfg)
            if i < len(ch) - 1:
                lv.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
                skips.append(c)
            self.down.append(lv)

        self.mid = Level()
        self.mid.res.append(ResBlock(cur, cur, temb, cfg))
        self.mid.attn.append(TransformerBlock(cur, cfg))
        self.mid.res.append(ResBlock(cur, cur, temb, cfg))
        self.mid.neighbour_attn = NeighbourAttention(cur, cfg)

        ups = [None] * len(ch)
        for i in reversed(range(len(ch))):
            c = ch[i]
            lv = Level()
            for _ in range(cfg.layers_per_block + 1):
                lv.res.append(ResBlock(cur + skips.pop(), c, temb, cfg))
                cur = c
                if i in cfg.attention_levels:
                    lv.attn.append(TransformerBlock(c, cfg))
            if i > 0:
                lv.upsample = nn.Conv2d(c, c, 3, padding=1)
            ups[i] = lv
        assert not skips
        self.up = nn.ModuleList(ups)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, cur, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(cur, cfg.out_channels, 3, padding=1)

    # -- conditioning helpers -------------------------------------------------------------

    def embed_time(self, t, aug=None):
        """SiLU(time_embed(sin(t)) [+ aug_embed(sin(aug))]): what every ResBlock's time_proj
        reads."""
        c0 = self.cfg.block_channels[0]
        emb = self.time_embed(timestep_embedding(t, c0, self.cfg))
        if self.aug_embed is not None:
            if aug is None:
                aug = torch.zeros_like(t)
            emb = emb + self.aug_embed(timestep_embedding(aug, c0, self.cfg))
        return F.silu(emb)

    def text_context(self, text, text_valid):
        """[null_text; text] with bias 0 for the null token and for valid tokens, −inf for padding
        and for the tokens of a dropped text (text_valid all 0)."""
        b = text.shape[0]
        ctx = torch.cat([self.null_text[None].expand(b, -1, -1).to(text.dtype), text], dim=1)
        bias = torch.zeros(b, ctx.shape[1], device=text.device, dtype=torch.float32)
        bias[:, 1:] = torch.where(text_valid > 0, 0.0, float("-inf"))
        return ctx, bias

    def input_image(self, x, low_res, low_res_upsampled=False):
        if not self.cfg.is_super_resolution:
            return x
        if low_res_upsampled:  # a crop of the upsampled low-res image (crop training)
            return torch.cat([x, low_res], dim=1)
        s = self.cfg.sample_size
        up = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
        return torch.cat([x, up], dim=1)

    # -- the two stacks --------------------------------------------------------------------

    def dstack(self, h, emb, ctx, text_bias, nbr=None):
        """conv_in output → down levels → bottleneck. With `nbr` (tokens, bias) the neighbour
        attention runs; without it (the neighbours' own pass) the features it would read are
        collected instead. Returns (h, skips, features)."""
        cfg = self.cfg
        feats = {}
        skips = [h]
        for i, lv in enumerate(self.down):
            for j in range(cfg.layers_per_block):
                h = lv.res[j](h, emb)
                if len(lv.attn):
                    h = lv.attn[j](h, ctx, text_bias)
                if j == cfg.layers_per_block - 1 and i in cfg.neighbour_levels:
                    key = f"level{i}"
                    if nbr is None:
                        feats[key] = h
                    else:
                        h = lv.neighbour_attn(h, nbr[key][0], nbr[key][1])
                skips.append(h)
            if i < cfg.levels - 1:
                h = lv.downsample(h)
                skips.append(h)
        h = self.mid.res[0](h, emb)
        h = self.mid.attn[0](h, ctx, text_bias)
        h = self.mid.res[1](h, emb)
        if nbr is None:
            feats[MID] = h
        else:
            h = self.mid.neighbour_attn(h, nbr[MID][0], nbr[MID][1])
        return h, skips, feats

    def ustack(self, h, skips, emb, ctx, text_bias):
        cfg = self.cfg
        for i in reversed(range(cfg.levels)):
            lv = self.up[i]
            for j in range(cfg.layers_per_block + 1):
                h = torch.cat([h, skips.pop()], dim=1)
                h = lv.res[j](h, emb)
                if len(lv.attn):
                    h = lv.attn[j](h, ctx, text_bias)
            if i > 0:
                h = lv.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))

    # -- public entry points ---------------------------------------------------------------

    def encode_neighbours(self, images, text, text_valid):
        """The neighbours' feature maps: images [N, 3, S, S] in [−1, 1] at the stage's
        resolution, their captions' token states [N, L, text_dim] + validity [N, L]. Each goes
        through the DStack with t = 0 (and, in a super-resolution stage, itself as the low-res
        condition with augmentation level 0). Returns {key: [N, C, h, w]} (see neighbour_keys)."""
        n = images.shape[0]
        t = torch.zeros(n, device=images.device)
        emb = self.embed_time(t, torch.zeros_like(t) if self.cfg.is_super_resolution else None)
        ctx, bias = self.text_context(text, text_valid)
        x = torch.cat([images, images], dim=1) if self.cfg.is_super_resolution else images
        _, _, feats = self.dstack(self.conv_in(x), emb, ctx, bias, nbr=None)
        return feats

    def neighbour_tokens(self, feats, weights):
        """Per-row neighbour keys for the UNet call. feats: {key: [B, K, C, h, w]} (the maps of
        each row's K neighbours); weights [B, K] ≥ 0 (0 = masked / dropped). Returns
        {key: (tokens [B, K·h·w, C], bias [B, K·h·w] = ln w repeated over each neighbour's
        pixels)}."""
        out = {}
        logw = torch.log(weights.float())  # ln 0 = −inf: that neighbour is masked
        for key, f in feats.items():
            b, k, c, hh, ww = f.shape
            tokens = f.permute(0, 1, 3, 4, 2).reshape(b, k * hh * ww, c)
            bias = logw.repeat_interleave(hh * ww, dim=1)
            out[key] = (tokens, bias)
        return out

    def forward(self, x_t, t, text, text_valid, nbr_feats, nbr_weights, low_res=None, aug=None,
                low_res_upsampled=False):
        """One UNet call. x_t [B, 3, S, S]; t [B] (float timesteps); text [B, L, text_dim],
        text_valid [B, L] (all 0 = text dropped); nbr_feats {key: [B, K, C, h, w]} from
        encode_neighbours; nbr_weights [B, K] (all 0 = neighbours dropped); for a
        super-resolution stage low_res [B, 3, r, r] (already noise-augmented) and aug [B] (its
        augmentation timestep); with low_res_upsampled, low_res is already upsampled to x_t's size
        (a crop of the upsampled image, for crop training). Returns ε or v [B, 3, S, S] per
        prediction_type."""
        emb = self.embed_time(t, aug)
        ctx, text_bias = self.text_context(text, text_valid)
        h = self.conv_in(self.input_image(x_t, low_res, low_res_upsampled))
        nbr = self.neighbour_tokens(nbr_feats, nbr_weights)
        h, skips, _ = self.dstack(h, emb, ctx, text_bias, nbr=nbr)
        return self.ustack(h, skips, emb, ctx, text_bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
