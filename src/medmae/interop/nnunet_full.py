"""The whole ResEnc U-Net (encoder and pretrained decoder, and a fine-tuned U-Net's segmentation heads) as
``dynamic_network_architectures``' ``ResidualUNet``, for nnU-Net's classic ``-pretrained_weights`` path.

medmae's decoder is nnU-Net's ``UNetResDecoder`` body (transposed convolution, skip concatenation, residual
blocks), which ``ResidualUNet`` has and ``ResidualEncoderUNet`` (plain-convolution decoder) has not. nnU-Net's
classic path loads every tensor of the network but the segmentation layers, so the plans must describe exactly
this ``ResidualUNet`` (``build.json``: ``residual_unet``).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from medmae.errors import environment_problem
from medmae.interop.common import BUILD_FILE, ExportSource, write_json
from medmae.interop.nnunet import REQUIRES_IMPORT, arch_kwargs, build_network, dna_state
from medmae.interop.report import ExportReport, max_abs_diff, random_input
from medmae.models.resenc import ResEncDecoder

RESUNET_CLASS = "dynamic_network_architectures.architectures.unet.ResidualUNet"
FULL_FILE = "residual_unet_checkpoint.pth"
_UP = re.compile(r"^ups\.(\d+)\.(\w+)$")
_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(conv1|conv2|skip\.1)\.(conv|norm)\.(\w+)$")


def decoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """medmae ``ResEncDecoder`` keys -> ``ResidualUNet`` decoder keys (aliases included). A decoder block never
    pools, so medmae's ``skip.1`` (after an identity) is ``skip.0`` there."""
    out = {}
    for k, v in state.items():
        up, block = _UP.match(k), _BLOCK.match(k)
        if up:
            out[f"decoder.transpconvs.{up.group(1)}.{up.group(2)}"] = v
            continue
        if not block:
            raise ValueError(f"ResEnc decoder key {k!r} has no place in {RESUNET_CLASS}")
        stage, j, part, kind, param = block.groups()
        base = f"decoder.stages.{stage}.blocks.{j}.{'skip.0' if part == 'skip.1' else part}"
        for name in (f"{base}.{kind}.{param}", f"{base}.all_modules.{0 if kind == 'conv' else 1}.{param}"):
            out[name] = v
    return out


def head_state(model: torch.nn.Module, n_levels: int) -> dict[str, torch.Tensor]:
    """A fine-tuned ``ResEncUNet``'s 1x1 heads as ``decoder.seg_layers`` (deepest first; one head: the last)."""
    heads = list(model.heads)
    first = n_levels - len(heads)
    return {f"decoder.seg_layers.{first + i}.{p}": v for i, h in enumerate(heads) for p, v in h.state_dict().items()}


def decoder_blocks(state: dict[str, torch.Tensor]) -> int:
    """Residual blocks per decoder stage, read off the keys (``stages.0.<j>.``)."""
    return 1 + max(int(m.group(2)) for m in map(_BLOCK.match, state) if m and m.group(1) == "0")


def export_residual_unet(src: ExportSource, out: Path, report: ExportReport) -> None:
    """``residual_unet_checkpoint.pth`` (``network_weights`` of the whole U-Net) with its check in ``report.also``;
    a note instead when there is no pretrained decoder."""
    dec = src.parts.get("decoder")
    if dec is None:
        report.notes.append(f"no pretrained decoder beside {src.path}: only the encoder is exported")
        return
    enc, n = src.encoder, len(src.encoder.widths)
    blocks = decoder_blocks(dec)
    kwargs = {**arch_kwargs(src), "n_conv_per_stage_decoder": [blocks] * (n - 1)}
    weights = {**dna_state(enc.state_dict()), **decoder_state(dec)}
    seg = src.task is not None and src.task.get("task") == "seg" and hasattr(src.task_model, "heads")
    if seg:
        weights.update(head_state(src.task_model, n - 1))
    path = out / FULL_FILE
    try:
        torch.save({"network_weights": weights, "medmae": {"source": src.path, "encoder": src.encoder_kwargs}}, path)
    except OSError as e:
        raise (environment_problem(e, str(path)) or e) from None
    entry: dict[str, Any] = {"file": str(path), "target": RESUNET_CLASS, "max_abs_diff": None,
                             "architecture": {"network_class_name": RESUNET_CLASS, "arch_kwargs": kwargs,
                                              "_kw_requires_import": REQUIRES_IMPORT}}
    report.also.append(entry)
    report.files.append(str(path))
    build_file = out / BUILD_FILE
    build = json.loads(build_file.read_text())
    write_json(build_file, {**build, "residual_unet": {**entry["architecture"], "weights": FULL_FILE}})
    try:
        net_cls = importlib.import_module("dynamic_network_architectures.architectures.unet").ResidualUNet
    except Exception:  # noqa: BLE001 - the main report already says why nothing was checked
        return
    classes = int(src.task["num_outputs"]) if seg else 2
    net = build_network(net_cls, src.in_channels, kwargs, classes)
    result = net.load_state_dict(weights, strict=False)
    entry.update(missing=sorted(result.missing_keys), unexpected=sorted(result.unexpected_keys))
    entry["strict"] = not result.unexpected_keys and all(".seg_layers." in k for k in result.missing_keys)
    x = random_input(src.in_channels, [min(s, 2 * enc.strides[-1]) for s in src.img_size])
    if seg:
        entry["compared"] = "segmentation logits"
        entry["max_abs_diff"] = max_abs_diff(src.task_model, net, x, (src.task_model, net))
        return
    ours = ResEncDecoder(enc, blocks).eval()
    ours.load_state_dict(dec)
    seen: list[torch.Tensor] = []
    hook = net.decoder.stages[-1].register_forward_hook(lambda m, i, o: seen.append(o))

    def theirs(t: torch.Tensor) -> torch.Tensor:
        seen.clear()
        net(t)
        return seen[-1]

    entry["compared"] = "the last decoder stage's output"
    entry["max_abs_diff"] = max_abs_diff(lambda t: ours(enc.forward_features(t))[-1], theirs, x, (enc, ours, net))
    hook.remove()
