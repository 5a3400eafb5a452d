"""What every export format shares: the source it starts from, constraint errors, and the files it writes
(``model.safetensors``, ``build.json``: how to build the target, ``preprocessing.json``: the contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from medmae.errors import ConfigError, ExportError, environment_problem
from medmae.models.heads import Classifier

LN_EPS = 1e-6  # medmae's LayerNorms; MONAI and timm's Swin build theirs with 1e-5 (set after construction)
WEIGHTS_FILE = "model.safetensors"
BUILD_FILE = "build.json"
PREPROCESSING_FILE = "preprocessing.json"


@dataclass
class ExportSource:
    """A medmae encoder (eval mode) with its contract; for a fine-tuning run also its task model and ``task.json``.

    ``encoder_kwargs`` are the encoder's constructor arguments and ``preprocessing`` the contract's preprocessing
    (:meth:`medmae.data.preprocess.Preprocessing.contract`), as in an ``encoder.safetensors`` header; ``parts`` the
    state dicts of further pretrained parts (the ResEnc U-Net ``decoder``: ``decoder.safetensors`` beside the
    encoder, or a fine-tuned U-Net's).
    """

    path: str
    arch: str
    encoder: nn.Module
    encoder_kwargs: dict[str, Any]
    preprocessing: dict[str, Any]
    task_model: nn.Module | None = None
    task: dict[str, Any] | None = None
    parts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def img_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.encoder_kwargs["img_size"])

    @property
    def in_channels(self) -> int:
        return int(self.encoder_kwargs["in_channels"])


def require(ok: bool, fmt: str, src: ExportSource, constraint: str) -> None:
    """Refuse an export that the target cannot hold, naming the constraint (exit code 2)."""
    if not ok:
        raise ExportError(f"{src.path}: cannot export to {fmt}: {constraint}")


def output_dir(out: str | Path) -> Path:
    """The export's folder (created); a file in its place is a configuration error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; exports are written to a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (environment_problem(e, str(out)) or e) from None
    return out


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def write_weights(out: Path, state: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> Path:
    """``model.safetensors``: plain tensors under the target library's key names."""
    path = out / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(path), metadata=meta)
    return path


def write_preprocessing(out: Path, src: ExportSource) -> Path:
    """``preprocessing.json``: how an image must be prepared for the exported model (the run's contract)."""
    return write_json(out / PREPROCESSING_FILE, {
        "input_shape": [src.in_channels, *src.img_size],
        "preprocessing": src.preprocessing,
        "source": src.path,
        "task": src.task,
        "how": "read the image (RAS for volumes), resample to `spacing`, resize to `resize`, apply `intensity`, "
               "then centre-crop or pad to input_shape; medmae.load_encoder(...).preprocess does all of it",
    })


def set_layer_norm_eps(model: nn.Module, eps: float) -> nn.Module:
    """Give every LayerNorm of a target model medmae's epsilon (MONAI builds its LayerNorms with 1e-5)."""
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps
    return model


def fold_probe_norm(weight_kd: torch.Tensor, bias_k: torch.Tensor, norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head after a non-affine BatchNorm (the linear probe) as one linear layer: W (f - m) / s + b
    = (W / s) f + (b - W m / s), exact up to rounding (eval-mode statistics)."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    w = weight_kd * scale[None, :]
    return w, bias_k - w @ norm.running_mean


def classifier_head(src: ExportSource) -> tuple[str, torch.Tensor, torch.Tensor, list[str]] | None:
    """(pool, weight, bias, reshaped keys) of a fine-tuned :class:`~medmae.models.heads.Classifier`'s linear
    head, a linear probe's BatchNorm folded in; None for an encoder or a segmentation model."""
    model = src.task_model
    if not isinstance(model, Classifier):
        return None
    w, b = model.head.weight.detach(), model.head.bias.detach()
    if isinstance(model.feature_norm, nn.BatchNorm1d):
        w, b = fold_probe_norm(w, b, model.feature_norm)
        return model.pool, w, b, ["head.weight", "head.bias"]
    return model.pool, w, b, []


def filled_from_target(state: dict[str, torch.Tensor], target: nn.Module, unused: tuple[str, ...]) -> list[str]:
    """Add the target's own values for its keys that no medmae tensor maps to and whose name contains one of
    ``unused`` (parameters its forward pass does not use); returns those keys."""
    own = target.state_dict()
    filled = sorted(k for k in own if k not in state and any(u in k for u in unused))
    state.update({k: own[k].detach().clone() for k in filled})
    return filled


def write_model_files(out: Path, src: ExportSource, state: dict[str, torch.Tensor], build: dict[str, Any]) -> list[str]:
    """``model.safetensors``, ``build.json`` (target class, kwargs, a loading snippet) and ``preprocessing.json``."""
    weights = write_weights(out, state, {"format": build["class"], "source": src.path})
    build = {**build, "weights": weights.name, "source": src.path}
    return [str(weights), str(write_json(out / BUILD_FILE, build)), str(write_preprocessing(out, src))]
