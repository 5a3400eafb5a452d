"""The sweep directory's own files: ``sweep.json`` (the definition), ``results.csv`` gathered from the cells'
evaluations, and reading a cell's files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from medmae.errors import RunDirError
from medmae.report.arms import LEARNED_COLUMN, cell_learned
from medmae.run_layout import EVAL_DIR, SUMMARY_FILE, eval_split_dir

SWEEP_FILE = "sweep.json"
RESULTS_CSV = "results.csv"
RESULT_COLUMNS = ("task", "fold", "fraction", "seed", "init", "metric", "class", "region", "value", "ci_low", "ci_high", "n",
                  LEARNED_COLUMN)
CELLS_DIR = "cells"


def read_sweep(run_dir: str | Path) -> dict[str, Any] | None:
    """The sweep's definition (``sweep.json``: task, preset, data, inits, fractions, seeds, folds, ...), or None."""
    path = Path(run_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def require_sweep(run_dir: Path) -> dict[str, Any]:
    meta = read_sweep(run_dir)
    if meta is None:
        raise RunDirError(f"{run_dir}: not a sweep directory (no {SWEEP_FILE}; see `medmae sweep`)")
    return meta


def write_sweep(run_dir: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(run_dir) / SWEEP_FILE
    path.write_text(json.dumps(meta, indent=1))
    return path


def find_summary(run_dir: str | Path, split: str = "test") -> Path | None:
    """The evaluation summary of a run's own ``split``: ``eval/<split>/summary.json``, or the single
    ``eval/summary.json`` of runs evaluated by older versions (when it is of that split); None if neither."""
    new = eval_split_dir(run_dir, split) / SUMMARY_FILE
    if new.is_file():
        return new
    old = Path(run_dir) / EVAL_DIR / SUMMARY_FILE
    if old.is_file() and json.loads(old.read_text()).get("split", split) == split:
        return old
    return None


def parse_cell(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Cell coordinates from its folder name (``<task>_frac<f>_seed<s>_<init>[_fold<k>]``)."""
    task, rest = name.split("_frac", 1)
    frac, rest = rest.split("_seed", 1)
    seed, rest = rest.split("_", 1)
    fold = ""
    if meta.get("folds") and "_fold" in rest:
        rest, fold = rest.rsplit("_fold", 1)
    return {"task": task, "fold": fold, "fraction": float(frac), "seed": int(seed), "init": rest}


def finished_cells(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(cell folder, its evaluation summary)`` of every cell evaluated so far, in name order."""
    out = []
    for cell_dir in sorted((run_dir / CELLS_DIR).glob("*")):
        path = find_summary(cell_dir)
        if path is not None:
            out.append((cell_dir, json.loads(path.read_text())))
    return out


def read_cell_json(cell_dir: Path, name: str) -> dict[str, Any] | None:
    """A JSON file of a cell's run directory (``task.json``, ``splits.json``), or None when absent or unreadable."""
    path = cell_dir / name
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def collect(run_dir: str | Path) -> list[dict[str, Any]]:
    """Gather every finished cell's evaluation into the tidy ``results.csv`` (one row per cell and metric, with
    whether the cell's pretraining learned: :data:`~medmae.report.arms.LEARNED_COLUMN`)."""
    run_dir = Path(run_dir)
    meta = require_sweep(run_dir)
    rows = []
    for cell_dir, summary in finished_cells(run_dir):
        cfg = parse_cell(cell_dir.name, meta)
        learned = cell_learned(cell_dir)
        for r in summary["rows"]:
            rows.append({**cfg, "metric": r["metric"], "class": r.get("class", ""), "region": r.get("region", ""),
                         "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
                         LEARNED_COLUMN: learned})
    with (run_dir / RESULTS_CSV).open("w", newline="") as f:
        w = csv.DictWriter(f, RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows


def read_results(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["fraction"] = float(r["fraction"])
        r["seed"] = int(r["seed"])
        for k in ("value", "ci_low", "ci_high"):
            r[k] = float(r[k]) if r[k] not in ("", "nan") else math.nan
        r["n"] = int(r["n"])
    return rows
