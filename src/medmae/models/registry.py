"""Build models from config: one place that maps ``model.arch`` to an encoder and its MAE."""

from __future__ import annotations

from typing import Any

from torch import nn

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.vit import ViT


def encoder_kwargs(model_cfg: Any) -> dict[str, Any]:
    """Constructor arguments of the encoder, as stored in checkpoints and exports."""
    embed_dim, depth, num_heads = model_cfg.dims
    return {
        "spatial_dims": model_cfg.spatial_dims,
        "img_size": list(model_cfg.img_size),
        "patch_size": list(model_cfg.patch),
        "in_channels": model_cfg.in_channels,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": model_cfg.mlp_ratio,
        "qkv_bias": model_cfg.qkv_bias,
        "pos_embed": model_cfg.pos_embed,
        "cls_token": model_cfg.cls_token,
    }


def build_encoder(arch: str, kwargs: dict[str, Any], **overrides: Any) -> nn.Module:
    if arch == "vit":
        return ViT(**{**kwargs, **overrides})
    raise ValueError(f"unknown encoder architecture {arch!r}")


def build_mae(cfg: Any) -> nn.Module:
    """MAE for a :class:`~medmae.config.PretrainConfig`."""
    m = cfg.model
    encoder = build_encoder(m.arch, encoder_kwargs(m), drop_path=m.drop_path)
    return MaskedAutoencoderViT(
        encoder,
        decoder_embed_dim=m.decoder.embed_dim,
        decoder_depth=m.decoder.depth,
        decoder_num_heads=m.decoder.num_heads,
        mlp_ratio=m.mlp_ratio,
        mask_ratio=cfg.mask.ratio,
        norm_pix_loss=cfg.loss.norm_pix,
    )
