"""Atomic, verified checkpoints.

Layout: ``checkpoints/step_00000400/{model.safetensors, train_state.pt, MANIFEST.json}`` and a ``LATEST``
pointer. A checkpoint is written into ``step_N.tmp-<pid>``, every file is fsynced, ``MANIFEST.json``
(sha256 + size of every file) is written last, the directory is renamed into place and only then is
``LATEST`` moved and are older checkpoints deleted. Loading verifies the manifest and falls back to the
previous checkpoint when one is truncated or corrupted. Nothing is unpickled beyond tensors and
primitives (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medmae import __version__
from medmae.data.cache import atomic_write_bytes, sha256_file
from medmae.errors import CheckpointError

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def committed_steps(root: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint directories, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def clean_partial(root: Path) -> None:
    """Remove ``*.tmp-*`` leftovers of checkpoints that were being written when a process died."""
    if root.is_dir():
        for p in root.iterdir():
            if ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    metadata: dict[str, str] | None = None,
    keep_last: int = 2,
) -> Path:
    """Commit a checkpoint atomically and return its directory; refuses non-finite weights."""
    bad = [k for k, v in model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to checkpoint step {step}: non-finite values in {bad[:5]}")
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    meta = {"medmae_version": __version__, "step": str(step), **(metadata or {})}
    save_file(tensors, str(tmp / MODEL_FILE), metadata=meta)
    torch.save(train_state, tmp / STATE_FILE)
    files = {}
    for name in (MODEL_FILE, STATE_FILE):
        _fsync_file(tmp / name)
        files[name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
    manifest = {"step": step, "files": files, "created": time.time(), "medmae_version": __version__}
    atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync_dir(tmp)
    old = None
    if final.exists():
        old = root / f"{final.name}.tmp-old-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / LATEST, (final.name + "\n").encode())
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for _, p in committed_steps(root)[keep_last:]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def verify(path: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, OSError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    unlisted = sorted({MODEL_FILE, STATE_FILE} - set(files))
    if unlisted:
        raise CheckpointError(f"{mpath}: does not list {unlisted}, so they cannot be verified")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(f"{f}: truncated or changed ({size} bytes, manifest says {info['size']})")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{f}: sha256 mismatch (corrupted)")


def find_latest_valid(root: Path) -> Path | None:
    """Newest checkpoint that verifies; corrupted ones are reported and skipped."""
    for _, path in committed_steps(root):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            log.warning("checkpoint %s is unusable, falling back to an older one: %s", path, e)
    return None


@dataclass
class Loaded:
    path: Path
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any]
    metadata: dict[str, str]


def load_checkpoint(path: Path) -> Loaded:
    """Verify and load a checkpoint directory (weights via safetensors, state with ``weights_only=True``)."""
    verify(path)
    from safetensors import safe_open

    with safe_open(str(path / MODEL_FILE), "pt") as f:
        metadata = f.metadata() or {}
    model_state = load_file(str(path / MODEL_FILE))
    try:
        train_state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path / STATE_FILE}: holds objects other than tensors and primitives, "
                              f"refusing to unpickle them ({_unpickler_reason(e)})") from None
    return Loaded(path, model_state, train_state, metadata)


def _unpickler_reason(err: Exception) -> str:
    """The one line of torch's long ``weights_only`` error that says what was refused."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    found = next((ln for ln in lines if "WeightsUnpickler error:" in ln), lines[0] if lines else type(err).__name__)
    return found.split("WeightsUnpickler error:")[-1].split(". Please use")[0].strip()


def resolve_resume(root: Path, resume: str | None) -> Path | None:
    """``None``: start fresh; ``"auto"``: newest valid checkpoint if any; a path: that checkpoint (must verify)."""
    if resume is None:
        return None
    if resume == "auto":
        found = find_latest_valid(root)
        if found is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", root)
        return found
    path = Path(resume)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.is_dir() and not (path / MANIFEST).exists():
        found = find_latest_valid(path)
        if found is None:
            raise CheckpointError(f"{path}: no valid checkpoint to resume from")
        return found
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint to resume from does not exist")
    verify(path)
    return path
