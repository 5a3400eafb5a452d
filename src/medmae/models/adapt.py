"""Putting pretrained weights into a model: the adaptation plan and how it is applied.

Sources: a medmae pretraining run directory, a medmae ``encoder.safetensors`` export, or a ViT checkpoint from
timm / facebookresearch-mae (``.pth``/``.pt``/``.bin``/``.safetensors``, e.g. ImageNet or MAE weights).

Every source gets an :class:`~medmae.models.contract.AdaptationPlan` (:func:`plan_of`): the one in its contract,
or for older exports the one its family gives (:func:`family_plan`), or for foreign checkpoints one inferred from
their tensors. Loading follows it: the architecture is adopted from the contract, keys of foreign checkpoints
are converted, the position table is interpolated to the new grid (a class-token slot folded in), the stem is
adapted to the input channels, the extra parts (the ResEnc U-Net decoder) are loaded, and everything is
recorded in a :class:`LoadReport`. Anything else that differs is an error. :func:`export_encoder` writes the
plan; :func:`build_task_model` follows it.
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

from medmae.config import FinetuneConfig, PretrainConfig
from medmae.data.preprocess import Preprocessing
from medmae.errors import ContractError, ExportError, MedmaeError
from medmae.models.contract import (
    AdaptationPlan,
    PosEmbedPlan,
    check_contract,
    make_contract,
    read_contract,
    save_encoder,
)
from medmae.models.registry import Family, build_encoder, build_task_head, encoder_kwargs, family, part_targets
from medmae.safe_load import refusal_reason

log = logging.getLogger(__name__)

_FOREIGN_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "vit.")
_FOREIGN_DROP = ("decoder", "mask_token", "head.", "fc_norm.", "pre_logits")
_FOREIGN_STEM = "patch_embed.proj.weight"  # foreign checkpoints are ViTs


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


# ------------------------------------------------------------------------------------------------ sources


def read_encoder_source(init: str | Path) -> EncoderSource:
    """Find and read the encoder weights named by ``--init`` (foreign keys converted to medmae's)."""
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
    if _FOREIGN_STEM not in state or not any(k.startswith("blocks.") for k in state):
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
    """timm / MAE keys -> medmae's: wrapper prefixes stripped; decoder, mask token and classifier head dropped."""
    out = {}
    for k, v in state.items():
        for p in _FOREIGN_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith(_FOREIGN_DROP):
            continue
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ the plan


def family_plan(fam: Family, encoder: dict[str, Any]) -> AdaptationPlan:
    """The plan a family gives its exports (written by :func:`export_encoder`; derived for version-1 exports)."""
    pos = None
    if fam.pos_embed_key is not None:
        grid = tuple(s // p for s, p in zip(encoder["img_size"], encoder["patch_size"]))
        pos = PosEmbedPlan(key=fam.pos_embed_key, grid=grid, interpolate=True)
    return AdaptationPlan(stem_key=fam.stem_key, pos_embed=pos, extra_parts=fam.extra_parts)


def plan_of(src: EncoderSource, spatial_dims: int) -> AdaptationPlan:
    """The plan that loading ``src`` follows: its contract's; for a version-1 export its family's; for a foreign
    ViT checkpoint inferred from its position table (``spatial_dims``: the target encoder's)."""
    if src.contract is not None:
        if "adaptation" in src.contract:
            return AdaptationPlan.from_json(src.contract["adaptation"])
        return family_plan(family(src.contract["arch"]), src.contract["encoder"])
    pos = src.state.get("pos_embed")
    if pos is None:
        return AdaptationPlan(stem_key=_FOREIGN_STEM, key_prefix="encoder.")
    n, cls_slot = pos.shape[1], False
    if not _is_perfect_power(n, spatial_dims) and _is_perfect_power(n - 1, spatial_dims):
        n, cls_slot = n - 1, True
    if not _is_perfect_power(n, spatial_dims):
        raise ContractError(f"{src.path}: cannot infer the token grid of pos_embed with {n} tokens")
    grid = (round(n ** (1 / spatial_dims)),) * spatial_dims
    return AdaptationPlan(stem_key=_FOREIGN_STEM, pos_embed=PosEmbedPlan("pos_embed", grid, True, cls_slot))


def _is_perfect_power(n: int, dims: int) -> bool:
    return n > 0 and round(n ** (1 / dims)) ** dims == n


# ------------------------------------------------------------------------------------------------ applying it


def adapt_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem kernel (D, C_src, *k) -> (D, C_dst, *k) that gives the same response to a grey image repeated over
    the channels: sum over the source channels, spread evenly over the new ones."""
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


def adapt_state(src: EncoderSource, encoder: nn.Module, plan: AdaptationPlan, report: LoadReport) -> dict[str, torch.Tensor]:
    """The source state dict adapted to the target encoder's shapes as ``plan`` says."""
    state = dict(src.state)
    target = encoder.state_dict()
    pe = plan.pos_embed
    if pe is not None and pe.key in state:
        pos = state[pe.key]
        if pe.cls_slot:
            cls_pos, pos = pos[:, :1], pos[:, 1:]
            if "cls_token" in state:
                state["cls_token"] = state["cls_token"] + cls_pos
            report.adaptations.append(f"cls slot of {pe.key} folded into cls_token")
        dst_grid = tuple(encoder.grid)
        if len(pe.grid) != len(dst_grid) or pos.dim() != 3 or pos.shape[1] != math.prod(pe.grid):
            raise ContractError(f"{src.path}: {pe.key} of shape {tuple(pos.shape)} does not fit the token grid "
                                f"{tuple(pe.grid)} of its adaptation plan, nor the model's grid {dst_grid}")
        if tuple(pe.grid) != dst_grid:
            if not pe.interpolate:
                raise ContractError(f"{src.path}: {pe.key} was trained on the token grid {tuple(pe.grid)}, the model's is "
                                    f"{dst_grid}, and the export's adaptation plan does not allow interpolating it")
            pos = interpolate_pos_embed(pos, tuple(pe.grid), dst_grid)
            report.adaptations.append(f"{pe.key} interpolated from grid {tuple(pe.grid)} to {dst_grid}")
            report.reshaped.append(pe.key)
        state[pe.key] = pos
    key = plan.stem_key
    w = state.get(key)
    if w is not None and key in target:
        want = target[key].shape
        if tuple(w.shape[2:]) != tuple(want[2:]):
            raise ContractError(f"{src.path}: {key} kernel {tuple(w.shape[2:])} differs from the model's {tuple(want[2:])}")
        if w.shape[1] != want[1]:
            state[key] = adapt_channels(w, want[1])
            report.adaptations.append(f"{key} adapted from {w.shape[1]} to {want[1]} input channels")
            report.reshaped.append(key)
    return state


def load_encoder_weights(encoder: nn.Module, src: EncoderSource, plan: AdaptationPlan | None = None) -> LoadReport:
    """Load ``src`` into ``encoder`` following ``plan`` (default :func:`plan_of`), non-strict with shapes checked,
    and report what happened."""
    plan = plan or plan_of(src, encoder.spatial_dims)
    report = LoadReport(src.path)
    state = adapt_state(src, encoder, plan, report)
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


def load_extra_parts(model: nn.Module, parts: tuple[str, ...] | list[str], encoder_file: str | Path,
                     report: LoadReport | None = None) -> list[str]:
    """Load further pretrained parts (``<name>.safetensors`` beside the encoder export, e.g. the ResEnc U-Net
    decoder) into the parts of ``model`` with those names; parts the model lacks are skipped.

    Keys must match in shape (else :class:`ContractError`); keys only one side has are left at their
    initialisation and listed. Returns one note per part, also appended to ``report.adaptations`` (and the
    loaded keys, prefixed with the part name, to ``report.loaded``) when a report is given.
    """
    notes = []
    for name, part in part_targets(model, parts).items():
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


# ------------------------------------------------------------------------------------------------ the two ends


def export_encoder(run_dir: str | Path, mae: nn.Module, cfg: PretrainConfig, preps: list[Preprocessing],
                   step: int, pretraining: dict[str, Any] | None = None) -> Path:
    """``export/encoder.safetensors`` (and one file per extra part) with the contract and its adaptation plan; a
    pool with several intensity presets records all of them. ``pretraining``: more pretraining facts for the
    contract (whether the MAE learned, the plan it was made from)."""
    fam = family(cfg.model.arch)
    contract_prep = preps[0].contract()
    presets = [p.intensity for p in preps]
    if any(i != presets[0] for i in presets):
        contract_prep["intensity"] = [dict(t) for t in {tuple(sorted(i.items())) for i in presets}]
    kwargs = encoder_kwargs(cfg.model)
    plan = family_plan(fam, kwargs)
    contract = make_contract(
        arch=cfg.model.arch,
        encoder=kwargs,
        preprocessing=contract_prep,
        pretraining={"preset": cfg.name, "mask_ratio": cfg.mask.ratio, "mask_kind": cfg.mask.kind,
                     "norm_pix_loss": cfg.loss.norm_pix, "steps": step, "data": cfg.data.path or f"synthetic:{cfg.data.synthetic.kind}",
                     **(pretraining or {})},
        adaptation=plan,
    )
    path = save_encoder(Path(run_dir) / "export" / "encoder.safetensors",
                        mae.get_submodule(plan.module_path).state_dict(), contract)
    for name, part in fam.extra_exports(mae).items():  # e.g. the ResEnc U-Net decoder
        save_encoder(path.with_name(f"{name}.safetensors"), part.state_dict(), {**contract, "part": name})
    return path


def adopt_architecture(cfg: FinetuneConfig, contract: dict[str, Any]) -> None:
    """Take the encoder architecture from a pretrained export; image size and channels stay the fine-tuning
    ones (position embeddings are interpolated, the stem is adapted), and position embeddings follow
    ``model.pos_embed`` (learnable: initialised from the pretrained table). Recorded in ``model.encoder``."""
    cfg.model.arch = contract["arch"]
    keep_own = ("img_size", "in_channels", "pos_embed")
    cfg.model.encoder = {k: v for k, v in contract["encoder"].items() if k not in keep_own}


def build_adopted_encoder(cfg: FinetuneConfig, src: EncoderSource | None) -> nn.Module:
    """The encoder; arguments from an export's contract that do not build one are that file's fault."""
    if src is None or src.contract is None:
        return build_encoder(cfg.model)
    try:
        return build_encoder(cfg.model)
    except MedmaeError:
        raise
    except (TypeError, ValueError) as e:
        raise ExportError(f"{src.path}: the encoder arguments in its medmae_contract do not build a "
                          f"{cfg.model.arch} encoder ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None


def build_task_model(cfg: FinetuneConfig, num_outputs: int, init: str | None) -> tuple[nn.Module, LoadReport | None]:
    """Encoder (pretrained or scratch) + the task head; ``init`` None or 'scratch' means random initialisation.

    A medmae export is checked against the setting (:func:`~medmae.models.contract.check_contract`), its
    architecture adopted, and its weights loaded as its plan says: into the task model's part at
    ``key_prefix``, then the ``extra_parts`` the task model has.
    """
    src = None if init in (None, "scratch") else read_encoder_source(init)
    if src is not None and src.contract is not None:
        prep = Preprocessing.from_config(cfg.data, cfg.model)
        notes = check_contract(src.contract, arch=cfg.model.arch,
                               preprocessing={**prep.contract(), "patch_size": list(cfg.model.patch)},
                               allow=tuple(cfg.init.allow_mismatch))
        for n in notes:
            log.warning("allowed contract difference: %s", n)
        adopt_architecture(cfg, src.contract)
    encoder = build_adopted_encoder(cfg, src)
    model = build_task_head(encoder, num_outputs, cfg)
    if src is None:
        return model, None
    plan = plan_of(src, encoder.spatial_dims)
    try:
        target = model.get_submodule(plan.module_path)
    except AttributeError:
        raise ExportError(f"{src.path}: its adaptation plan puts the encoder at {plan.key_prefix!r}, which the "
                          f"{cfg.model.arch} {cfg.task} model does not have") from None
    report = load_encoder_weights(target, src, plan)
    if src.contract is not None:
        load_extra_parts(model, plan.extra_parts, src.path, report)  # e.g. the ResEnc U-Net decoder
    log.info(report.summary())
    return model, report
