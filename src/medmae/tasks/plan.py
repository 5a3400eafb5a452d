"""``medmae plan``: a complete config made from a dataset's fingerprint, sized for a device and a time budget."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medmae.config import ConfigError
from medmae.planning.fingerprint import fingerprint
from medmae.planning.plan import make_plan, parse_budget
from medmae.planning.plan_file import plan_configs, read_plan, write_plan

log = logging.getLogger(__name__)


def plan(source: str | Path, *, task: str, budget: str | float = "30m", device: str = "cpu",
         family: str | None = None, out: str | Path = "plan.yaml", full: bool = False,
         memory_gb: float | None = None, pretrain_budget: str | float | None = None,
         precision: str = "auto") -> tuple[Path, dict[str, Any]]:
    """Fingerprint ``source`` (``data check``; quick unless ``full``), plan ``task`` for ``device`` within ``budget``
    per fine-tuning run and ``pretrain_budget`` (default twice ``budget``) for the MAE in ``precision`` (``auto``:
    bf16 on a GPU, fp32 on a CPU), write the plan to ``out`` and check that it loads; returns the path
    and the plan."""
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    minutes = parse_budget(budget)
    pretrain_minutes = None if pretrain_budget is None else parse_budget(pretrain_budget, "--pretrain-budget")
    fp = fingerprint(str(source), full=full)
    result = make_plan(fp, task=task, budget_minutes=minutes, device=device, family=family,
                       memory_bytes=memory_gb * 2**30 if memory_gb else None, pretrain_minutes=pretrain_minutes,
                       precision=precision)
    path = write_plan(out, result)
    plan_configs(read_plan(path), (task,))  # what was written loads and validates
    log.info("plan written to %s", path)
    return path, result
