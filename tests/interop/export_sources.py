"""Tiny medmae encoders and task models as export sources, with every tensor perturbed away from its
initialisation (zero biases and unit norms would hide a wrong key map)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmae.data.preprocess import Preprocessing
from medmae.interop import ExportSource
from medmae.models.adapt import family_plan
from medmae.models.contract import make_contract, save_encoder
from medmae.models.registry import family


def perturb(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def vit_kwargs(dims: int = 2, img: int = 32, patch: int = 8, dim: int = 32, depth: int = 2, heads: int = 2,
               cls_token: bool = True, pos_embed: str = "sincos") -> dict[str, Any]:
    return {"spatial_dims": dims, "img_size": [img] * dims, "patch_size": [patch] * dims, "in_channels": 1,
            "embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "qkv_bias": True,
            "pos_embed": pos_embed, "cls_token": cls_token}


RESENC = {"spatial_dims": 3, "img_size": [32, 32, 32], "patch_size": [1, 1, 1], "in_channels": 1,
          "widths": [8, 16, 32], "blocks": [1, 2, 2], "kernel_size": 3}
SWIN = {"spatial_dims": 2, "img_size": [64, 64], "patch_size": [2, 2], "in_channels": 1, "embed_dim": 12,
        "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4, "mlp_ratio": 4.0, "qkv_bias": True}


def preprocessing(dims: int) -> dict[str, Any]:
    return Preprocessing(spatial_dims=dims, in_channels=1, intensity={"name": "minmax"},
                         orientation="RAS" if dims == 3 else None).contract()


def source(arch: str, kwargs: dict[str, Any], *, task_model: nn.Module | None = None,
           task: dict[str, Any] | None = None, seed: int = 0) -> ExportSource:
    """An export source; with ``task_model`` its encoder is the task model's (perturbed together)."""
    if task_model is not None:
        perturb(task_model, seed)
        encoder = task_model.encoder
    else:
        encoder = perturb(family(arch).build_encoder(kwargs, 0.0), seed)
    return ExportSource("tiny", arch, encoder, kwargs, preprocessing(kwargs["spatial_dims"]), task_model, task)


def encoder_file(path: Path, arch: str, kwargs: dict[str, Any], seed: int = 0) -> Path:
    """``encoder.safetensors`` with the contract pretraining writes."""
    enc = perturb(family(arch).build_encoder(kwargs, 0.0), seed)
    contract = make_contract(arch=arch, encoder=kwargs, preprocessing=preprocessing(kwargs["spatial_dims"]),
                             adaptation=family_plan(family(arch), kwargs))
    return save_encoder(path, enc.state_dict(), contract)
