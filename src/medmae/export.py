"""Encoder export: ``encoder.safetensors`` whose metadata carries the contract later stages check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from medmae.version import __version__
from medmae.data.cache import atomic_write_bytes
from medmae.errors import ExportError, environment_problem

FORMAT = "medmae-encoder"
FORMAT_VERSION = 1


def make_contract(*, arch: str, encoder: dict[str, Any], preprocessing: dict[str, Any],
                  pretraining: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medmae_version": __version__,
        "arch": arch,
        "encoder": encoder,
        "preprocessing": preprocessing,
        "pretraining": pretraining or {},
    }


def save_encoder(path: str | Path, state: dict[str, torch.Tensor], contract: dict[str, Any]) -> Path:
    """Write encoder weights with the contract in the safetensors header (JSON under ``medmae_contract``)."""
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
    return None


def _positive_ints(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
