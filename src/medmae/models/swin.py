"""Swin Transformer (2D) for VIS-MAE: encoder, window-masked MAE with a Swin up path, Swin-UNet segmenter.

Feature maps are channels-last ``(B, H, W, C)`` inside the network (the Swin convention); images are ``(B, C, H, W)``.
The blocks (window attention, Swin blocks, patch merging / expanding) are in :mod:`medmae.models.swin_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medmae.models.mae_base import MaskedAutoencoder, draw_seeds, standardize
from medmae.models.masking import mask_to_grid, window_mask
from medmae.models.swin_blocks import PatchExpand, PatchMerging, swin_stage
from medmae.models.vit import init_transformer_weights

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
        input_norm: bool = False,
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
        self.in_channels, self.window_size, self.input_norm = in_channels, window_size, input_norm
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
            stage.blocks = swin_stage(self.stage_dims[i], d, heads, window_size, mlp_ratio, qkv_bias, rates[start:start + d])
            stage.downsample = PatchMerging(self.stage_dims[i]) if i < len(depths) - 1 else None
            self.layers.append(stage)
        self.norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.apply(init_transformer_weights)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def embed(self, x_bchw: torch.Tensor, visible_b1hw: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens (B, H/p, W/p, C) after the patch embedding and its LayerNorm (with ``input_norm`` the input is
        first standardised per image and channel, over its ``visible`` pixels when given)."""
        if x_bchw.shape[1] != self.in_channels or x_bchw.dim() != 4:
            raise ValueError(f"Swin encoder built for (B, {self.in_channels}, H, W) input, got {tuple(x_bchw.shape)}")
        if any(s % p for s, p in zip(x_bchw.shape[2:], self.patch_size)):
            raise ValueError(f"input size {tuple(x_bchw.shape[2:])} is not divisible by the patch size {self.patch_size}")
        if self.input_norm:
            x_bchw = standardize(x_bchw, visible_b1hw)
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
        """Final-stage tokens (B, L, C) (the :class:`~medmae.models.encoder.Encoder` interface; no prefix tokens)."""
        last = self.forward_features(x_bchw)[-1]
        return last.flatten(1, 2), []

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.stage_dims

    @property
    def feature_strides(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(p * 2**i for p in self.patch_size) for i in range(len(self.stage_dims)))

    def feature_maps(self, x_bchw: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs channels-first, (B, C_i, H_i, W_i)."""
        return [f.permute(0, 3, 1, 2) for f in self.forward_features(x_bchw)]

    def forward_masked(self, x_bchw: torch.Tensor, mask_bm: torch.Tensor, fill: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Stage outputs (as :meth:`feature_maps`) with the masked patches' tokens replaced by ``fill`` (a (C,) mask
        token broadcast over the map; zeros when None) after the patch embedding, on the full grid (VIS-MAE)."""
        visible = ~mask_to_grid(mask_bm, x_bchw.shape[2:], (1, 1))[:, None]  # masked pixels add nothing to the statistics
        tokens = self.embed(x_bchw, visible)
        masked = mask_to_grid(mask_bm, x_bchw.shape[2:], self.patch_size)[..., None]
        tokens = torch.where(masked, tokens.new_zeros(()) if fill is None else fill.to(tokens.dtype), tokens)
        return [f.permute(0, 3, 1, 2) for f in self.forward_stages(tokens)]

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
            swin_stage(dims[i], d, heads[i], window, mlp_ratio, qkv_bias, [0.0] * d)
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


class SwinMAE(MaskedAutoencoder):
    """VIS-MAE / Swin-MAE: window masking with a mask token on the full patch grid, the Swin encoder, a Swin up
    path without skips, and a linear head predicting each patch's pixels. ``forward(x, seeds)`` returns
    ``{"loss"}``: MSE on masked patches (per-patch normalised targets with ``norm_pix_loss``)."""

    def __init__(self, encoder: SwinEncoder, *, mask_ratio: float = 0.75, mask_block: Sequence[int] = (4, 4),
                 norm_pix_loss: bool = False, decoder_depths: Sequence[int] | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        if any(g % b for g, b in zip(encoder.grid, mask_block)):
            raise ValueError(f"patch grid {encoder.grid} is not divisible by the mask block {tuple(mask_block)} (in patches)")
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.standardize_input = encoder.input_norm  # targets in the encoder's standardised space
        self.mask_block = tuple(int(b) for b in mask_block)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, encoder.stage_dims[0]))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = SwinUpPath(encoder, decoder_depths, skips=False, mlp_ratio=mlp_ratio)
        self.decoder_pred = nn.Linear(self.decoder.out_dim, encoder.in_channels * math.prod(encoder.patch_size))
        init_transformer_weights(self.decoder_pred)

    def mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B, h, w) bool token mask from per-sample seeds (None: seeds drawn from the global torch RNG)."""
        return window_mask(draw_seeds(batch, seeds_b, device), self.encoder.grid, self.mask_block, self.mask_ratio)

    def token_mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return self.mask(batch, seeds_b, device).flatten(1)

    def predict(self, x_bchw: torch.Tensor, mask_bhw: torch.Tensor) -> torch.Tensor:
        """Patch predictions (B, L, C * p * p) for every patch, masked ones replaced by the mask token first."""
        feats = self.encoder.forward_masked(x_bchw, mask_bhw, self.mask_token)
        y = self.decoder([f.permute(0, 2, 3, 1) for f in feats])  # back to channels-last: the original tensors
        return self.decoder_pred(y.flatten(1, 2))

    def predict_patches(self, x_bchw: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask(x_bchw.shape[0], seeds_b, x_bchw.device)
        return self.predict(x_bchw, mask), mask.flatten(1)


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

