"""medmae ViT encoders into timm's ``VisionTransformer`` and MONAI's ``ViT`` / ``UNETR``: key maps, constructor
arguments and the constraints each target puts on the encoder.

medmae's ViT keeps timm's parameter names; its position table has no class-token slot (timm:
``no_embed_class=True``) and its LayerNorms use eps 1e-6 (MONAI's default is 1e-5: set after construction).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmae.interop.common import (
    LN_EPS,
    ExportSource,
    classifier_head,
    filled_from_target,
    require,
    set_layer_norm_eps,
    write_model_files,
)
from medmae.interop.report import ExportReport, load_report, max_abs_diff, random_input

MONAI_RENAMES = (("patch_embed.proj.", "patch_embedding.patch_embeddings."),
                 ("pos_embed", "patch_embedding.position_embeddings"),
                 (".attn.proj.", ".attn.out_proj."), (".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
MONAI_UNUSED = ("norm_cross_attn",)  # built by MONAI's TransformerBlock, used only with cross-attention


def _vit_only(fmt: str, src: ExportSource) -> None:
    require(src.arch == "vit", fmt, src, f"{fmt} holds ViT encoders, this one is {src.arch!r}")


def _tokens(src: ExportSource):
    return lambda x: src.encoder.forward_tokens(x)[0]


def _heads(enc: nn.Module) -> int:
    return enc.blocks[0].attn.num_heads


# ------------------------------------------------------------------------------------------------ timm


def timm_kwargs(src: ExportSource, num_classes: int, pool: str) -> dict[str, Any]:
    """``timm.models.vision_transformer.VisionTransformer`` arguments that rebuild the encoder exactly."""
    enc, kw = src.encoder, src.encoder_kwargs
    return {"img_size": list(enc.img_size), "patch_size": list(enc.patch_size), "in_chans": enc.in_channels,
            "num_classes": num_classes, "global_pool": pool, "embed_dim": enc.embed_dim, "depth": enc.depth,
            "num_heads": _heads(enc), "mlp_ratio": float(kw.get("mlp_ratio", 4.0)),
            "qkv_bias": bool(kw.get("qkv_bias", True)), "class_token": enc.cls_token is not None,
            "no_embed_class": True, "fc_norm": False, "pos_embed": "learn", "dynamic_img_size": False}


def export_timm(src: ExportSource, out: Path) -> ExportReport:
    """A 2D ViT as a timm ``VisionTransformer`` state dict (names unchanged) and its kwargs; a fine-tuned
    classifier's head comes along (``global_pool`` 'token' for cls pooling, 'avg' for the mean)."""
    fmt = "timm"
    _vit_only(fmt, src)
    require(src.encoder.spatial_dims == 2, fmt, src, "timm's VisionTransformer is 2D; this ViT is 3D (use monai-vit)")
    state = dict(src.encoder.state_dict())
    report = ExportReport(fmt, "timm.models.vision_transformer.VisionTransformer", src.path)
    head = classifier_head(src)
    pool = "token" if src.encoder.cls_token is not None else "avg"
    num_classes = 0
    if head is not None:
        pool, w, b, report.reshaped = ("token" if head[0] == "cls" else "avg"), *head[1:]
        state.update({"head.weight": w, "head.bias": b})
        num_classes = w.shape[0]
        if report.reshaped:
            report.notes.append("the linear probe's BatchNorm is folded into head.weight / head.bias")
    kwargs = timm_kwargs(src, num_classes, pool)
    snippet = ("import json, timm.models.vision_transformer as vt; from safetensors.torch import load_file\n"
               "b = json.load(open('build.json'))\nmodel = vt.VisionTransformer(**b['kwargs'])\n"
               "model.load_state_dict(load_file('model.safetensors'), strict=True)")
    build = {"library": "timm", "class": report.target, "kwargs": kwargs, "snippet": snippet}
    report.files = write_model_files(out, src, state, build)
    try:
        vt = importlib.import_module("timm.models.vision_transformer")
    except Exception as e:  # noqa: BLE001 - timm missing, or its torchvision broken
        report.skipped = f"timm is not importable here ({type(e).__name__}: {e}); pip install 'medmae[timm]'"
        return report
    model = vt.VisionTransformer(**kwargs).eval()
    load_report(report, model, state)
    x = random_input(src.in_channels, src.img_size)
    if head is not None:
        report.compared, fn = "class logits", src.task_model.eval()
        report.max_abs_diff = max_abs_diff(fn, model, x, (fn, model))
    else:
        report.compared = "normed tokens (forward_features)"
        report.max_abs_diff = max_abs_diff(_tokens(src), model.forward_features, x, (src.encoder, model))
    report.input_shape = list(x.shape)
    return report


# ------------------------------------------------------------------------------------------------ MONAI


