"""Backbone families: the one place that maps ``model.arch`` to encoders, MAEs and task heads.

A family is a handful of functions (see :class:`Family`); pretraining, fine-tuning, export and loading only
talk to this interface, so adding a backbone means writing its modules and registering one ``Family``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from medmae.models.heads import UNETR, Classifier, vit_layer_id
from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.vit import ViT


@dataclass(frozen=True)
class Family:
    """What medmae needs to know about a backbone family.

    - ``encoder_kwargs(model_cfg)``: constructor arguments of the encoder (stored in exports);
    - ``build_encoder(kwargs, drop_path)``: the encoder;
    - ``build_mae(encoder, cfg)``: the pretraining model (``forward(x, seeds) -> {"loss"}``,
      ``reconstruct(x, seeds) -> (recon, mask)``, ``mean_patch_baseline(x, seeds)``, attribute ``encoder``);
    - ``build_classifier(encoder, num_classes, cfg)`` / ``build_segmenter(encoder, num_classes, cfg)``: task models
      with the encoder as attribute ``encoder``;
    - ``layer_id(param_name, model)`` and ``num_layers(model)``: depth of each parameter for layer-wise lr decay;
    - ``stem_key``: the input-facing weight adapted when the channel count changes;
    - ``extra_exports(mae)``: further pretrained parts to export besides the encoder (e.g. a U-Net decoder).
    """

    name: str
    encoder_kwargs: Callable[[Any], dict[str, Any]]
    build_encoder: Callable[[dict[str, Any], float], nn.Module]
    build_mae: Callable[[nn.Module, Any], nn.Module]
    build_classifier: Callable[[nn.Module, int, Any], nn.Module]
    build_segmenter: Callable[[nn.Module, int, Any], nn.Module]
    layer_id: Callable[[str, nn.Module], int]
    num_layers: Callable[[nn.Module], int]
    stem_key: str
    extra_exports: Callable[[nn.Module], dict[str, nn.Module]] = lambda mae: {}


# --------------------------------------------------------------------------------------------------- ViT


def _vit_kwargs(m: Any) -> dict[str, Any]:
    embed_dim, depth, num_heads = m.dims
    return {
        "spatial_dims": m.spatial_dims,
        "img_size": list(m.img_size),
        "patch_size": list(m.patch),
        "in_channels": m.in_channels,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": m.mlp_ratio,
        "qkv_bias": m.qkv_bias,
        "pos_embed": m.pos_embed,
        "cls_token": m.cls_token,
    }


def _vit_mae(encoder: nn.Module, cfg: Any) -> nn.Module:
    d = cfg.model.decoder
    return MaskedAutoencoderViT(encoder, d.embed_dim, d.depth, d.num_heads, cfg.model.mlp_ratio, cfg.mask.ratio,
                                cfg.loss.norm_pix)


VIT = Family(
    name="vit",
    encoder_kwargs=_vit_kwargs,
    build_encoder=lambda kw, drop_path: ViT(**kw, drop_path=drop_path),
    build_mae=_vit_mae,
    build_classifier=lambda enc, k, cfg: Classifier(enc, k, pool=cfg.head.pool, probe=cfg.mode == "linear_probe",
                                                    dropout=cfg.head.dropout),
    build_segmenter=lambda enc, k, cfg: UNETR(enc, k, feature_size=cfg.head.feature_size),
    layer_id=lambda name, model: vit_layer_id(name, model.encoder.depth),
    num_layers=lambda model: model.encoder.depth,
    stem_key="patch_embed.proj.weight",
)

FAMILIES: dict[str, Family] = {"vit": VIT}


def family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[arch]


def register(fam: Family) -> None:
    FAMILIES[fam.name] = fam


def encoder_kwargs(model_cfg: Any) -> dict[str, Any]:
    """Encoder constructor arguments: derived from the config, then ``model.encoder`` overrides (set when
    fine-tuning adopts a pretrained encoder's architecture)."""
    kw = family(model_cfg.arch).encoder_kwargs(model_cfg)
    kw.update({k: v for k, v in (model_cfg.encoder or {}).items() if k not in ("img_size", "in_channels", "pos_embed")})
    return kw


def build_encoder(model_cfg: Any) -> nn.Module:
    return family(model_cfg.arch).build_encoder(encoder_kwargs(model_cfg), model_cfg.drop_path)


def build_mae(cfg: Any) -> nn.Module:
    """Pretraining model for a :class:`~medmae.config.PretrainConfig`."""
    return family(cfg.model.arch).build_mae(build_encoder(cfg.model), cfg)


def build_task_head(encoder: nn.Module, num_outputs: int, cfg: Any) -> nn.Module:
    """Classifier or segmenter for a :class:`~medmae.config.FinetuneConfig`."""
    fam = family(cfg.model.arch)
    build = fam.build_classifier if cfg.task == "cls" else fam.build_segmenter
    return build(encoder, num_outputs, cfg)
