"""Tiny ViT encoders and medmae exports of them, shared by the adaptation and contract tests."""

import torch

from medmae.data.preprocess import Preprocessing
from medmae.models.adapt import family_plan
from medmae.models.contract import make_contract, save_encoder
from medmae.models.registry import family
from medmae.models.vit import ViT

DIM = 32


def vit(dims: int = 2, img: int = 32, patch: int = 8, in_channels: int = 1, **kw) -> ViT:
    return ViT(dims, (img,) * dims, (patch,) * dims, in_channels, embed_dim=DIM, depth=2, num_heads=2, **kw)


def export(path, enc: ViT, *, intensity: dict | None = None, state: dict | None = None):
    """A medmae export of ``enc`` with the contract pretraining writes."""
    prep = Preprocessing(spatial_dims=enc.spatial_dims, in_channels=enc.in_channels,
                         intensity=intensity or {"name": "minmax"},
                         orientation="RAS" if enc.spatial_dims == 3 else None)
    kwargs = {"spatial_dims": enc.spatial_dims, "img_size": list(enc.img_size), "patch_size": list(enc.patch_size),
              "in_channels": enc.in_channels, "embed_dim": DIM, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0,
              "qkv_bias": True, "pos_embed": "sincos", "cls_token": enc.cls_token is not None}
    contract = make_contract(arch="vit", encoder=kwargs, preprocessing=prep.contract(),
                             adaptation=family_plan(family("vit"), kwargs))
    return save_encoder(path, state if state is not None else enc.state_dict(), contract)


def smooth_table(grid: tuple[int, ...], dim: int = 16) -> torch.Tensor:
    """(1, prod(grid), dim): per channel a plane wave of at most 0.35 rad per token, a different one per axis."""
    g = torch.Generator().manual_seed(0)
    freqs = (torch.rand(dim, len(grid), generator=g) * 0.7 - 0.35) * torch.tensor([1.0, 0.5, 0.25][: len(grid)])
    phase = torch.rand(dim, generator=g) * 6.28
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in grid], indexing="ij"), -1)
    return torch.cos(coords.reshape(-1, len(grid)) @ freqs.T + phase)[None]
