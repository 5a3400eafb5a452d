"""Paired comparisons over test cases: every arm minus scratch in the same cell (fraction, seed, fold), case by case.

With one seed and one split, the comparison over runs has a single pair and no interval; the test cases still
pair up (both arms predicted the same images), so a paired bootstrap over them says whether the difference is
larger than what the choice of test cases explains. Needs a per-case metric (segmentation's Dice, ...): AUROC is
not defined per case, so classification sweeps have no such rows.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.metrics import bootstrap_ci
from medmae.report.sweep_files import parse_cell
from medmae.report.tables import md_table, percent
from medmae.run_layout import PER_CASE_FILE, eval_split_dir


def per_case_means(cell_dir: Path, metric: str) -> dict[str, float]:
    """``{case: mean of metric over its regions}`` from the cell's test ``per_case.csv`` (regions other than
    ``mean``; empty values, i.e. undefined metrics, skipped); empty when the file or the column is missing."""
    path = eval_split_dir(cell_dir, "test") / PER_CASE_FILE
    if not path.is_file():
        return {}
    values: dict[str, list[float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get(metric) not in (None, "") and row.get("region", "") != "mean":
                values.setdefault(row.get("case", ""), []).append(float(row[metric]))
    return {case: sum(v) / len(v) for case, v in values.items()}


def paired_over_cases(cells: Sequence[tuple[Path, Any]], meta: dict[str, Any], metric: str,
                      n_resamples: int = 4000) -> list[dict[str, Any]]:
    """For the evaluated ``cells`` of a sweep (:func:`~medmae.report.sweep_files.finished_cells`), one row per
    (arm, cell) with a scratch cell beside it: ``mean_diff`` (arm - scratch, averaged over the
    cases both evaluated), its paired bootstrap 95 % CI over those cases, ``wins`` (cases where the arm is
    better) and ``n_cases``."""
    coords: dict[tuple[float, int, str], dict[str, Path]] = {}
    for cell, _ in cells:
        c = parse_cell(cell.name, meta)
        coords.setdefault((c["fraction"], c["seed"], c["fold"]), {})[c["init"]] = cell
    out = []
    for (fraction, seed, fold), arms in sorted(coords.items()):
        ref = per_case_means(arms["scratch"], metric) if "scratch" in arms else {}
        if not ref:
            continue
        for init, cell in sorted(arms.items()):
            arm = per_case_means(cell, metric) if init != "scratch" else {}
            cases = sorted(set(ref) & set(arm))
            if not cases:
                continue
            diff_n = np.array([arm[c] - ref[c] for c in cases])
            low, high = bootstrap_ci(diff_n, n_resamples=n_resamples)
            out.append({"init": init, "reference": "scratch", "fraction": fraction, "seed": seed, "fold": fold,
                        "metric": metric, "n_cases": len(cases), "mean_diff": float(diff_n.mean()),
                        "ci_low": float(low), "ci_high": float(high), "wins": int((diff_n > 0).sum())})
    return out


def cases_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`paired_over_cases` rows."""
    return md_table(["init", "labels", "seed", "fold", "difference (arm - scratch)", "95 % CI over cases", "better on"],
                    [[r["init"], percent(float(r["fraction"])), str(r["seed"]), r["fold"] or "-", f"{r['mean_diff']:+.4f}",
                      f"{r['ci_low']:+.4f} to {r['ci_high']:+.4f}", f"{r['wins']}/{r['n_cases']}"] for r in rows])
