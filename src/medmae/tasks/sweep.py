"""``medmae sweep``: label-efficiency grid (fractions x seeds x initialisations [x folds]), resumable.

Every cell is an ordinary fine-tuning run under ``W/cells/<cell>/`` followed by an evaluation. A cell whose
``eval/test/summary.json`` (older sweeps: ``eval/summary.json``) exists is done and is not rerun; an interrupted one continues from its checkpoint. All
cells share the held-out split (``eval.split_seed`` is fixed), the label subset and the training seed vary
with the seed, so every initialisation sees exactly the same cases at each (fraction, seed, fold): the
comparison with scratch is paired. Under ``train.max_minutes`` the later cells of a (fraction, seed, fold) take the
step time its first cell measured where their step costs the same (the MAE arm after scratch: the same network),
so those arms get the same step count; a baseline network measures its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medmae.engine.budget import read_budget
from medmae.errors import ConfigError
from medmae.models.monai_nets import PREFIX, baseline_name, is_baseline
from medmae.report import CELLS_DIR, collect, find_summary, read_sweep, write_report, write_sweep
from medmae.tasks.evaluate import evaluate
from medmae.tasks.finetune import finetune
from medmae.tasks.run_dir import output_dir

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.8, 1.0)
KFOLD_METHOD = "StratifiedGroupKFold"  # how --folds are made (recorded in sweep.json; older sweeps: round-robin)


@dataclass(frozen=True)
class Cell:
    task: str
    fraction: float
    seed: int
    init_name: str
    init: str
    fold: int | None

    @property
    def name(self) -> str:
        fold = f"_fold{self.fold}" if self.fold is not None else ""
        return f"{self.task}_frac{self.fraction:g}_seed{self.seed}_{self.init_name}{fold}"


def init_names(inits: Sequence[str]) -> list[tuple[str, str]]:
    """Readable, unique names for the initialisations ('scratch', a run dir's name, a file's stem)."""
    out, seen = [], set()
    for init in inits:
        base = "scratch" if init == "scratch" else f"baseline-{init[len(PREFIX):]}" if is_baseline(init) else \
            (Path(init).name if Path(init).is_dir() else Path(init).stem)
        name, k = base, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        out.append((name, init))
    return out


def grid(task: str, inits: Sequence[str], fractions: Sequence[float], seeds: Sequence[int],
         folds: int | None) -> list[Cell]:
    """All cells, ordered so that every initialisation of a (fold, fraction, seed) runs back to back."""
    if not inits:
        raise ConfigError("a sweep needs at least one --init (e.g. scratch and a pretraining run)")
    if any(not str(i).strip() for i in inits):
        raise ConfigError("--init is empty: give 'scratch', a pretraining run directory or an encoder file")
    if not fractions:
        raise ConfigError("--fractions: no label fraction given (e.g. --fractions 0.1,0.5,1.0)")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"label fractions must be in (0, 1], got {bad}")
    fold_list: list[int | None] = list(range(folds)) if folds else [None]
    return [Cell(task, float(f), int(s), name, init, k) for k in fold_list for f in fractions for s in seeds
            for name, init in init_names(inits)]


def select_folds(cells: Sequence[Cell], folds: int | None, only_folds: Sequence[int] | None) -> list[Cell]:
    """The cells of the folds asked for (all without ``only_folds``); a fold outside ``0..folds-1`` is an error."""
    if not only_folds:
        return list(cells)
    if not folds:
        raise ConfigError("--fold needs --folds K (k-fold cross-validation)")
    bad = [k for k in only_folds if not 0 <= k < folds]
    if bad:
        raise ConfigError(f"--fold {bad[0]}: folds are 0..{folds - 1} with --folds {folds}")
    return [c for c in cells if c.fold in set(only_folds)]


def cell_overrides(cell: Cell, folds: int | None) -> list[str]:
    out = [f"data.label_fraction={cell.fraction}", f"train.seed={cell.seed}", f"data.label_seed={cell.seed}"]
    if folds:
        out += [f"eval.folds={folds}", f"eval.fold={cell.fold}"]
    return out


def sweep(
    *,
    task: str,
    inits: Sequence[str],
    run_dir: str | Path,
    preset: str | None = None,
    config: str | Path | None = None,
    data: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int | Sequence[int] = 3,
    folds: int | None = None,
    overrides: Iterable[str] = (),
    max_steps: int | None = None,
    report: bool = True,
    plan: str | Path | None = None,
    only_folds: Sequence[int] | None = None,
) -> Path:
    """Run (or continue) the grid; writes ``results.csv`` and ``sweep.json`` and, with ``report``, the report.
    ``inits`` may name MONAI baselines (``baseline:NAME``), trained from scratch on the same cells; ``plan``: a
    ``medmae plan`` file instead of ``config`` / ``preset``; ``only_folds``: run only these folds' cells now (the
    grid and its folds stay the same; a later call continues with the others)."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if plan is not None and (config is not None or preset is not None):
        raise ConfigError("give one of --config, --preset or --plan")
    for i in inits:
        if is_baseline(str(i)):
            baseline_name(str(i), task)  # an unknown name fails before any cell runs
    cells = grid(task, [str(i) for i in inits], fractions, seed_list, folds)
    to_run = select_folds(cells, folds, only_folds)
    missing = [str(i) for i in inits if str(i) != "scratch" and not is_baseline(str(i)) and not Path(i).exists()]
    if missing:
        raise ConfigError(f"--init {missing[0]}: no such encoder file or run directory")
    run_dir = output_dir(run_dir, "--run-dir")
    meta = {"task": task, "preset": preset, "config": str(config) if config else None, "data": str(data) if data else None,
            "inits": dict(init_names([str(i) for i in inits])), "fractions": list(fractions), "seeds": seed_list,
            "folds": folds, "overrides": list(overrides), "max_steps": max_steps, "cells": [c.name for c in cells],
            "plan": str(plan) if plan else None, **({"kfold": KFOLD_METHOD} if folds else {})}
    old = read_sweep(run_dir)
    if old is not None:
        changed = [k for k in ("task", "preset", "data", "overrides", "max_steps") if old.get(k) != meta[k]]
        if changed:
            raise ConfigError(f"{run_dir} holds a sweep with different {changed}; use another --run-dir")
        if folds and old.get("kfold") != KFOLD_METHOD and any(find_summary(d) for d in (run_dir / CELLS_DIR).glob("*")):
            raise ConfigError(f"{run_dir}: its folds were made by an older medmae (round-robin, not {KFOLD_METHOD}); "
                              "new cells would use other folds. Finish it with that version or use another --run-dir")
    write_sweep(run_dir, meta)
    firsts: dict[tuple[int | None, float, int], Path] = {}  # the first cell of each (fold, fraction, seed)
    for i, cell in enumerate(to_run, start=1):
        cell_dir = run_dir / CELLS_DIR / cell.name
        first = firsts.setdefault((cell.fold, cell.fraction, cell.seed), cell_dir)
        if find_summary(cell_dir) is not None:
            continue
        log.info("sweep cell %d/%d: %s", i, len(to_run), cell.name)
        finetune(config, task=task, init=cell.init, preset=preset, data=data, run_dir=cell_dir,
                 overrides=[*overrides, *cell_overrides(cell, folds)], max_steps=max_steps, resume="auto", plan=plan,
                 step_time_from=first if first != cell_dir and read_budget(first) is not None else None)
        evaluate(cell_dir)
        collect(run_dir)  # results.csv is current after every cell
    collect(run_dir)
    if report:
        write_report(run_dir)
    return run_dir

