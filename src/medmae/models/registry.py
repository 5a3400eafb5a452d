"""Backbone families: the one place that maps ``model.arch`` to encoders, MAEs and task heads.

A family is a :class:`Family` passed to :func:`register`; pretraining, fine-tuning, export and loading only talk to
this interface, so adding a backbone means writing its modules (an encoder that passes
:func:`medmae.models.encoder.check_encoder`, an MAE, a segmenter) and registering one ``Family``. The built-in
families (``vit``, ``swin``, ``resenc``) are registered at the end of this module the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn

from medmae.config import DecoderConfig, FinetuneConfig, ModelConfig, PretrainConfig, ResEncConfig, SwinConfig
from medmae.errors import ConfigError
from medmae.models.encoder import Encoder
from medmae.models.heads import UNETR, Classifier, vit_layer_id
from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.resenc import ResEncEncoder, ResEncMAE, ResEncUNet, resenc_layer_id
from medmae.models.swin import SwinEncoder, SwinMAE, SwinUNet, swin_layer_id
from medmae.models.vit import ViT


def linear_classifier(encoder: Encoder, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    """The default classification head of every family: pooled tokens -> linear layer (``mode=linear_probe``:
    frozen encoder, BatchNorm-ed features)."""
    return Classifier(encoder, num_classes, pool=cfg.head.pool, probe=cfg.mode == "linear_probe",
                      dropout=cfg.head.dropout)


@dataclass(frozen=True)
class Family:
    """What medmae needs to know about a backbone family.

    - ``config_key`` / ``config_section``: the section of ``model`` that only this family reads
      (``model.swin``: :class:`~medmae.config.SwinConfig`), returned typed by :meth:`section`;
    - ``encoder_kwargs(model_cfg)``: constructor arguments of the encoder (stored in exports);
    - ``build_encoder(kwargs, drop_path)``: the encoder, an :class:`~medmae.models.encoder.Encoder`;
    - ``build_mae(encoder, cfg)``: the pretraining model (a :class:`~medmae.models.mae_base.MaskedAutoencoder`:
      ``forward(x, seeds) -> {"loss"}``, ``reconstruct``, ``mean_patch_baseline``, attribute ``encoder``);
    - ``build_segmenter(encoder, num_classes, cfg)`` / ``build_classifier`` (default :func:`linear_classifier`):
      task models with the encoder as attribute ``encoder``;
    - ``layer_id(param_name, model)`` and ``num_layers(model)``: depth of each parameter for layer-wise lr decay;
    - ``stem_key``: the input-facing weight adapted when the channel count changes;
    - ``pos_embed_key``: the absolute position table interpolated to a new token grid (None: the family has none);
    - ``extra_parts``: further pretrained parts of the MAE exported besides the encoder (the ResEnc U-Net
      ``decoder``), written as ``export/<name>.safetensors`` and loaded into the task model's part of that name.

    Its adaptation plan (:func:`medmae.models.adapt.family_plan`) is built from ``stem_key``, ``pos_embed_key``
    and ``extra_parts``.
    """

    name: str
    config_key: str
    config_section: type[BaseModel]
    encoder_kwargs: Callable[[ModelConfig], dict[str, Any]]
    build_encoder: Callable[[dict[str, Any], float], Encoder]
    build_mae: Callable[[Encoder, PretrainConfig], nn.Module]
    build_segmenter: Callable[[Encoder, int, FinetuneConfig], nn.Module]
    layer_id: Callable[[str, nn.Module], int]
    num_layers: Callable[[nn.Module], int]
    stem_key: str
    pos_embed_key: str | None = None
    extra_parts: tuple[str, ...] = ()
    build_classifier: Callable[[Encoder, int, FinetuneConfig], nn.Module] = linear_classifier

    def section(self, model_cfg: ModelConfig) -> BaseModel:
        """This family's section of the ``model`` config (``model.<config_key>``)."""
        sec = getattr(model_cfg, self.config_key)
        if not isinstance(sec, self.config_section):
            raise ConfigError(f"model.{self.config_key}: expected a {self.config_section.__name__} section")
        return sec

    def extra_exports(self, mae: nn.Module) -> dict[str, nn.Module]:
        """The MAE's parts exported besides the encoder, by name."""
        return {name: getattr(mae, name) for name in self.extra_parts}


