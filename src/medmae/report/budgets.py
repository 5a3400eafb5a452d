"""The training each cell of a sweep got, in its report: steps reached, minutes, the budget, and the cells whose
budget was measured on a busy machine.

Under ``train.max_minutes`` a cell's step count comes from the step time measured when it started, re-checked
once on its own training steps (:mod:`medmae.engine.budget`); a cell started while other work shared the CPUs
gets fewer steps than its neighbours, and the comparison between arms is then one of compute, not of
initialisation. The record is the ``training`` entry of each cell's ``task.json`` (written by ``medmae finetune``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.report.sweep_files import parse_cell, read_cell_json
from medmae.report.tables import md_table, percent
from medmae.run_layout import TASK_FILE


def cell_training(cell_dir: Path) -> dict[str, Any]:
    """The ``training`` record of a cell's ``task.json`` (steps, train_minutes, max_minutes, load_per_cpu,
    cpu_pressure, busy), or ``{}`` when the cell has none (runs of older versions)."""
    task = read_cell_json(cell_dir, TASK_FILE) or {}
    return task.get("training") or {}


def training_rows(cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (init, fraction): cells, mean / min / max steps, mean minutes, the budget, and the busy cells by name."""
    groups: dict[tuple[str, float], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for cell_dir, _ in cells:
        record = cell_training(cell_dir)
        if record.get("steps") is not None:
            cell = parse_cell(cell_dir.name, meta)
            groups[(cell["init"], cell["fraction"])].append((cell_dir.name, record))
    out = []
    for (init, fraction), items in sorted(groups.items()):
        steps = [int(r["steps"]) for _, r in items]
        minutes = [float(r.get("train_minutes", np.nan)) for _, r in items]
        budgets = sorted({r["max_minutes"] for _, r in items if r.get("max_minutes") is not None})
        loads = [r["load_per_cpu"] for _, r in items if r.get("load_per_cpu") is not None]
        pressures = [r["cpu_pressure"] for _, r in items if r.get("cpu_pressure") is not None]
        out.append({"init": init, "fraction": fraction, "n_cells": len(items), "steps_mean": float(np.mean(steps)),
                    "steps_min": min(steps), "steps_max": max(steps), "minutes_mean": float(np.nanmean(minutes)),
                    "max_minutes": budgets, "load_per_cpu_max": max(loads) if loads else None,
                    "cpu_pressure_max": max(pressures) if pressures else None,
                    "busy_cells": [name for name, r in items if r.get("busy")]})
    return out


def markdown(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The report's training section, and a warning for its top when some budget was measured on a busy machine."""
    if not rows:
        return [], []
    busy = [name for r in rows for name in r["busy_cells"]]
    table = md_table(["init", "labels", "cells", "steps (mean)", "steps (min-max)", "minutes (mean)", "budget (min)",
                      "CPU pressure (max)", "load per CPU (max)"],
                     [[r["init"], percent(r["fraction"]), str(r["n_cells"]), f"{r['steps_mean']:.0f}",
                       f"{r['steps_min']}-{r['steps_max']}", f"{r['minutes_mean']:.1f}",
                       ", ".join(f"{m:.3g}" for m in r["max_minutes"]) or "-",
                       "-" if r["cpu_pressure_max"] is None else f"{r['cpu_pressure_max']:.0%}",
                       "-" if r["load_per_cpu_max"] is None else f"{r['load_per_cpu_max']:.2f}"] for r in rows])
    section = ["## Training each cell got", "",
               "Steps reached and minutes of training per arm and labelled fraction. Under a time budget "
               "(`train.max_minutes`) the steps come from the step time measured when a cell started, re-checked "
               "once on its own training steps, so arms of different speed get different step counts; arms of "
               "one network take the step time the first cell of their fraction and seed measured, and get the "
               "same steps. When it was first measured: the CPU pressure "
               "(the share of the last 10 s in which some task waited for a CPU; Linux) and the 1-minute load "
               "average per CPU (which lags).",
               "", table]
    if not busy:
        return section, []
    names = ", ".join(f"`{n}`" for n in busy[:6]) + (f" and {len(busy) - 6} more" if len(busy) > 6 else "")
    warning = [f"**Busy machine:** the budget of {len(busy)} cell(s) ({names}) was measured while other work shared "
               "the CPUs: they got fewer steps than on an idle machine, and comparing them with other cells compares "
               "compute as well as initialisation. Rerun them on an idle machine (or give `max_steps`); see "
               "\"Training each cell got\".", ""]
    return section, warning
