"""The data loader's state in a checkpoint: what the order of the samples depends on, checked on resume.

The order is a pure function of (seed, epoch) over the list of cases (:class:`medmae.data.dataset.EpochBatchSampler`),
so the position in it is the step number. What else it depends on (the cases, their sampling weights, the
global batch) is recorded with each checkpoint; resuming on anything else is not bitwise exact and says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from itertools import islice
from typing import Any

log = logging.getLogger(__name__)


def digest(values: Iterable[Any] | None, chunk: int = 65536) -> str | None:
    """sha256 of a list (case ids, sampling weights) as a JSON list of strings; None for None. Hashed a chunk at
    a time (the same bytes as one ``json.dumps``), so a pool of millions is never one string in memory."""
    if values is None:
        return None
    h, items, sep = hashlib.sha256(b"["), iter(values), b""
    while part := [str(v) for v in islice(items, chunk)]:
        h.update(sep + json.dumps(part)[1:-1].encode())
        sep = b", "
    h.update(b"]")
    return h.hexdigest()


def loader_state(step: int, steps_per_epoch: int, global_batch: int, seed: int, cases: str | None,
                 weights: str | None, order: str = "epoch-permutation") -> dict[str, Any]:
    """The sampler's position (epoch, batch in the epoch) and what its order is a function of (``order``: the
    global permutation, or shard windows with the sha256 of the cases' shards)."""
    return {"order": order, "epoch": step // steps_per_epoch, "batch": step % steps_per_epoch,
            "steps_per_epoch": steps_per_epoch, "global_batch": global_batch, "seed": seed, "cases_sha256": cases,
            "weights_sha256": weights}


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The fields that differ between the checkpoint's loader state and this run's (logged as a warning)."""
    if not saved:
        return []
    keys = ("order", "epoch", "batch", "steps_per_epoch", "global_batch", "seed", "cases_sha256", "weights_sha256")
    changed = [k for k in keys if saved.get(k) != now.get(k)]
    if changed:
        log.warning("the data differs from the checkpoint's (%s): the resumed run does not repeat the samples of an "
                    "uninterrupted one", ", ".join(f"{k} {saved.get(k)} -> {now.get(k)}" for k in changed))
    return changed