def part_targets(model: nn.Module, names: tuple[str, ...] | list[str]) -> dict[str, nn.Module]:
    """The parts of ``model`` named ``names`` that it has (an attribute of that name, a module): the task model's
    parts that take a family's extra exports (a segmenter's decoder; a classifier has none)."""
    return {n: getattr(model, n) for n in names if isinstance(getattr(model, n, None), nn.Module)}


FAMILIES: dict[str, Family] = {}


def register(fam: Family) -> Family:
    """Make ``fam`` known under ``fam.name`` (``model.arch``); a family registered again under its name replaces
    the earlier one."""
    FAMILIES[fam.name] = fam
    return fam


def family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ConfigError(f"model.arch: unknown architecture {arch!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[arch]


def encoder_kwargs(model_cfg: ModelConfig) -> dict[str, Any]:
    """Encoder constructor arguments: derived from the config, then ``model.encoder`` overrides (set when
    fine-tuning adopts a pretrained encoder's architecture)."""
    kw = family(model_cfg.arch).encoder_kwargs(model_cfg)
    kw.update({k: v for k, v in (model_cfg.encoder or {}).items() if k not in ("img_size", "in_channels", "pos_embed")})
    return kw


def build_encoder(model_cfg: ModelConfig) -> Encoder:
    return family(model_cfg.arch).build_encoder(encoder_kwargs(model_cfg), model_cfg.drop_path)


def build_mae(cfg: PretrainConfig) -> nn.Module:
    """Pretraining model for a :class:`~medmae.config.PretrainConfig`."""
    return family(cfg.model.arch).build_mae(build_encoder(cfg.model), cfg)


def build_task_head(encoder: Encoder, num_outputs: int, cfg: FinetuneConfig) -> nn.Module:
    """Classifier or segmenter for a :class:`~medmae.config.FinetuneConfig`."""
    fam = family(cfg.model.arch)
    build = fam.build_classifier if cfg.task == "cls" else fam.build_segmenter
    return build(encoder, num_outputs, cfg)


def _require_mask(cfg: PretrainConfig, kinds: tuple[str, ...]) -> None:
    if cfg.mask.kind not in kinds:
        raise ConfigError(f"mask.kind {cfg.mask.kind!r} does not apply to arch {cfg.model.arch!r}; use {' or '.join(kinds)}")


# --------------------------------------------------------------------------------------------------- ViT


def _vit_kwargs(m: ModelConfig) -> dict[str, Any]:
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


def _vit_mae(encoder: Encoder, cfg: PretrainConfig) -> nn.Module:
    _require_mask(cfg, ("random",))
    d = VIT.section(cfg.model)
    return MaskedAutoencoderViT(encoder, d.embed_dim, d.depth, d.num_heads, cfg.model.mlp_ratio, cfg.mask.ratio,
                                cfg.loss.norm_pix)


VIT = register(Family(
    name="vit",
    config_key="decoder",  # the MAE decoder; the encoder's keys (size, embed_dim, ...) are model's own
    config_section=DecoderConfig,
    encoder_kwargs=_vit_kwargs,
    build_encoder=lambda kw, drop_path: ViT(**kw, drop_path=drop_path),
    build_mae=_vit_mae,
    build_segmenter=lambda enc, k, cfg: UNETR(enc, k, feature_size=cfg.head.feature_size),
    layer_id=lambda name, model: vit_layer_id(name, model.encoder.depth),
    num_layers=lambda model: model.encoder.depth,
    stem_key="patch_embed.proj.weight",
    pos_embed_key="pos_embed",
))

# -------------------------------------------------------------------------------------------------- Swin


def _swin_kwargs(m: ModelConfig) -> dict[str, Any]:
    s = SWIN.section(m)
    return {
        "spatial_dims": m.spatial_dims,
        "img_size": list(m.img_size),
        "patch_size": list(m.patch),
        "in_channels": m.in_channels,
        "embed_dim": s.embed_dim,
        "depths": list(s.depths),
        "num_heads": list(s.num_heads),
        "window_size": s.window_size,
        "input_norm": s.input_norm,
        "mlp_ratio": m.mlp_ratio,
        "qkv_bias": m.qkv_bias,
    }


def _swin_mask_block(encoder: SwinEncoder, cfg: PretrainConfig) -> list[int]:
    """Mask block in patches: ``window`` masking groups ``block_size`` px (VIS-MAE: 16 px = 4x4 patches of 4 px);
    ``random`` masks single patches."""
    _require_mask(cfg, ("window", "random"))
    if cfg.mask.kind == "random":
        return [1] * encoder.spatial_dims
    px = cfg.mask.block_shape(encoder.spatial_dims)
    if any(b % p for b, p in zip(px, encoder.patch_size)):
        raise ConfigError(f"mask.block_size {px} px is not a multiple of the Swin patch size {list(encoder.patch_size)}")
    return [b // p for b, p in zip(px, encoder.patch_size)]


def _swin_mae(encoder: Encoder, cfg: PretrainConfig) -> nn.Module:
    return SwinMAE(encoder, mask_ratio=cfg.mask.ratio, mask_block=_swin_mask_block(encoder, cfg),
                   norm_pix_loss=cfg.loss.norm_pix, decoder_depths=SWIN.section(cfg.model).decoder_depths,
                   mlp_ratio=cfg.model.mlp_ratio)


SWIN = register(Family(
    name="swin",
    config_key="swin",
    config_section=SwinConfig,
    encoder_kwargs=_swin_kwargs,
    build_encoder=lambda kw, drop_path: SwinEncoder(**kw, drop_path=drop_path),
    build_mae=_swin_mae,
    build_segmenter=lambda enc, k, cfg: SwinUNet(enc, k, decoder_depths=SWIN.section(cfg.model).decoder_depths,
                                                 mlp_ratio=cfg.model.mlp_ratio),
    layer_id=lambda name, model: swin_layer_id(name, model.encoder.depths),
    num_layers=lambda model: model.encoder.depth,
    stem_key="patch_embed.proj.weight",
))


# ------------------------------------------------------------------------------------------------ ResEnc


def _resenc_kwargs(m: ModelConfig) -> dict[str, Any]:
    r = RESENC.section(m)
    return {
        "spatial_dims": m.spatial_dims,
        "img_size": list(m.img_size),
        "patch_size": list(m.patch),
        "in_channels": m.in_channels,
        "widths": list(r.widths),
        "blocks": list(r.blocks),
        "kernel_size": r.kernel_size,
    }


def _resenc_mae(encoder: Encoder, cfg: PretrainConfig) -> nn.Module:
    _require_mask(cfg, ("block",))
    try:
        return ResEncMAE(encoder, mask_ratio=cfg.mask.ratio, mask_block=cfg.mask.block_shape(encoder.spatial_dims),
                         sparse=cfg.mask.sparse, norm_pix_loss=cfg.loss.norm_pix,
                         decoder_blocks=RESENC.section(cfg.model).decoder_blocks)
    except ValueError as e:  # block size vs image size / stride: a configuration problem
        raise ConfigError(f"mask.block_size {cfg.mask.block_size}: {e}") from None


def _resenc_unet(encoder: Encoder, num_classes: int, cfg: FinetuneConfig) -> nn.Module:
    r = RESENC.section(cfg.model)
    return ResEncUNet(encoder, num_classes, decoder_blocks=r.decoder_blocks, deep_supervision=r.deep_supervision)


RESENC = register(Family(
    name="resenc",
    config_key="resenc",
    config_section=ResEncConfig,
    encoder_kwargs=_resenc_kwargs,
    build_encoder=lambda kw, drop_path: ResEncEncoder(**kw, drop_path=drop_path),
    build_mae=_resenc_mae,
    build_segmenter=_resenc_unet,
    layer_id=lambda name, model: resenc_layer_id(name, len(model.encoder.widths)),
    num_layers=lambda model: len(model.encoder.widths),
    stem_key="stem.conv.weight",
    extra_parts=("decoder",),
))
