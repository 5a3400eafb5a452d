"""Load a pretrained encoder into a task model: contract checks, safe adaptations and a load report.

Sources: a medmae pretraining run directory, a medmae ``encoder.safetensors`` export, or a ViT checkpoint from
timm / facebookresearch-mae (``.pth``/``.pt``/``.bin``/``.safetensors``, e.g. ImageNet or MAE weights).
Safe adaptations (logged): position-embedding interpolation to a new grid, input-channel adaptation of the
patch embedding, sin-cos tables loaded into learnable embeddings. Anything else that differs is an error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from medmae.export import ExportError, read_contract
from medmae.errors import ContractError
from medmae.safe_load import refusal_reason

log = logging.getLogger(__name__)

CONTRACT_FIELDS = ("spatial_dims", "patch_size", "intensity", "orientation", "spacing")
_FOREIGN_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "vit.")
_FOREIGN_DROP = ("decoder", "mask_token", "head.", "fc_norm.", "pre_logits")


@dataclass
class EncoderSource:
    path: str
    state: dict[str, torch.Tensor]
    contract: dict[str, Any] | None
    kind: str  # "medmae" or "foreign"


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    adaptations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        lines = [f"encoder weights from {self.source}: {len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.reshaped)} reshaped"]
        lines += [f"  adapted: {a}" for a in self.adaptations]
        if self.missing:
            lines.append(f"  missing (left at their initialisation): {', '.join(self.missing[:12])}"
                         + (" ..." if len(self.missing) > 12 else ""))
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {', '.join(self.unexpected[:12])}" + (" ..." if len(self.unexpected) > 12 else ""))
        return "\n".join(lines)


def read_encoder_source(init: str | Path) -> EncoderSource:
    """Find and read the encoder weights named by ``--init``."""
    if not str(init).strip():
        raise ExportError("--init is empty: give 'scratch', a pretraining run directory or an encoder file")
    path = Path(init)
    if path.is_dir():
        export = path / "export" / "encoder.safetensors"
        if (path / "task.json").is_file():
            raise ExportError(f"{path}: a fine-tuning run; --init takes a pretraining run directory or an encoder file")
        if not export.is_file():
            raise ExportError(f"{path}: no export/encoder.safetensors (is this a finished `medmae pretrain` run?)")
        path = export
    if not path.is_file():
        raise ExportError(f"{path}: no such encoder file or run directory")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ExportError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        if "medmae_contract" in meta:
            return EncoderSource(str(path), state, read_contract(path), "medmae")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle errors come in many types
            raise ExportError(
                f"{path}: cannot be loaded as plain weights ({type(e).__name__}: {refusal_reason(e)}). medmae only "
                "loads tensors (weights_only=True); re-save the state dict: torch.save(ckpt['model'], 'weights.pth')"
            ) from None
        state = _unwrap_state(obj, path)
    state = _strip_foreign(state)
    if "patch_embed.proj.weight" not in state or not any(k.startswith("blocks.") for k in state):
        raise ExportError(f"{path}: not a medmae encoder export, nor a timm / MAE ViT checkpoint "
                          "(no patch_embed.proj.weight / blocks.* keys)")
    return EncoderSource(str(path), state, None, "foreign")


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "model_state", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ExportError(f"{path}: no state dict of tensors found")
    return obj


def _strip_foreign(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in _FOREIGN_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(_FOREIGN_DROP):
            continue
        out[k] = v
    return out


def check_contract(contract: dict[str, Any], *, arch: str, preprocessing: dict[str, Any],
                   allow: tuple[str, ...] = ()) -> list[str]:
    """Compare a medmae export's contract with the fine-tuning setting.

    Returns notes on the differences that ``allow`` permits; raises :class:`ContractError` listing the others.
    Input channels and image size are not checked here: they are adapted (see :func:`adapt_state`).
    """
    theirs = dict(contract.get("preprocessing", {}))
    enc = contract.get("encoder", {})
    theirs.setdefault("patch_size", enc.get("patch_size"))
    mine = dict(preprocessing)
    problems, allowed = [], []
    if contract.get("arch") != arch:
        problems.append(f"arch: encoder is {contract.get('arch')!r}, model is {arch!r}")
    for key in CONTRACT_FIELDS:
        a, b = theirs.get(key), mine.get(key)
        if key == "spacing" and (a is None or b is None):
            continue
        if key == "intensity" and isinstance(a, list) and any(_norm(x) == _norm(b) for x in a):
            continue  # a pool pretrained with several presets: the fine-tuning one must be among them
        if _norm(a) != _norm(b):
            (allowed if key in allow else problems).append(f"{key}: encoder {a!r}, fine-tuning {b!r}")
    if problems:
        raise ContractError("pretrained encoder does not match the fine-tuning setting:\n  " + "\n  ".join(problems)
                            + "\n(fix the fine-tuning config, or allow a difference with --set init.allow_mismatch=[field])")
    return allowed


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _norm(x)) for k, x in v.items()))
    if isinstance(v, float):
        return round(v, 6)
    return v


def adapt_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Patch-embedding kernel (D, C_src, *p) -> (D, C_dst, *p) that gives the same response to a grey image
    repeated over the channels: sum over the source channels, spread evenly over the new ones."""
    total = weight.sum(dim=1, keepdim=True)
    return (total / in_channels).expand(-1, in_channels, *weight.shape[2:]).clone()


