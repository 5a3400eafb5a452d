"""A medmae ResEnc encoder as an nnssl-style checkpoint for nnU-Net's fine-tuning path.

nnU-Net fine-tunes nnssl checkpoints (``nnUNetv2_preprocess_like_nnssl`` then ``nnUNetv2_train_pretrained``): a
``checkpoint_final.pth`` holding ``network_weights`` under ``dynamic_network_architectures``' key names and an
``nnssl_adaptation_plan`` (the architecture, the pretraining patch size and spacing, where the stem and encoder
sit in the state dict). nnU-Net builds the network from that plan, loads the stem and the encoder stages strictly
(repeating the stem over more input channels) and trains a new decoder. medmae's ResEnc blocks are
``BasicBlockD`` with the same shapes; only the names differ, and ``dynamic_network_architectures`` registers
each conv / norm twice (``conv`` and ``all_modules.0``, ``norm`` and ``all_modules.1``) and the encoder again
under ``decoder.encoder``: the map writes every alias (the same tensor).
"""

from __future__ import annotations

import importlib
import pydoc
import re
from pathlib import Path
from typing import Any

import torch

from medmae.interop.common import ExportSource, require, write_json, write_preprocessing
from medmae.interop.report import ExportReport, load_report, max_abs_diff, random_input
from medmae.errors import environment_problem

DNA_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
CHECKPOINT_FILE = "checkpoint_final.pth"
PLAN_FILE = "adaptation_plan.json"
KEY_TO_ENCODER, KEY_TO_STEM = "encoder.stages", "encoder.stem"
KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
_STEM = re.compile(r"^stem\.(conv|norm)\.(\w+)$")
_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(conv1|conv2|skip\.1)\.(conv|norm)\.(\w+)$")


def dna_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """medmae ``ResEncEncoder`` keys -> ``ResidualEncoderUNet`` keys, every alias included (same tensors)."""
    out = {}
    for k, v in state.items():
        stem, block = _STEM.match(k), _BLOCK.match(k)
        if stem:
            kind, param = stem.groups()
            base = "encoder.stem.convs.0"
        elif block:
            stage, j, part, kind, param = block.groups()
            base = f"encoder.stages.{stage}.blocks.{j}.{part}"
        else:
            raise ValueError(f"ResEnc encoder key {k!r} has no place in {DNA_CLASS}")
        for name in (f"{base}.{kind}.{param}", f"{base}.all_modules.{0 if kind == 'conv' else 1}.{param}"):
            out[name] = v
    out.update({f"decoder.{k}": v for k, v in list(out.items())})  # the decoder's reference to the encoder
    return out


