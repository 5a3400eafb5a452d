"""Task models on a pretrained encoder: classification (linear head) and segmentation (UNETR decoder)."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from medmae.models.encoder import Encoder
from medmae.models.vit import ViT


class Classifier(nn.Module):
    """Encoder (any :class:`~medmae.models.encoder.Encoder`) -> pooled features (cls token or mean of patch
    tokens) -> linear head.

    ``probe=True`` is MAE's linear-probing protocol: the encoder is frozen and a BatchNorm without affine
    parameters normalises the features before the head.
    """

    def __init__(self, encoder: Encoder, num_classes: int, *, pool: str = "cls", probe: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if pool == "cls" and encoder.num_prefix_tokens == 0:
            raise ValueError("pool='cls' needs an encoder with a cls token; use pool='mean'")
        self.encoder, self.pool, self.probe = encoder, pool, probe
        self.feature_norm = nn.BatchNorm1d(encoder.embed_dim, affine=False) if probe else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5 if probe else 0.02)
        nn.init.zeros_(self.head.bias)
        if probe:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.probe:
            self.encoder.eval()  # frozen encoder: no drop path, fixed statistics
        return self

    def features(self, x_bcs: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder.forward_tokens(x_bcs)
        if self.pool == "cls":
            return tokens[:, 0]
        return tokens[:, self.encoder.num_prefix_tokens :].mean(dim=1)

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor:
        if self.probe:
            with torch.no_grad():
                f = self.features(x_bcs)
        else:
            f = self.features(x_bcs)
        return self.head(self.dropout(self.feature_norm(f)))


def unetr_layers(depth: int, patch: int) -> list[int]:
    """Encoder blocks feeding the UNETR decoder: one per skip level plus the last, spread over the depth
    (ViT-B, patch 16: blocks 3, 6, 9, 12). A shallow encoder repeats blocks (depth 2, patch 16: 1, 1, 2, 2)."""
    levels = int(math.log2(patch))
    return [max(1, round(depth * (i + 1) / levels)) for i in range(levels)]


class UNETR(nn.Module):
    """UNETR segmentation on a ViT (2D or 3D), decoder built from MONAI's UNETR blocks.

    For a patch side 2**n the decoder has n resolution levels: hidden states of n encoder blocks are
    upsampled to 1/2 ... 1/2**(n-1) of the input and the last block is the bottleneck.
    """

    def __init__(self, encoder: ViT, num_classes: int, *, feature_size: int = 16, norm_name: str = "instance",
                 res_block: bool = True):
        super().__init__()
        patch = set(encoder.patch_size)
        p = encoder.patch_size[0]
        if len(patch) != 1 or p < 4 or p & (p - 1):
            raise ValueError(f"UNETR needs an isotropic power-of-two patch size >= 4, got {encoder.patch_size}")
        nd, hidden, f = encoder.spatial_dims, encoder.embed_dim, feature_size
        self.encoder = encoder
        self.layers = unetr_layers(encoder.depth, p)
        levels = len(self.layers)  # log2(patch)
        self.stem = UnetrBasicBlock(nd, encoder.in_channels, f, 3, 1, norm_name, res_block)
        # skip i (1..levels-1) comes from block layers[i-1], upsampled to 1/2**i with levels-1-i extra transposed convs
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(nd, hidden, f * 2**i, levels - 1 - i, 3, 1, 2, norm_name, True, res_block)
            for i in range(1, levels)
        )
        ups = [UnetrUpBlock(nd, hidden, f * 2 ** (levels - 1), 3, 2, norm_name, res_block)]
        for i in range(levels - 1, 0, -1):
            ups.append(UnetrUpBlock(nd, f * 2**i, f * 2 ** (i - 1), 3, 2, norm_name, res_block))
        self.ups = nn.ModuleList(ups)
        self.out = UnetOutBlock(nd, f, num_classes)

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor:
        wanted = sorted(set(self.layers[:-1]))
        tokens, hidden = self.encoder.forward_tokens(x_bcs, return_layers=wanted)
        by_layer = dict(zip(wanted, hidden))  # one hidden state per distinct block, reused where layers repeat
        maps = [self.encoder.tokens_to_map(by_layer[i]) for i in self.layers[:-1]] + [self.encoder.tokens_to_map(tokens)]
        skips = [self.stem(x_bcs)] + [blk(m) for blk, m in zip(self.skips, maps[:-1])]
        y = maps[-1]
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        return self.out(y)


def vit_layer_id(name: str, depth: int) -> int:
    """Layer index for layer-wise lr decay: embeddings 0, block i -> i + 1, everything after -> depth + 1."""
    if name.startswith("encoder."):
        name = name[len("encoder.") :]
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
    return depth + 1
