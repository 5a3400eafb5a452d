"""A VIS-MAE Swin encoder as timm's ``SwinTransformer`` or as the ``swinViT`` of MONAI's ``SwinUNETR`` (2D), where
they can hold it. timm's keys are medmae's except that a stage's patch merging belongs to the next stage.

SwinUNETR's Swin has the same blocks (window attention with a relative position bias table, patch merging in the
same 2x2 order) but four stages that each end with a patch merging (medmae's last stage has none: SwinUNETR's
fifth-level merge stays at MONAI's initialisation), a LayerNorm after the patch embedding only with
``patch_norm=True``, and stage outputs normalised without affine parameters (medmae's final ``norm`` is dropped).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

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

_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def swinunetr_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """medmae Swin keys -> ``SwinUNETR.swinViT`` keys; and the medmae keys SwinUNETR has no place for."""
    out, dropped = {}, []
    for k, v in state.items():
        m = _LAYER.match(k)
        if m:
            rest = m.group(2).replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
            out[f"layers{int(m.group(1)) + 1}.0.{rest}"] = v
        elif k.startswith("patch_embed."):
            out[k] = v
        else:
            dropped.append(k)
    return out, dropped


def export_monai_swinunetr(src: ExportSource, out: Path) -> ExportReport:
    """The encoder into ``SwinUNETR(spatial_dims=2, patch_norm=True)``; the decoder is trained in MONAI."""
    from monai.networks.nets import SwinUNETR

    fmt = "monai-swinunetr"
    require(src.arch == "swin", fmt, src, f"SwinUNETR holds Swin encoders, this one is {src.arch!r}")
    enc = src.encoder
    p = enc.patch_size[0]
    require(len(enc.depths) == 4, fmt, src, f"SwinUNETR has 4 Swin stages, this encoder has {len(enc.depths)}")
    require(len(set(enc.patch_size)) == 1, fmt, src, f"SwinUNETR needs a square patch, got {list(enc.patch_size)}")
    require(all(s % p**5 == 0 for s in enc.img_size), fmt, src, f"SwinUNETR needs an input divisible by "
            f"patch_size**5 = {p**5} (it merges patches 5 times), this encoder's is {list(enc.img_size)}")
    require(enc.stage_dims[0] % 12 == 0, fmt, src, f"SwinUNETR's feature_size must be divisible by 12, this "
            f"encoder's embed_dim is {enc.stage_dims[0]}")
    _windows_fit(fmt, src, "SwinUNETR pads windows without masking the padding and shrinks small windows with "
                 "another bias")
    report = ExportReport(fmt, "monai.networks.nets.SwinUNETR", src.path)
    seg_classes = int(src.task["num_outputs"]) if src.task and src.task.get("task") == "seg" else None
    kwargs = {"in_channels": enc.in_channels, "out_channels": seg_classes or 2, "patch_size": p,
              "depths": list(enc.depths), "num_heads": list(enc.num_heads), "window_size": enc.window_size,
              "qkv_bias": bool(src.encoder_kwargs.get("qkv_bias", True)),
              "mlp_ratio": float(src.encoder_kwargs.get("mlp_ratio", 4.0)), "feature_size": enc.stage_dims[0],
              "spatial_dims": 2, "patch_norm": True, "normalize": True, "downsample": "merging"}
    model = set_layer_norm_eps(SwinUNETR(**kwargs), LN_EPS).eval()
    state, report.dropped = swinunetr_state(enc.state_dict())
    report.filled = filled_from_target(state, model.swinViT, ("relative_position_index",))
    extra = sorted(k for k in model.swinViT.state_dict() if k.startswith("layers4.0.downsample."))
    report.notes += [f"SwinUNETR's fifth-level merge ({', '.join(extra)}) has no medmae counterpart: left at MONAI's "
                     "initialisation", "medmae's final norm is dropped: SwinUNETR normalises each stage's output "
                     "without affine parameters"]
    if seg_classes is None:
        report.notes.append("out_channels=2 is a placeholder: set your number of classes (the decoder is new anyway)")
    full = {f"swinViT.{k}": v for k, v in state.items()}
    report.files = write_model_files(out, src, full, {"library": "monai", "class": report.target, "kwargs": kwargs,
                                           "layer_norm_eps": LN_EPS, "snippet": _snippet()})
    load_report(report, model, state, "swinViT")
    report.strict = not report.unexpected and report.missing == extra
    x = random_input(src.in_channels, src.img_size)
    report.compared, report.input_shape = "every stage's output before merging", list(x.shape)
    ours = [s.blocks[-1] for s in enc.layers]
    theirs = [getattr(model.swinViT, f"layers{i}")[0].blocks[-1] for i in range(1, 5)]
    report.max_abs_diff = max_abs_diff(lambda t: _stage_outputs(ours, enc, t),
                                       lambda t: _stage_outputs(theirs, model.swinViT, t), x, (enc, model))
    return report


def _windows_fit(fmt: str, src: ExportSource, why: str) -> None:
    """Every stage's token map a multiple of the window: then medmae's and the target's windows are the same."""
    enc = src.encoder
    maps = [[g // 2**i for g in enc.grid] for i in range(len(enc.depths))]
    require(all(m % enc.window_size == 0 for mp in maps for m in mp), fmt, src, f"every stage's token map must be a "
            f"multiple of the window {enc.window_size} ({why}), the maps are {maps}")


def timm_swin_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """medmae Swin keys -> timm ``SwinTransformer`` keys: stage i's patch merging is timm's stage i + 1's."""
    out = {}
    for k, v in state.items():
        m = _LAYER.match(k)
        if m and m.group(2).startswith("downsample."):
            k = f"layers.{int(m.group(1)) + 1}.{m.group(2)}"
        out[k] = v
    return out


def export_timm_swin(src: ExportSource, out: Path) -> ExportReport:
    """A Swin encoder (and a fine-tuned classifier's head) as ``timm.models.swin_transformer.SwinTransformer``."""
    fmt = "timm"
    enc = src.encoder
    require(len(set(enc.patch_size)) == 1, fmt, src, f"timm's SwinTransformer needs a square patch, got {list(enc.patch_size)}")
    _windows_fit(fmt, src, "timm shrinks windows larger than a map and builds their bias table for the smaller size")
    report = ExportReport(fmt, "timm.models.swin_transformer.SwinTransformer", src.path)
    state = timm_swin_state(enc.state_dict())
    head, num_classes = classifier_head(src), 0
    if head is not None:
        state.update({"head.fc.weight": head[1], "head.fc.bias": head[2]})
        num_classes, report.reshaped = head[1].shape[0], ["head.fc.weight", "head.fc.bias"] if head[3] else []
    kwargs = {"img_size": list(enc.img_size), "patch_size": enc.patch_size[0], "in_chans": enc.in_channels,
              "num_classes": num_classes, "global_pool": "avg", "embed_dim": enc.stage_dims[0],
              "depths": list(enc.depths), "num_heads": list(enc.num_heads), "window_size": enc.window_size,
              "mlp_ratio": float(src.encoder_kwargs.get("mlp_ratio", 4.0)),
              "qkv_bias": bool(src.encoder_kwargs.get("qkv_bias", True)), "drop_path_rate": 0.0}
    snippet = ("import json, torch, timm.models.swin_transformer as st; from safetensors.torch import load_file\n"
               "b = json.load(open('build.json'))\nmodel = st.SwinTransformer(**b['kwargs'])\n"
               "for m in model.modules():\n    if isinstance(m, torch.nn.LayerNorm): m.eps = b['layer_norm_eps']\n"
               "model.load_state_dict(load_file('model.safetensors'), strict=True)")
    report.files = write_model_files(out, src, state, {"library": "timm", "class": report.target, "kwargs": kwargs,
                                                       "layer_norm_eps": LN_EPS, "snippet": snippet})
    try:
        st = importlib.import_module("timm.models.swin_transformer")
    except Exception as e:  # noqa: BLE001 - timm missing, or its torchvision broken
        report.skipped = f"timm is not importable here ({type(e).__name__}: {e}); pip install 'medmae[timm]'"
        return report
    model = set_layer_norm_eps(st.SwinTransformer(**kwargs), LN_EPS).eval()
    load_report(report, model, state)
    x = random_input(src.in_channels, src.img_size)
    report.input_shape = list(x.shape)
    if head is not None:
        report.compared = "class logits"
        report.max_abs_diff = max_abs_diff(src.task_model, model, x, (src.task_model, model))
    else:
        report.compared = "normed last-stage map (forward_features)"
        report.max_abs_diff = max_abs_diff(lambda t: enc.forward_features(t)[-1], model.forward_features, x,
                                           (enc, model))
    return report


def _stage_outputs(blocks: list[torch.nn.Module], run: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The outputs of ``blocks`` (each stage's last block, (B, H, W, C)) during ``run(x)``, flattened and joined."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda mod, inp, out: seen.append(out.flatten(1))) for b in blocks]
    try:
        run(x)
    finally:
        for h in handles:
            h.remove()
    return torch.cat(seen, 1)


def _snippet() -> str:
    return ("import json, torch; from monai.networks.nets import SwinUNETR; from safetensors.torch import load_file\n"
            "b = json.load(open('build.json'))\nmodel = SwinUNETR(**b['kwargs'])\n"
            "for m in model.modules():\n    if isinstance(m, torch.nn.LayerNorm): m.eps = b['layer_norm_eps']\n"
            "print(model.load_state_dict(load_file('model.safetensors'), strict=False))  # missing: the decoder")