def arch_kwargs(src: ExportSource) -> dict[str, Any]:
    """``ResidualEncoderUNet`` arguments (plans-file form: classes as import paths) for the encoder's shapes;
    the decoder has nnU-Net's default one convolution per stage."""
    enc, d = src.encoder, src.encoder.spatial_dims
    n = len(enc.widths)
    return {"n_stages": n, "features_per_stage": list(enc.widths), "conv_op": f"torch.nn.modules.conv.Conv{d}d",
            "kernel_sizes": [[enc.kernel_size] * d] * n, "strides": [[1] * d] + [[2] * d] * (n - 1),
            "n_blocks_per_stage": list(enc.blocks), "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{d}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}


REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def adaptation_plan(src: ExportSource) -> dict[str, Any]:
    """The ``nnssl_adaptation_plan`` nnU-Net reads (nnssl's ``AdaptationPlan.serialize()`` layout)."""
    prep = src.preprocessing
    config = {"data_identifier": "medmae", "spacing": prep.get("spacing"), "patch_size": list(src.img_size),
              "normalization_schemes": ["ZScoreNormalization"] * src.in_channels, "medmae_intensity": prep.get("intensity")}
    return {
        "architecture_plans": {"arch_class_name": DNA_CLASS, "arch_kwargs": arch_kwargs(src),
                               "arch_kwargs_requiring_import": REQUIRES_IMPORT},
        "pretrain_plan": {"dataset_name": "medmae", "plans_name": "medmaePlans", "configurations": {"medmae": config}},
        "pretrain_num_input_channels": src.in_channels,
        "recommended_downstream_patchsize": list(src.img_size),
        "key_to_encoder": KEY_TO_ENCODER,
        "key_to_stem": KEY_TO_STEM,
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
        "key_to_lpe": None,
    }


def export_nnunet(src: ExportSource, out: Path) -> ExportReport:
    """``checkpoint_final.pth`` + ``adaptation_plan.json`` for ``nnUNetv2_preprocess_like_nnssl``, checked by
    building ``ResidualEncoderUNet`` from the plan and loading the encoder strictly, as nnU-Net does."""
    fmt = "nnunet"
    require(src.arch == "resenc", fmt, src, f"nnU-Net's ResidualEncoderUNet holds ResEnc encoders, this one is {src.arch!r}")
    enc = src.encoder
    require(enc.spatial_dims == 3, fmt, src, "nnU-Net's fine-tuning from nnssl checkpoints is 3d_fullres only; "
            "this encoder is 2D")
    require(set(enc.patch_size) == {1}, fmt, src, f"ResidualEncoderUNet's stem has stride 1, this encoder's stem has "
            f"stride {list(enc.patch_size)} (model.patch_size == 1)")
    report = ExportReport(fmt, DNA_CLASS, src.path)
    state = dna_state(enc.state_dict())
    plan = adaptation_plan(src)
    report.notes += [
        "checkpoint_final.pth holds the encoder (nnU-Net's nnssl fine-tuning trains a new decoder): "
        "ResidualEncoderUNet's decoder is plain convolutions, medmae's is residual (UNetResDecoder body)",
        f"nnU-Net preprocesses with Z-score normalisation in its own axis order; this encoder was pretrained with "
        f"intensity {src.preprocessing.get('intensity')} in {src.preprocessing.get('orientation') or 'file'} orientation",
    ]
    checkpoint = {"network_weights": state, "nnssl_adaptation_plan": plan, "citations": [],
                  "medmae": {"source": src.path, "encoder": src.encoder_kwargs, "preprocessing": src.preprocessing}}
    path = out / CHECKPOINT_FILE
    try:
        torch.save(checkpoint, path)
    except OSError as e:
        raise (environment_problem(e, str(path)) or e) from None
    build = {"library": "dynamic_network_architectures", "class": DNA_CLASS, "kwargs": plan["architecture_plans"]["arch_kwargs"],
             "architecture": {"network_class_name": DNA_CLASS, "arch_kwargs": arch_kwargs(src),
                              "_kw_requires_import": REQUIRES_IMPORT},
             "weights": CHECKPOINT_FILE, "source": src.path}
    report.files = [str(path), str(write_json(out / PLAN_FILE, plan)), str(write_json(out / "build.json", build)),
                    str(write_preprocessing(out, src))]
    try:
        net_cls = importlib.import_module("dynamic_network_architectures.architectures.unet").ResidualEncoderUNet
    except Exception as e:  # noqa: BLE001
        report.skipped = (f"dynamic_network_architectures is not importable here ({type(e).__name__}: {e}); "
                          "pip install 'medmae[nnunet]'")
        return report
    net = build_network(net_cls, src.in_channels, arch_kwargs(src))
    encoder_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    load_report(report, net, encoder_state, "encoder")
    report.left_to_target = sum(1 for k in net.state_dict()
                                if k.startswith("decoder.") and not k.startswith("decoder.encoder."))
    x = random_input(src.in_channels, [min(s, 2 * enc.strides[-1]) for s in src.img_size])
    report.compared, report.input_shape = "every encoder stage's output", list(x.shape)
    flat = lambda feats: torch.cat([f.flatten(1) for f in feats], 1)  # noqa: E731
    report.max_abs_diff = max_abs_diff(lambda t: flat(enc.forward_features(t)), lambda t: flat(net.encoder(t)), x,
                                       (enc, net))
    return report


def build_network(net_cls: type, in_channels: int, plan_kwargs: dict[str, Any], num_classes: int = 2) -> torch.nn.Module:
    """A ``dynamic_network_architectures`` U-Net from plans-form kwargs (classes located by import path), as nnU-Net
    builds it."""
    kw = dict(plan_kwargs)
    for key in REQUIRES_IMPORT:
        if kw.get(key) is not None:
            kw[key] = pydoc.locate(kw[key])
    return net_cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kw).eval()
