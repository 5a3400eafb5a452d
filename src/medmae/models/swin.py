"""Swin Transformer (2D) for VIS-MAE: encoder, window-masked MAE with a Swin up path, Swin-UNet segmenter.

Feature maps are channels-last ``(B, H, W, C)`` inside the network (the Swin convention); images are ``(B, C, H, W)``.
Attention runs through ``F.scaled_dot_product_attention`` with the relative position bias (and, for shifted
windows, the region mask) as an additive ``attn_mask``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.mae import masked_patch_loss, normalize_patches
from medmae.models.masking import patchify, token_mask_to_image, unpatchify, window_mask
from medmae.models.vit import DropPath, Mlp, init_transformer_weights, qkv_projection

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


def _stage(dim: int, depth: int, heads: int, window: int, mlp_ratio: float, qkv_bias: bool,
           rates: Sequence[float]) -> nn.ModuleList:
    """``depth`` Swin blocks, every second one with shifted windows."""
    return nn.ModuleList(SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, qkv_bias, rates[i])
                         for i in range(depth))


# ------------------------------------------------------------------------------------------ encoder


class SwinEncoder(nn.Module):
    """Swin Transformer encoder: 4x4 patch embedding (+ LayerNorm), stages of Swin blocks, patch merging
    between stages (width doubles, resolution halves). No absolute position embedding (Swin-T default).

    ``forward_stages(tokens)`` runs on an already embedded (and possibly mask-token filled) map; this is how the
    MAE feeds the full grid with masked positions replaced.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        img_size: Sequence[int] = (224, 224),
        patch_size: Sequence[int] = (4, 4),
        in_channels: int = 1,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"the Swin encoder is 2D only, got spatial_dims={spatial_dims}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need the same length")
        self.spatial_dims = 2
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        unit = [p * 2 ** (len(depths) - 1) for p in self.patch_size]
        if len(self.img_size) != 2 or any(s % u for s, u in zip(self.img_size, unit)):
            raise ValueError(f"Swin input {self.img_size} must be divisible by {unit} (patch x 2**(stages - 1))")
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.in_channels, self.window_size = in_channels, window_size
        self.depths, self.num_heads = tuple(depths), tuple(num_heads)
        self.stage_dims = tuple(embed_dim * 2**i for i in range(len(depths)))
        self.embed_dim = self.stage_dims[-1]  # width of the pooled features (what a classifier head sees)
        self.depth = sum(depths)
        self.cls_token = None
        self.num_prefix_tokens = 0

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.patch_embed.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        rates = torch.linspace(0, drop_path, self.depth).tolist()
        self.layers = nn.ModuleList()
        for i, (d, heads) in enumerate(zip(depths, num_heads)):
            stage = nn.Module()
            start = sum(depths[:i])
            stage.blocks = _stage(self.stage_dims[i], d, heads, window_size, mlp_ratio, qkv_bias, rates[start:start + d])
            stage.downsample = PatchMerging(self.stage_dims[i]) if i < len(depths) - 1 else None
            self.layers.append(stage)
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.apply(init_transformer_weights)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def embed(self, x_bchw: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, H/p, W/p, C) after the patch embedding and its LayerNorm."""
        if x_bchw.shape[1] != self.in_channels or x_bchw.dim() != 4:
            raise ValueError(f"Swin encoder built for (B, {self.in_channels}, H, W) input, got {tuple(x_bchw.shape)}")
        if any(s % p for s, p in zip(x_bchw.shape[2:], self.patch_size)):
            raise ValueError(f"input size {tuple(x_bchw.shape[2:])} is not divisible by the patch size {self.patch_size}")
        return self.patch_embed.norm(self.patch_embed.proj(x_bchw).permute(0, 2, 3, 1))

    def forward_stages(self, tokens_bhwc: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs before patch merging, (B, H_i, W_i, C_i) for i = 0..S-1; the last one is LayerNorm-ed."""
        if any(s % 2 ** (len(self.layers) - 1) for s in tokens_bhwc.shape[1:3]):
            raise ValueError(f"token map {tuple(tokens_bhwc.shape[1:3])} cannot be merged {len(self.layers) - 1} times")
        feats = []
        x = tokens_bhwc
        for stage in self.layers:
            for blk in stage.blocks:
                x = blk(x)
            feats.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        feats[-1] = self.norm(feats[-1])
        return feats

    def forward_features(self, x_bchw: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_stages(self.embed(x_bchw))

    def forward_tokens(self, x_bchw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final-stage tokens (B, L, C) (the :class:`~medmae.models.heads.Classifier` interface; no prefix tokens)."""
        last = self.forward_features(x_bchw)[-1]
        return last.flatten(1, 2), []

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x_bchw)[-1]


def swin_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer index for layer-wise lr decay: patch embedding 0, blocks 1..sum(depths) in order, a stage's patch
    merging with its last block, everything after (final norm, task heads) sum(depths) + 1."""
    total = sum(depths)
    if name.startswith("encoder."):
        parts = name.split(".")[1:]
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "layers":
            stage = int(parts[1])
            start = sum(depths[:stage])
            if parts[2] == "blocks":
                return start + int(parts[3]) + 1
            return start + depths[stage]
    return total + 1


# ------------------------------------------------------------------------------------------ decoders


def _decoder_depths(encoder: SwinEncoder, depths: Sequence[int] | None) -> list[int]:
    """Blocks per up-stage, deepest first; the default mirrors the encoder's stages 0..S-2."""
    if depths is None:
        return list(encoder.depths[:-1])[::-1]
    if len(depths) != len(encoder.depths) - 1:
        raise ValueError(f"decoder depths {tuple(depths)} need {len(encoder.depths) - 1} values (one per up-stage)")
    return list(depths)


class SwinUpPath(nn.Module):
    """Swin decoder from the bottleneck back to the patch grid: patch expanding + Swin blocks per stage.

    ``skips=False`` is the Swin-MAE pretraining decoder; ``skips=True`` is Swin-UNet's, where each up-stage
    concatenates the encoder's feature map of its resolution and projects back to its width.
    """

    def __init__(self, encoder: SwinEncoder, depths: Sequence[int] | None = None, *, skips: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True):
        super().__init__()
        dims, heads, window = encoder.stage_dims, encoder.num_heads, encoder.window_size
        n = len(dims)
        self.skips = skips
        self.expand = nn.ModuleList(PatchExpand(dims[i + 1], dims[i]) for i in reversed(range(n - 1)))
        self.concat = nn.ModuleList(nn.Linear(2 * dims[i], dims[i]) for i in reversed(range(n - 1))) if skips else None
        self.stages = nn.ModuleList(
            _stage(dims[i], d, heads[i], window, mlp_ratio, qkv_bias, [0.0] * d)
            for i, d in zip(reversed(range(n - 1)), _decoder_depths(encoder, depths))
        )
        self.norm = nn.LayerNorm(dims[0], eps=1e-6)
        self.out_dim = dims[0]
        self.apply(init_transformer_weights)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder stage outputs (shallow to deep, (B, H_i, W_i, C_i)) -> (B, H_0, W_0, C_0) at the patch grid."""
        x = feats[-1]
        for j, (expand, blocks) in enumerate(zip(self.expand, self.stages)):
            x = expand(x)
            if self.skips:
                x = self.concat[j](torch.cat([x, feats[-2 - j]], dim=-1))
            for blk in blocks:
                x = blk(x)
        return self.norm(x)


class SwinMAE(nn.Module):
    """VIS-MAE / Swin-MAE: window masking with a mask token on the full patch grid, the Swin encoder, a Swin up
    path without skips, and a linear head predicting each patch's pixels. ``forward(x, seeds)`` returns
    ``{"loss"}``: MSE on masked patches (per-patch normalised targets with ``norm_pix_loss``)."""

    def __init__(self, encoder: SwinEncoder, *, mask_ratio: float = 0.75, mask_block: Sequence[int] = (4, 4),
                 norm_pix_loss: bool = False, decoder_depths: Sequence[int] | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        if any(g % b for g, b in zip(encoder.grid, mask_block)):
            raise ValueError(f"patch grid {encoder.grid} is not divisible by the mask block {tuple(mask_block)} (in patches)")
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.mask_block = tuple(int(b) for b in mask_block)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, encoder.stage_dims[0]))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = SwinUpPath(encoder, decoder_depths, skips=False, mlp_ratio=mlp_ratio)
        self.decoder_pred = nn.Linear(self.decoder.out_dim, encoder.in_channels * math.prod(encoder.patch_size))
        init_transformer_weights(self.decoder_pred)

    def mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B, h, w) bool token mask from per-sample seeds (None: seeds drawn from the global torch RNG)."""
        if seeds_b is None:
            seeds_b = torch.randint(0, 2**62, (batch,))
        return window_mask(seeds_b.to(device), self.encoder.grid, self.mask_block, self.mask_ratio)

    def predict(self, x_bchw: torch.Tensor, mask_bhw: torch.Tensor) -> torch.Tensor:
        """Patch predictions (B, L, C * p * p) for every patch, masked ones replaced by the mask token first."""
        tokens = self.encoder.embed(x_bchw)
        tokens = torch.where(mask_bhw[..., None], self.mask_token.to(tokens.dtype), tokens)
        y = self.decoder(self.encoder.forward_stages(tokens))
        return self.decoder_pred(y.flatten(1, 2))

    def target(self, x_bchw: torch.Tensor) -> torch.Tensor:
        t = patchify(x_bchw, self.encoder.patch_size)
        return normalize_patches(t) if self.norm_pix_loss else t

    def forward(self, x_bchw: torch.Tensor, seeds_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mask = self.mask(x_bchw.shape[0], seeds_b, x_bchw.device)
        pred = self.predict(x_bchw, mask)
        return {"loss": masked_patch_loss(pred, self.target(x_bchw), mask.flatten(1))}

    @torch.no_grad()
    def reconstruct(self, x_bchw: torch.Tensor, seeds_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked patches predicted (un-normalised with each patch's own statistics), visible ones copied.

        Returns:
            recon_bchw and mask_b1hw (1.0 where masked).
        """
        mask = self.mask(x_bchw.shape[0], seeds_b, x_bchw.device)
        pred = self.predict(x_bchw, mask).float()
        patches = patchify(x_bchw.float(), self.encoder.patch_size)
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
            pred = pred * std + mean
        mask_bl = mask.flatten(1)
        enc = self.encoder
        merged = torch.where(mask_bl[..., None], pred, patches)
        return (unpatchify(merged, enc.patch_size, enc.grid, enc.in_channels),
                token_mask_to_image(mask_bl, enc.patch_size, enc.grid))

    @torch.no_grad()
    def mean_patch_baseline(self, x_bchw: torch.Tensor, seeds_b: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of predicting each masked patch by its own mean (same masks and target space)."""
        mask = self.mask(x_bchw.shape[0], seeds_b, x_bchw.device)
        target = self.target(x_bchw.float())
        return masked_patch_loss(target.mean(dim=-1, keepdim=True).expand_as(target), target, mask.flatten(1))


class SwinUNet(nn.Module):
    """Swin-UNet segmentation: the Swin encoder, a Swin up path with skip connections, a 4x patch expanding
    back to pixels and a 1x1 convolution to class logits (B, K, H, W)."""

    def __init__(self, encoder: SwinEncoder, num_classes: int, *, decoder_depths: Sequence[int] | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.encoder = encoder
        self.decoder = SwinUpPath(encoder, decoder_depths, skips=True, mlp_ratio=mlp_ratio)
        p = encoder.patch_size[0]
        if len(set(encoder.patch_size)) != 1:
            raise ValueError(f"Swin-UNet needs a square patch, got {encoder.patch_size}")
        c = self.decoder.out_dim
        self.final_expand = PatchExpand(c, c, scale=p)
        self.out = nn.Conv2d(c, num_classes, kernel_size=1)
        init_transformer_weights(self.final_expand)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.encoder.forward_features(x_bchw))
        return self.out(self.final_expand(y).permute(0, 3, 1, 2))