def interpolate_pos_embed(pos_1ld: torch.Tensor, src_grid: tuple[int, ...], dst_grid: tuple[int, ...]) -> torch.Tensor:
    """Resample a (1, L, D) position table from one token grid to another (bicubic 2D, trilinear 3D)."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_1ld
    d = pos_1ld.shape[-1]
    grid = pos_1ld.reshape(1, *src_grid, d).movedim(-1, 1).float()
    mode = "bicubic" if len(src_grid) == 2 else "trilinear"
    out = F.interpolate(grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    return out.movedim(1, -1).reshape(1, math.prod(dst_grid), d).to(pos_1ld.dtype)


def adapt_state(src: EncoderSource, encoder: nn.Module, report: LoadReport,
                stem_key: str = "patch_embed.proj.weight") -> dict[str, torch.Tensor]:
    """Convert a source state dict to the target encoder's keys and shapes."""
    state = dict(src.state)
    target = encoder.state_dict()
    pos = state.get("pos_embed")
    if pos is not None:
        n_src = pos.shape[1]
        src_grid = None
        if src.contract is not None:
            e = src.contract["encoder"]
            src_grid = tuple(s // p for s, p in zip(e["img_size"], e["patch_size"]))
        else:
            dims = encoder.spatial_dims
            if not _is_perfect_power(n_src, dims) and _is_perfect_power(n_src - 1, dims):
                cls_pos, pos = pos[:, :1], pos[:, 1:]
                if "cls_token" in state:
                    state["cls_token"] = state["cls_token"] + cls_pos
                report.adaptations.append("cls slot of pos_embed folded into cls_token")
            if not _is_perfect_power(pos.shape[1], dims):
                raise ContractError(f"{src.path}: cannot infer the token grid of pos_embed with {pos.shape[1]} tokens")
            src_grid = (round(pos.shape[1] ** (1 / dims)),) * dims
        if tuple(src_grid) != tuple(encoder.grid):
            pos = interpolate_pos_embed(pos, src_grid, encoder.grid)
            report.adaptations.append(f"pos_embed interpolated from grid {tuple(src_grid)} to {tuple(encoder.grid)}")
            report.reshaped.append("pos_embed")
        state["pos_embed"] = pos
    w = state.get(stem_key)
    if w is not None and stem_key in target:
        want = target[stem_key].shape
        if tuple(w.shape[2:]) != tuple(want[2:]):
            raise ContractError(f"{src.path}: {stem_key} kernel {tuple(w.shape[2:])} differs from the model's {tuple(want[2:])}")
        if w.shape[1] != want[1]:
            state[stem_key] = adapt_channels(w, want[1])
            report.adaptations.append(f"{stem_key} adapted from {w.shape[1]} to {want[1]} input channels")
            report.reshaped.append(stem_key)
    return state


def _is_perfect_power(n: int, dims: int) -> bool:
    return n > 0 and round(n ** (1 / dims)) ** dims == n


def load_encoder_weights(encoder: nn.Module, src: EncoderSource, *, stem_key: str = "patch_embed.proj.weight") -> LoadReport:
    """Load ``src`` into ``encoder`` (non-strict, shapes checked) and report what happened."""
    report = LoadReport(src.path)
    state = adapt_state(src, encoder, report, stem_key)
    target = encoder.state_dict()
    usable = {}
    for k, v in state.items():
        if k not in target:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            raise ContractError(f"{src.path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(target[k].shape)} "
                                "(a different encoder size?)")
        else:
            usable[k] = v
    if not usable:
        raise ContractError(f"{src.path}: no tensor matches the encoder (0 of {len(target)} keys loaded)")
    encoder.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in target if k not in usable)
    return report
