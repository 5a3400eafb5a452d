"""What a run continues from (``--resume``), and putting it back: weights, optimizer state, RNG states.

``--resume auto`` takes the newest checkpoint of the run directory that verifies and loads. Newer ones that do
not are never deleted: they are moved to ``checkpoints/quarantine/`` (never picked, never pruned) with a
warning. When checkpoints exist but none is usable, the run refuses rather than start from scratch over them.
A checkpoint of another run is only resumed into a run directory without checkpoints of its own.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmae.engine import checkpoint as ckpt
from medmae.errors import CheckpointError
from medmae.run_layout import checkpoints_dir

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"


def quarantine(root: Path, path: Path) -> Path:
    """Move an unusable checkpoint into ``root/quarantine/`` (a new name if one is there already); returns it."""
    folder = root / QUARANTINE
    folder.mkdir(exist_ok=True)
    dest, n = folder / path.name, 1
    while dest.exists():
        n += 1
        dest = folder / f"{path.name}-{n}"
    os.rename(path, dest)
    return dest


def newest_loadable(root: Path) -> tuple[ckpt.Loaded | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies and loads, and ``(path, reason)`` of each newer one that does not."""
    rejected = []
    for _, path in ckpt.committed_steps(root):
        try:
            return ckpt.load_checkpoint(path), rejected
        except CheckpointError as e:
            rejected.append((path, str(e)))
    return None, rejected


def resume_auto(root: Path) -> ckpt.Loaded | None:
    """``--resume auto``: the newest usable checkpoint (unusable newer ones quarantined), None when there is none."""
    loaded, rejected = newest_loadable(root)
    if loaded is None and rejected:
        reasons = "; ".join(why for _, why in rejected)
        raise CheckpointError(f"{root}: none of its {len(rejected)} checkpoints is usable, refusing to start from "
                              f"scratch over them: {reasons}. Move them out of {root} to start afresh, or --resume "
                              "a checkpoint path")
    for path, why in rejected:
        dest = quarantine(root, path)
        log.warning("checkpoint %s is unusable, falling back to an older one (%s); moved to %s: %s",
                    path, loaded.path.name, dest, why)
    if loaded is None:
        log.info("--resume auto: no checkpoint in %s, starting from scratch", root)
    return loaded


def resolve_path(root: Path, resume: str | Path) -> Path:
    """The checkpoint directory named by ``--resume PATH`` (a ``step_N`` folder, a ``checkpoints/`` folder or a run
    directory); one of another run only into a run directory without checkpoints."""
    path = Path(resume)
    if path.is_dir() and checkpoints_dir(path).is_dir():
        path = checkpoints_dir(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint to resume from does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; --resume takes a checkpoint directory (step_N), a checkpoints/ "
                              "folder or a run directory")
    if not ckpt.is_step_dir(path) and not (path / ckpt.MANIFEST).exists():
        found = ckpt.find_latest_valid(path)
        if found is None:
            raise CheckpointError(f"{path}: no valid checkpoint to resume from")
        path = found
    own = ckpt.committed_steps(root)
    if own and path.parent.resolve() != root.resolve():
        raise CheckpointError(f"refusing to resume {path} into {root.parent}: that run directory already holds "
                              f"checkpoints of its own ({', '.join(p.name for _, p in own[:3])}) which this would mix "
                              "with or delete; use --resume auto to continue it, or another --run-dir")
    return path


def choose(root: Path, resume: str | None) -> ckpt.Loaded | None:
    """None: start fresh; ``"auto"``: :func:`resume_auto`; a path: that checkpoint, verified and loaded."""
    if resume is None:
        return None
    if resume == "auto":
        return resume_auto(root)
    return ckpt.load_checkpoint(resolve_path(root, resume))


def drop_newer(root: Path, step: int) -> None:
    """Checkpoints newer than the resumed step: removed when they verify (the abandoned continuation of an
    explicit ``--resume`` to an older one), quarantined when they do not."""
    for s, path in ckpt.committed_steps(root):
        if s <= step:
            continue
        try:
            ckpt.verify(path)
        except CheckpointError as e:
            log.warning("%s is newer than the checkpoint this run resumes from and unusable (%s): moved to %s",
                        path, e, quarantine(root, path))
            continue
        log.warning("removing %s: newer than the checkpoint this run resumes from", path)
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ restore


def rng_state() -> dict[str, Any]:
    """torch, NumPy, Python (and CUDA) RNG states as tensors and primitives (``weights_only`` loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(loaded: ckpt.Loaded, model: nn.Module, optimizer: torch.optim.Optimizer, rank: int,
            world_size: int, load_optimizer: Callable[[torch.optim.Optimizer, dict], None] | None = None
            ) -> tuple[int, int]:
    """Put a checkpoint back into the model, the optimizer (``load_optimizer``, default its ``load_state_dict``;
    FSDP shards the consolidated state) and the RNGs; returns ``(step, skipped_steps)``."""
    ckpt.load_model_state(model, loaded.model_state, loaded.path / ckpt.MODEL_FILE)
    st, state_file = loaded.train_state, loaded.path / ckpt.STATE_FILE
    try:
        (load_optimizer or type(optimizer).load_state_dict)(optimizer, st["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{state_file}: its optimizer state does not fit this run ({type(e).__name__}: {e}); "
                              "it was written with other optim.* settings or another model") from None
    rngs = st["rng"]
    if len(rngs) != world_size:
        log.warning("resuming a %d-process run with %d processes: not bit-exact", len(rngs), world_size)
    try:
        set_rng_state(rngs[min(rank, len(rngs) - 1)])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{state_file}: unusable RNG state ({type(e).__name__}: {e})") from None
    return int(st["step"]), int(st.get("skipped_steps", 0))
