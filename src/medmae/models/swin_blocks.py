"""Swin Transformer building blocks (2D): (shifted) window attention with a relative position bias, Swin blocks,
patch merging and patch expanding; assembled into encoders and decoders by :mod:`medmae.models.swin`.

Feature maps are channels-last ``(B, H, W, C)`` (the Swin convention). Attention runs through
``F.scaled_dot_product_attention`` with the relative position bias (and, for shifted windows, the region mask)
as an additive ``attn_mask``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.vit import DropPath, Mlp, qkv_projection

MASKED = -1e4  # additive mask value: exp underflows to exactly 0 (fp32, bf16) even next to large logits, and a
# row with every key masked (possible only for padding queries) stays finite, unlike -inf


# ------------------------------------------------------------------------------------------ windows


def window_partition(x_bhwc: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in raster order per image."""
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows_bnc: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows_bnc.shape[-1]
    x = windows_bnc.reshape(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into the ((2w-1)**2, heads) bias table for every (query, key) pair of a window, N = w * w."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.lru_cache(maxsize=64)
def _window_mask(hp: int, wp: int, h: int, w: int, window: int, shift: int, device: str) -> torch.Tensor | None:
    regions = torch.zeros(hp, wp)  # in the rolled frame: the roll wraps between index -shift - 1 and -shift
    if shift:
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for n, (ys, xs) in enumerate((a, b) for a in cuts for b in cuts):
            regions[ys, xs] = n
    pad = torch.zeros(hp, wp, dtype=torch.bool)  # padding sits at the end of the unrolled map
    pad[h:, :] = True
    pad[:, w:] = True
    if shift:
        pad = torch.roll(pad, (-shift, -shift), (0, 1))
    if not shift and not pad.any():
        return None
    reg_w = window_partition(regions[None, :, :, None], window)[..., 0]  # (nW, N)
    pad_w = window_partition(pad[None, :, :, None].float(), window)[..., 0].bool()
    different = reg_w[:, :, None] != reg_w[:, None, :]
    blocked = different | pad_w[:, None, :]
    return torch.zeros(blocked.shape).masked_fill(blocked, MASKED).to(device)


def window_attention_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor | None:
    """Additive attention mask (nW, N, N) for the windows of an (h, w) map padded to multiples of ``window``.

    With a cyclic ``shift``, tokens that were not neighbours before the roll (different regions of a shifted
    window) must not attend to each other; padding keys are masked too. Entries are 0 or :data:`MASKED`.
    None when nothing needs masking (no shift, no padding).
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    return _window_mask(hp, wp, h, w, window, shift, str(device))  # cached per device: no copy per block and step


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin stage width {dim} is not divisible by its {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def bias(self) -> torch.Tensor:
        """(heads, N, N) relative position bias."""
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return table.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x_wnc: torch.Tensor, mask_wnn: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C) windows; mask: (nW, N, N) additive or None. Returns (B * nW, N, C)."""
        bw, n, c = x_wnc.shape
        qkv = qkv_projection(self.qkv, x_wnc).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B * nW, heads, N, d)
        bias = self.bias().to(q.dtype)
        if mask_wnn is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            nw = mask_wnn.shape[0]
            shape = (bw // nw, nw, self.num_heads, n, -1)
            attn_mask = bias[None] + mask_wnn.to(q.dtype)[:, None]  # (nW, heads, N, N), broadcast over B
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                                 attn_mask=attn_mask).reshape(bw, self.num_heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention + MLP on a (B, H, W, C) map.

    The window shrinks to the map when the map is smaller (and the shift is dropped), as in Swin; maps that
    do not divide into windows are padded and the padding is masked out of the attention.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x_bhwc: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x_bhwc.shape
        win, shift = self.window, self.shift
        if min(h, w) <= win:  # one window covers the map: shifting would only mix the same tokens
            shift = 0
        y = self.norm1(x_bhwc)
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        if (hp, wp) != (h, w):
            y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
        if shift:
            y = torch.roll(y, (-shift, -shift), (1, 2))
        mask = window_attention_mask(h, w, win, shift, y.device)
        y = window_reverse(self.attn(window_partition(y, win), mask), win, hp, wp)
        if shift:
            y = torch.roll(y, (shift, shift), (1, 2))
        y = y[:, :h, :w]
        x = x_bhwc + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated (4C), normalised and projected to 2C: half the resolution."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=1e-6)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x_bhwc: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x_bhwc[:, 0::2, 0::2], x_bhwc[:, 1::2, 0::2], x_bhwc[:, 0::2, 1::2], x_bhwc[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Swin-UNet's patch expanding: a linear layer to ``scale**2 * out`` channels rearranged into a
    ``scale`` times larger map (B, H, W, C) -> (B, sH, sW, out), then LayerNorm."""

    def __init__(self, dim: int, out: int, scale: int = 2):
        super().__init__()
        self.scale, self.out = scale, out
        self.expand = nn.Linear(dim, scale * scale * out, bias=False)
        self.norm = nn.LayerNorm(out, eps=1e-6)

    def forward(self, x_bhwc: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x_bhwc.shape
        s = self.scale
        x = self.expand(x_bhwc).reshape(b, h, w, s, s, self.out).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, self.out))


def swin_stage(dim: int, depth: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool,
           rates: Sequence[float]) -> nn.ModuleList:
    """``depth`` Swin blocks, every second one with shifted windows."""
    return nn.ModuleList(SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias, rates[i])
                         for i in range(depth))
