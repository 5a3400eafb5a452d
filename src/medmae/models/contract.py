"""The contract of a pretrained encoder: what an ``encoder.safetensors`` export holds besides its weights, how it
is written, read and validated, and the check that a fine-tuning setting is compatible with it.

The contract (JSON under ``medmae_contract`` in the safetensors header) holds:

- ``arch`` and ``encoder``: the family and the encoder's constructor arguments (enough to rebuild it);
- ``preprocessing``: how images were prepared (:meth:`medmae.data.preprocess.Preprocessing.contract`);
- ``pretraining``: provenance (preset, mask, steps, data);
- ``adaptation`` (format version 2): the :class:`AdaptationPlan`, what loading it into another model may adapt
  and how (nnssl's lesson: the checkpoint carries the plan needed to adapt it). Version-1 exports have none;
  their plan is derived from the family (:func:`medmae.models.adapt.plan_of`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from medmae.version import __version__
from medmae.data.cache import atomic_write_bytes
from medmae.errors import ContractError, ExportError, environment_problem

FORMAT = "medmae-encoder"
FORMAT_VERSION = 2  # 2: with ``adaptation``; 1: without (derived from the family when loading)
CONTRACT_FIELDS = ("spatial_dims", "patch_size", "intensity", "orientation", "spacing")
_PART_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a model attribute, and a file name beside the export
_KEY_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)*$")  # "" or "encoder." or "a.b."


# ------------------------------------------------------------------------------------------ adaptation plan


@dataclass(frozen=True)
class PosEmbedPlan:
    """The position table: tensor ``key``, the token ``grid`` it was trained on, whether it may be interpolated to
    another grid, and whether it starts with a class-token slot (timm layout; folded into the class token)."""

    key: str = "pos_embed"
    grid: tuple[int, ...] = ()
    interpolate: bool = True
    cls_slot: bool = False


@dataclass(frozen=True)
class AdaptationPlan:
    """How the tensors of an export go into another model of the same family.

    - ``stem_key``: the input-facing weight; its input channels are adapted to the model's;
    - ``pos_embed``: the position table and its grid (None: the family has none);
    - ``extra_parts``: further exported parts, ``<name>.safetensors`` beside the encoder, loaded into the task
      model's attribute of that name when it has one (the ResEnc U-Net ``decoder``);
    - ``key_prefix``: where the file's tensors sit in medmae's models: the state dict of the submodule at this
      prefix (``encoder.`` in the MAE and in every task model), which is what fine-tuning loads them into.
    """

    stem_key: str
    pos_embed: PosEmbedPlan | None = None
    extra_parts: tuple[str, ...] = ()
    key_prefix: str = "encoder."

    def as_json(self) -> dict[str, Any]:
        pos = None if self.pos_embed is None else {"key": self.pos_embed.key, "grid": list(self.pos_embed.grid),
                                                   "interpolate": self.pos_embed.interpolate,
                                                   "cls_slot": self.pos_embed.cls_slot}
        return {"stem_key": self.stem_key, "pos_embed": pos, "extra_parts": list(self.extra_parts),
                "key_prefix": self.key_prefix}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdaptationPlan:
        """From a contract's ``adaptation`` (checked by :func:`plan_problem` first)."""
        pos = d.get("pos_embed")
        return cls(stem_key=d["stem_key"],
                   pos_embed=None if pos is None else PosEmbedPlan(pos.get("key", "pos_embed"), tuple(pos["grid"]),
                                                                  bool(pos.get("interpolate", True)),
                                                                  bool(pos.get("cls_slot", False))),
                   extra_parts=tuple(d.get("extra_parts", ())), key_prefix=d.get("key_prefix", "encoder."))

    @property
    def module_path(self) -> str:
        """``key_prefix`` as a submodule path (``encoder``; ``""``: the model itself)."""
        return self.key_prefix.rstrip(".")


def plan_problem(plan: Any) -> str | None:
    """What is wrong with a decoded ``adaptation`` mapping, or None."""
    if not isinstance(plan, dict):
        return f"'adaptation' must be a mapping, got {type(plan).__name__}"
    if not isinstance(plan.get("stem_key"), str) or not plan["stem_key"]:
        return f"adaptation.stem_key must be a tensor name, got {plan.get('stem_key')!r}"
    pos = plan.get("pos_embed")
    if pos is not None:
        if not isinstance(pos, dict):
            return f"adaptation.pos_embed must be a mapping or null, got {type(pos).__name__}"
        if not _positive_ints(pos.get("grid")):
            return f"adaptation.pos_embed.grid must be a list of positive integers, got {pos.get('grid')!r}"
        for key, kind in (("key", str), ("interpolate", bool), ("cls_slot", bool)):
            if key in pos and not isinstance(pos[key], kind):
                return f"adaptation.pos_embed.{key} must be a {kind.__name__}, got {pos[key]!r}"
    parts = plan.get("extra_parts", [])
    if not isinstance(parts, list) or not all(isinstance(p, str) and _PART_NAME.match(p) for p in parts):
        return f"adaptation.extra_parts must be a list of part names (letters, digits, '_'), got {parts!r}"
    prefix = plan.get("key_prefix", "encoder.")
    if not isinstance(prefix, str) or not _KEY_PREFIX.match(prefix):
        return f"adaptation.key_prefix must be '' or dotted names ending with '.', got {prefix!r}"
    return None