def monai_state(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """medmae / timm ViT keys -> MONAI ``ViT`` keys (six renames), under ``prefix``."""
    out = {}
    for k, v in state.items():
        for a, b in MONAI_RENAMES:
            k = k.replace(a, b)
        out[prefix + k] = v
    return out


def monai_vit_kwargs(src: ExportSource) -> dict[str, Any]:
    enc, kw = src.encoder, src.encoder_kwargs
    return {"in_channels": enc.in_channels, "img_size": list(enc.img_size), "patch_size": list(enc.patch_size),
            "hidden_size": enc.embed_dim, "mlp_dim": int(enc.embed_dim * float(kw.get("mlp_ratio", 4.0))),
            "num_layers": enc.depth, "num_heads": _heads(enc), "proj_type": "conv", "pos_embed_type": "learnable",
            "spatial_dims": enc.spatial_dims, "qkv_bias": bool(kw.get("qkv_bias", True))}


def _monai_snippet(cls: str) -> str:
    return ("import json, torch; from monai.networks.nets import " + cls + "; from safetensors.torch import load_file\n"
            "b = json.load(open('build.json'))\nmodel = " + cls + "(**b['kwargs'])\n"
            "for m in model.modules():\n    if isinstance(m, torch.nn.LayerNorm): m.eps = b['layer_norm_eps']\n"
            "model.load_state_dict(load_file('model.safetensors'), strict=" + ("True" if cls == "ViT" else "False") + ")")


def export_monai_vit(src: ExportSource, out: Path) -> ExportReport:
    """The encoder as MONAI's ``ViT``: with a class token as ``classification=True`` (its head: a fine-tuned
    cls-pooling classifier's, else the identity, so the output is the normed class token)."""
    from monai.networks.nets import ViT as MonaiViT

    fmt = "monai-vit"
    _vit_only(fmt, src)
    enc = src.encoder
    report = ExportReport(fmt, "monai.networks.nets.ViT", src.path)
    kwargs = monai_vit_kwargs(src)
    state = monai_state(enc.state_dict())
    report.notes.append("medmae's position table is loaded as MONAI's learnable one "
                        "(patch_embedding.position_embeddings; freeze it to keep a sin-cos table fixed)")
    head = classifier_head(src)
    ours, report.compared = _tokens(src), "normed tokens"
    if head is not None and (head[0] != "cls" or enc.cls_token is None):
        report.notes.append("the fine-tuned head pools the mean of patch tokens, which MONAI's ViT cannot: "
                            "only the encoder is exported")
    if enc.cls_token is not None:
        kwargs.update(classification=True, post_activation="none")
        if head is not None and head[0] == "cls":
            w, b = head[1], head[2]
            report.reshaped = ["classification_head.weight", "classification_head.bias"] if head[3] else []
            ours, report.compared = src.task_model.eval(), "class logits"
        else:
            w, b = torch.eye(enc.embed_dim), torch.zeros(enc.embed_dim)
            report.notes.append("classification_head is the identity (output: the normed class token); "
                                "replace it with your own head")
            ours, report.compared = (lambda t: _tokens(src)(t)[:, 0]), "normed class token"
        kwargs["num_classes"] = w.shape[0]
        state.update({"classification_head.weight": w, "classification_head.bias": b})
    model = set_layer_norm_eps(MonaiViT(**kwargs), LN_EPS).eval()
    report.filled = filled_from_target(state, model, MONAI_UNUSED)
    report.files = write_model_files(out, src, state, {"library": "monai", "class": report.target, "kwargs": kwargs,
                                            "layer_norm_eps": LN_EPS, "snippet": _monai_snippet("ViT")})
    load_report(report, model, state)
    x = random_input(src.in_channels, src.img_size)
    report.input_shape = list(x.shape)
    report.max_abs_diff = max_abs_diff(ours, lambda t: model(t)[0], x, (src.task_model or src.encoder, model))
    return report


def export_monai_unetr(src: ExportSource, out: Path) -> ExportReport:
    """The encoder as the ``vit`` of MONAI's ``UNETR`` (12 blocks, 16-voxel patches, no class token); the UNETR
    decoder is left to MONAI's initialisation and trained there."""
    from monai.networks.nets import UNETR as MonaiUNETR

    fmt = "monai-unetr"
    _vit_only(fmt, src)
    enc = src.encoder
    require(enc.depth == 12, fmt, src, f"MONAI's UNETR has 12 transformer blocks, this ViT has {enc.depth} (depth == 12)")
    require(set(enc.patch_size) == {16}, fmt, src,
            f"MONAI's UNETR uses 16-voxel patches, this ViT uses {list(enc.patch_size)} (patch_size == 16)")
    require(enc.cls_token is None, fmt, src, "MONAI's UNETR has no class token (classification=False), this ViT was "
            "trained with one and its patch tokens depend on it (train with model.cls_token=false)")
    report = ExportReport(fmt, "monai.networks.nets.UNETR", src.path)
    seg_classes = int(src.task["num_outputs"]) if src.task and src.task.get("task") == "seg" else None
    kwargs = {**{k: v for k, v in monai_vit_kwargs(src).items() if k not in ("num_layers", "patch_size", "pos_embed_type")},
              "out_channels": seg_classes or 2, "feature_size": 16, "norm_name": "instance", "res_block": True}
    if seg_classes is None:
        report.notes.append("out_channels=2 is a placeholder: set your number of classes (the decoder is new anyway)")
    else:
        report.notes.append("medmae's UNETR decoder taps blocks 3/6/9, MONAI's 4/7/10: the fine-tuned decoder is "
                            "not exported, only the encoder")
    model = set_layer_norm_eps(MonaiUNETR(**kwargs), LN_EPS).eval()
    state = monai_state(enc.state_dict())
    report.filled = filled_from_target(state, model.vit, MONAI_UNUSED)
    report.notes.append("medmae's position table is loaded as MONAI's learnable one")
    full = {f"vit.{k}": v for k, v in state.items()}
    report.files = write_model_files(out, src, full, {"library": "monai", "class": report.target, "kwargs": kwargs,
                                           "layer_norm_eps": LN_EPS, "snippet": _monai_snippet("UNETR")})
    load_report(report, model, state, "vit")
    x = random_input(src.in_channels, src.img_size)
    report.compared, report.input_shape = "normed tokens of UNETR.vit", list(x.shape)
    report.max_abs_diff = max_abs_diff(_tokens(src), lambda t: model.vit(t)[0], x, (src.encoder, model))
    return report
