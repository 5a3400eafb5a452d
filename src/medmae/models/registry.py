"""Backbone families: the one place that maps ``model.arch`` to encoders, MAEs and task heads.

A family is a handful of functions (see :class:`Family`); pretraining, fine-tuning, export and loading only
talk to this interface, so adding a backbone means writing its modules and registering one ``Family``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from medmae.config import ConfigError
from medmae.models.heads import UNETR, Classifier, vit_layer_id
from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.resenc import ResEncEncoder, ResEncMAE, ResEncUNet, resenc_layer_id
from medmae.models.swin import SwinEncoder, SwinMAE, SwinUNet, swin_layer_id
from medmae.models.vit import ViT

log = logging.getLogger(__name__)


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
    - ``extra_exports(mae)``: further pretrained parts to export besides the encoder (e.g. a U-Net decoder),
      written as ``export/<name>.safetensors``;
    - ``extra_targets(task_model)``: the task model's parts that take those exports when fine-tuning (same names).
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
    extra_targets: Callable[[nn.Module], dict[str, nn.Module]] = lambda model: {}


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


def _require_mask(cfg: Any, kinds: tuple[str, ...]) -> None:
    if cfg.mask.kind not in kinds:
        raise ConfigError(f"mask.kind {cfg.mask.kind!r} does not apply to arch {cfg.model.arch!r}; use {' or '.join(kinds)}")


def _vit_mae(encoder: nn.Module, cfg: Any) -> nn.Module:
    _require_mask(cfg, ("random",))
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

# -------------------------------------------------------------------------------------------------- Swin


def _swin_kwargs(m: Any) -> dict[str, Any]:
    s = m.swin
    return {
        "spatial_dims": m.spatial_dims,
        "img_size": list(m.img_size),
        "patch_size": list(m.patch),
        "in_channels": m.in_channels,
        "embed_dim": s.embed_dim,
        "depths": list(s.depths),
        "num_heads": list(s.num_heads),
        "window_size": s.window_size,
        "mlp_ratio": m.mlp_ratio,
        "qkv_bias": m.qkv_bias,
    }


def _swin_mask_block(encoder: SwinEncoder, cfg: Any) -> list[int]:
    """Mask block in patches: ``window`` masking groups ``block_size`` px (VIS-MAE: 16 px = 4x4 patches of 4 px);
    ``random`` masks single patches."""
    _require_mask(cfg, ("window", "random"))
    if cfg.mask.kind == "random":
        return [1] * encoder.spatial_dims
    px = cfg.mask.block_shape(encoder.spatial_dims)
    if any(b % p for b, p in zip(px, encoder.patch_size)):
        raise ConfigError(f"mask.block_size {px} px is not a multiple of the Swin patch size {list(encoder.patch_size)}")
    return [b // p for b, p in zip(px, encoder.patch_size)]


def _swin_mae(encoder: nn.Module, cfg: Any) -> nn.Module:
    return SwinMAE(encoder, mask_ratio=cfg.mask.ratio, mask_block=_swin_mask_block(encoder, cfg),
                   norm_pix_loss=cfg.loss.norm_pix, decoder_depths=cfg.model.swin.decoder_depths,
                   mlp_ratio=cfg.model.mlp_ratio)


SWIN = Family(
    name="swin",
    encoder_kwargs=_swin_kwargs,
    build_encoder=lambda kw, drop_path: SwinEncoder(**kw, drop_path=drop_path),
    build_mae=_swin_mae,
    build_classifier=lambda enc, k, cfg: Classifier(enc, k, pool=cfg.head.pool, probe=cfg.mode == "linear_probe",
                                                    dropout=cfg.head.dropout),
    build_segmenter=lambda enc, k, cfg: SwinUNet(enc, k, decoder_depths=cfg.model.swin.decoder_depths,
                                                 mlp_ratio=cfg.model.mlp_ratio),
    layer_id=lambda name, model: swin_layer_id(name, model.encoder.depths),
    num_layers=lambda model: model.encoder.depth,
    stem_key="patch_embed.proj.weight",
)


# ------------------------------------------------------------------------------------------------ ResEnc


def _resenc_kwargs(m: Any) -> dict[str, Any]:
    r = m.resenc
    return {
        "spatial_dims": m.spatial_dims,
        "img_size": list(m.img_size),
        "patch_size": list(m.patch),
        "in_channels": m.in_channels,
        "widths": list(r.widths),
        "blocks": list(r.blocks),
        "kernel_size": r.kernel_size,
    }


def _resenc_mae(encoder: nn.Module, cfg: Any) -> nn.Module:
    _require_mask(cfg, ("block",))
    try:
        return ResEncMAE(encoder, mask_ratio=cfg.mask.ratio, mask_block=cfg.mask.block_shape(encoder.spatial_dims),
                         sparse=cfg.mask.sparse, norm_pix_loss=cfg.loss.norm_pix,
                         decoder_blocks=cfg.model.resenc.decoder_blocks)
    except ValueError as e:  # block size vs image size / stride: a configuration problem
        raise ConfigError(f"mask.block_size {cfg.mask.block_size}: {e}") from None


RESENC = Family(
    name="resenc",
    encoder_kwargs=_resenc_kwargs,
    build_encoder=lambda kw, drop_path: ResEncEncoder(**kw, drop_path=drop_path),
    build_mae=_resenc_mae,
    build_classifier=lambda enc, k, cfg: Classifier(enc, k, pool=cfg.head.pool, probe=cfg.mode == "linear_probe",
                                                    dropout=cfg.head.dropout),
    build_segmenter=lambda enc, k, cfg: ResEncUNet(enc, k, decoder_blocks=cfg.model.resenc.decoder_blocks,
                                                   deep_supervision=cfg.model.resenc.deep_supervision),
    layer_id=lambda name, model: resenc_layer_id(name, len(model.encoder.widths)),
    num_layers=lambda model: len(model.encoder.widths),
    stem_key="stem.conv.weight",
    extra_exports=lambda mae: {"decoder": mae.decoder},
    extra_targets=lambda model: {"decoder": model.decoder} if isinstance(model, ResEncUNet) else {},
)

FAMILIES: dict[str, Family] = {"vit": VIT, "swin": SWIN, "resenc": RESENC}


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


def load_extra_parts(model: nn.Module, arch: str, encoder_file: str | Path, report: Any = None) -> list[str]:
    """Load a family's further pretrained parts (``export/<name>.safetensors`` beside the encoder export, e.g. the
    ResEnc U-Net decoder) into the task model's matching parts.

    Keys must match in shape (else :class:`~medmae.models.convert.ContractError`); keys only one side has are left
    at their initialisation and listed. Returns one note per part, also appended to ``report.adaptations`` (and the
    loaded keys, prefixed with the part name, to ``report.loaded``) when a report is given.
    """
    from medmae.models.convert import ContractError

    notes = []
    for name, part in family(arch).extra_targets(model).items():
        path = Path(encoder_file).with_name(f"{name}.safetensors")
        if not path.is_file():
            notes.append(f"{name}: no pretrained {path.name} beside {encoder_file}; {name} left at its initialisation")
            log.warning(notes[-1])
            continue
        state, target = load_file(str(path)), part.state_dict()
        bad = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items()
               if k in target and v.shape != target[k].shape]
        if bad:
            raise ContractError(f"{path}: {name} weights do not fit the model: {', '.join(bad[:6])}")
        usable = {k: v for k, v in state.items() if k in target}
        part.load_state_dict(usable, strict=False)
        missing = sorted(set(target) - set(usable))
        unexpected = sorted(set(state) - set(target))
        notes.append(f"{name}: {len(usable)} tensors loaded from {path}" + (f", {len(missing)} missing" if missing else "")
                     + (f", {len(unexpected)} unexpected" if unexpected else ""))
        if report is not None:
            report.loaded.extend(f"{name}.{k}" for k in sorted(usable))
            report.missing.extend(f"{name}.{k}" for k in missing)
            report.unexpected.extend(f"{name}.{k}" for k in unexpected)
    if report is not None:
        report.adaptations.extend(notes)
    return notes