# ------------------------------------------------------------------------------------------ make / save / read


def make_contract(*, arch: str, encoder: dict[str, Any], preprocessing: dict[str, Any],
                  pretraining: dict[str, Any] | None = None,
                  adaptation: AdaptationPlan | None = None) -> dict[str, Any]:
    """A contract; without ``adaptation`` it is a format-1 contract (loading derives the plan from the family)."""
    contract = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if adaptation is not None else 1,
        "medmae_version": __version__,
        "arch": arch,
        "encoder": encoder,
        "preprocessing": preprocessing,
        "pretraining": pretraining or {},
    }
    if adaptation is not None:
        contract["adaptation"] = adaptation.as_json()
    return contract


def save_encoder(path: str | Path, state: dict[str, torch.Tensor], contract: dict[str, Any]) -> Path:
    """Write weights with the contract in the safetensors header (JSON under ``medmae_contract``); also used for
    the further parts of an export (``{**contract, "part": name}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc, prep = contract["encoder"], contract["preprocessing"]
    metadata = {
        "medmae_contract": json.dumps(contract, sort_keys=True),
        "format": FORMAT,
        "arch": contract["arch"],
        "spatial_dims": str(enc.get("spatial_dims")),
        "patch_size": json.dumps(enc.get("patch_size")),
        "in_channels": str(enc.get("in_channels")),
        "img_size": json.dumps(enc.get("img_size")),
        "intensity": json.dumps(prep.get("intensity")),
        "medmae_version": __version__,
    }
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata)
    try:  # plain writes: a full disk is an OSError naming the file (the temporary file is removed)
        atomic_write_bytes(path, data)
    except OSError as e:
        raise (environment_problem(e, str(path)) or e) from None
    return path


def read_contract(path: str | Path) -> dict[str, Any]:
    """The contract of an export; :class:`ExportError` if the file is not a medmae encoder."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ExportError(f"{path}: not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT or "medmae_contract" not in meta:
        raise ExportError(f"{path}: not a medmae encoder export (no '{FORMAT}' contract in its metadata)")
    return parse_contract(meta["medmae_contract"], path)


def parse_contract(text: str, path: str | Path) -> dict[str, Any]:
    """The ``medmae_contract`` header as a mapping with the fields later stages read; :class:`ExportError`
    naming ``path`` and the field otherwise."""
    try:
        contract = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: its medmae_contract metadata is not valid JSON ({e})") from None
    problem = contract_problem(contract)
    if problem:
        raise ExportError(f"{path}: bad medmae_contract metadata: {problem}")
    return contract


def contract_problem(contract: Any) -> str | None:
    """What is wrong with the shape of a decoded contract, or None."""
    if not isinstance(contract, dict):
        return f"expected a JSON object, got {type(contract).__name__}"
    if not isinstance(contract.get("arch"), str):
        return f"'arch' must be a string, got {contract.get('arch')!r}"
    for key in ("encoder", "preprocessing"):
        if not isinstance(contract.get(key), dict):
            return f"'{key}' must be a mapping, got {type(contract.get(key)).__name__}"
    if not isinstance(contract.get("pretraining", {}), dict):
        return "'pretraining' must be a mapping"
    enc = contract["encoder"]
    for key in ("img_size", "patch_size"):
        if not _positive_ints(enc.get(key)):
            return f"encoder.{key} must be a list of positive integers, got {enc.get(key)!r}"
    if len(enc["img_size"]) != len(enc["patch_size"]):
        return f"encoder.img_size {enc['img_size']} and encoder.patch_size {enc['patch_size']} differ in length"
    if "adaptation" in contract:
        return plan_problem(contract["adaptation"])
    return None


def _positive_ints(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)


# ------------------------------------------------------------------------------------------ compatibility


def check_contract(contract: dict[str, Any], *, arch: str, preprocessing: dict[str, Any],
                   allow: tuple[str, ...] = ()) -> list[str]:
    """Compare a medmae export's contract with the fine-tuning setting.

    Returns notes on the differences that ``allow`` permits; raises :class:`ContractError` listing the others.
    Input channels and image size are not checked here: they are adapted (see :mod:`medmae.models.adapt`).
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
