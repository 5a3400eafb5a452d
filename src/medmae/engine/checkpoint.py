"""Atomic, verified checkpoints.

Layout: ``checkpoints/step_00000400/{model.safetensors, train_state.pt, MANIFEST.json}`` and a ``LATEST``
pointer. A checkpoint is serialised in memory, written into ``step_N.tmp-<pid>`` with plain file writes (so a
full disk is an ``OSError``, not a torch ``enforce fail``), every file is fsynced, ``MANIFEST.json`` (sha256 +
size of every file) is written last, the directory is renamed into place and only then is ``LATEST`` moved and
are older checkpoints deleted. Loading verifies the manifest and the safetensors header; nothing is unpickled
beyond tensors and primitives (``torch.load(weights_only=True)``). Choosing what to resume from is
:mod:`medmae.engine.resume`.
"""

from __future__ import annotations

import hashlib
import io
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
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from medmae.version import __version__
from medmae.data.cache import atomic_write_bytes, sha256_file
from medmae.errors import ENVIRONMENT_ERRNOS, CheckpointError, EnvironmentProblem
from medmae.safe_load import refusal_reason

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
CHECKED_FILES = (MODEL_FILE, STATE_FILE)
TRAIN_STATE_KEYS = {"step": int, "optimizer": dict, "rng": list}
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Plain write + fsync: a full disk raises ``OSError(ENOSPC)`` here, where torch's writer would not say so."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None:  # write() and fsync() do not say which file
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def is_step_dir(path: Path) -> bool:
    """A name like ``step_00000400`` (committed, not ``.tmp-``)."""
    return bool(_STEP_DIR.match(path.name))


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


def non_finite_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def serialise(model_state: dict[str, torch.Tensor], train_state: dict[str, Any], meta: dict[str, str]) -> dict[str, bytes]:
    """The bytes of ``model.safetensors`` and ``train_state.pt``."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    buf = io.BytesIO()
    torch.save(train_state, buf)
    return {MODEL_FILE: safetensors_bytes(tensors, metadata=meta), STATE_FILE: buf.getvalue()}


def _save_failed(err: OSError, final: Path, root: Path) -> OSError:
    """A one-line :class:`EnvironmentProblem` for a full disk or a permission problem (else the error itself)."""
    reason = ENVIRONMENT_ERRNOS.get(err.errno or -1)
    if reason is None:
        return err
    latest = root / LATEST
    previous = latest.read_text().strip() if latest.is_file() else "no checkpoint"
    return EnvironmentProblem(f"{final}: {reason} while writing this checkpoint "
                              f"({Path(err.filename).name if err.filename else 'data'}); "
                              f"nothing was committed, {latest} still names {previous}")


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
    bad = non_finite_keys(model_state)
    if bad:
        raise CheckpointError(f"refusing to checkpoint step {step}: non-finite values in {bad[:5]}")
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    old = root / f"{final.name}.tmp-old-{os.getpid()}"
    blobs = serialise(model_state, train_state, {"medmae_version": __version__, "step": str(step), **(metadata or {})})
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, data in blobs.items():
            _write_synced(tmp / name, data)
        files = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in blobs.items()}
        manifest = {"step": step, "files": files, "created": time.time(), "medmae_version": __version__}
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(root)
        atomic_write_bytes(root / LATEST, (final.name + "\n").encode())
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.rename(old, final)
        raise _save_failed(e, final, root) from None
    shutil.rmtree(old, ignore_errors=True)
    for _, p in committed_steps(root)[keep_last:]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` entries of a checkpoint's manifest, each with a text ``sha256`` and an integer ``size``."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: not a checkpoint manifest (a JSON object with 'files' is expected, "
                              f"got {type(manifest).__name__})")
    unlisted = sorted(set(CHECKED_FILES) - set(files))
    if unlisted:
        raise CheckpointError(f"{mpath}: does not list {unlisted}, so they cannot be verified")
    for name in CHECKED_FILES:
        info = files[name]
        ok = isinstance(info, dict) and isinstance(info.get("sha256"), str) \
            and isinstance(info.get("size"), int) and not isinstance(info.get("size"), bool)
        if not ok:
            raise CheckpointError(f"{mpath}: the entry of {name} needs 'sha256' (text) and 'size' (integer), "
                                  f"got {json.dumps(info)[:120]}")
    return files


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file whose header parses and whose tensors lie inside the file."""
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def verify(path: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches the manifest and the weights' header parses."""
    files = read_manifest(path)
    for name in CHECKED_FILES:
        f, info = path / name, files[name]
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(f"{f}: truncated or changed ({size} bytes, manifest says {info['size']})")
        if sha256_file(f) != info["sha256"]:
            raise CheckpointError(f"{f}: sha256 mismatch (corrupted)")
    _check_safetensors_header(path / MODEL_FILE)


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


def load_train_state(path: Path) -> dict[str, Any]:
    """``train_state.pt`` with tensors and primitives only, and the keys a resume needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: holds objects other than tensors and primitives, refusing to unpickle them "
                              f"({refusal_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip or pickle comes in many types
        raise CheckpointError(f"{path}: unreadable train state ({type(e).__name__}: {refusal_reason(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a train state (a dict is expected, got {type(state).__name__})")
    for key, kind in TRAIN_STATE_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    return state


def load_checkpoint(path: Path) -> Loaded:
    """Verify and load a checkpoint directory (weights via safetensors, state with ``weights_only=True``)."""
    verify(path)
    try:
        with safe_open(str(path / MODEL_FILE), "pt") as f:
            metadata = f.metadata() or {}
        model_state = load_file(str(path / MODEL_FILE))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path / MODEL_FILE}: not a readable safetensors file ({e})") from None
    return Loaded(path, model_state, load_train_state(path / STATE_FILE), metadata)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """``model.load_state_dict(state)``, or a :class:`CheckpointError` naming the first mismatched keys and shapes."""
    own = model.state_dict()
    shapes = [f"{k}: {_shape(state[k])} in the checkpoint, {_shape(v)} in the model"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = shapes[:3] + ([f"{len(shapes) - 3} more tensors of other shapes"] if len(shapes) > 3 else [])
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing:
        problems.append(f"missing {missing[:3]}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {unexpected[:3]}" + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
    if problems:
        raise CheckpointError(f"{source}: does not fit this model ({'; '.join(problems)}); it was written by a "
                              "model with other model.* settings")
    model.load_state_dict(state)
