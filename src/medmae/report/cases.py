"""Paired comparisons over test cases: every arm minus scratch in the same cell (fraction, seed, fold), case by case.

With one seed and one split, the comparison over runs has a single pair and no interval; the test cases still
pair up (both arms predicted the same images), so a paired bootstrap over them says whether the difference is
larger than what the choice of test cases explains. Segmentation: the per-case metric (Dice, ...) of each case,
arm minus scratch, bootstrapped as a mean. Classification: ROC-AUC is not defined per case, so each resample of the
cases scores both arms' ROC-AUC on it (:func:`medmae.metrics.paired_auroc_difference`); ``wins`` is then the
number of cases the arm ranks better (a higher score for its true class than scratch gives it).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.metrics import bootstrap_ci, paired_auroc_difference
from medmae.report.sweep_files import parse_cell
from medmae.report.tables import md_table, percent
from medmae.run_layout import PER_CASE_FILE, eval_split_dir


def per_case_values(cell_dir: Path, metric: str) -> dict[str, dict[str, float]]:
    """``{case: {region: metric}}`` from the cell's test ``per_case.csv`` (regions other than ``mean``; empty or
    NaN values, i.e. metrics undefined under the empty-mask policy, left out: a case may map to ``{}``); empty when
    the file is missing."""
    path = eval_split_dir(cell_dir, "test") / PER_CASE_FILE
    if not path.is_file():
        return {}
    values: dict[str, dict[str, float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get(metric) not in (None, "") and row.get("region", "") != "mean":
                value, regions = float(row[metric]), values.setdefault(row.get("case", ""), {})
                if math.isfinite(value):
                    regions[row.get("region", "")] = value
    return values


def _seg_diff(arm: dict, ref: dict, cases: list[str], n_resamples: int) -> tuple[float, float, float, int, int] | None:
    """Mean over ``cases`` of (arm - scratch) averaged over the regions both define, its bootstrap CI, the cases the
    arm is better on, and how many cases were left out for want of a region both define; None when none is."""
    diffs, left_out = [], 0
    for case in cases:
        both = sorted(set(ref[case]) & set(arm[case]))
        if both:
            diffs.append(sum(arm[case][r] - ref[case][r] for r in both) / len(both))
        else:
            left_out += 1
    if not diffs:
        return None
    diff_n = np.array(diffs)
    low, high = bootstrap_ci(diff_n, n_resamples=n_resamples)
    return float(diff_n.mean()), float(low), float(high), int((diff_n > 0).sum()), left_out


def per_case_scores(cell_dir: Path, where: str | None) -> dict[str, tuple[list[float], list[float]]]:
    """``{case: (0/1 targets, scores)}`` over the classes of a classification cell's test ``per_case.csv`` (only
    class ``where`` when given: a binary task's headline); empty when the file is missing."""
    path = eval_split_dir(cell_dir, "test") / PER_CASE_FILE
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [c[len("prob_"):] for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    keep = [(j, name) for j, name in enumerate(names) if where is None or name == where]
    if not keep:  # not a classification cell, or no such class
        return {}
    out = {}
    for row in rows:
        y = [float(row[f"target_{n}"]) if f"target_{n}" in row else float(int(row["target"]) == j) for j, n in keep]
        out[row["case"]] = (y, [float(row[f"prob_{n}"]) for _, n in keep])
    return out


def _cls_diff(arm: dict, ref: dict, cases: list[str], n_resamples: int) -> tuple[float, float, float, int]:
    """ROC-AUC difference with its paired CI, and the cases the arm ranks better, on ``cases``."""
    y = np.array([ref[c][0] for c in cases])
    a, b = np.array([arm[c][1] for c in cases]), np.array([ref[c][1] for c in cases])
    boot = paired_auroc_difference(a, b, y, n_resamples=n_resamples)
    wins = int((((a - b) * (2 * y - 1)).sum(axis=1) > 0).sum())  # higher on positives, lower on negatives
    return float(boot.value), float(boot.low), float(boot.high), wins


def paired_difference(arm_dir: Path, ref_dir: Path, metric: str, where: str | None = None,
                      n_resamples: int = 4000) -> dict[str, Any] | None:
    """``arm_dir``'s test scores minus ``ref_dir``'s on the cases both evaluated: ``mean_diff`` (the mean of
    per-case differences over the regions both define, or for ``auroc`` / ``macro_auroc`` the difference of ROC-AUCs
    of class ``where`` / of the classes' mean), its paired bootstrap 95 % CI over those cases (``ci_low``,
    ``ci_high``), ``wins``, ``n_cases`` and ``n_undefined`` (cases without a region both define, e.g. both empty,
    left out). None when the two share no case or the metric is undefined on them."""
    cls = metric in ("auroc", "macro_auroc")

    def read(run: Path) -> dict:
        return per_case_scores(run, where if metric == "auroc" else None) if cls else per_case_values(run, metric)

    ref = read(ref_dir)
    arm = read(arm_dir) if ref else {}
    cases = sorted(set(ref) & set(arm))
    if not cases:
        return None
    left_out = 0
    if cls:
        try:
            mean, low, high, wins = _cls_diff(arm, ref, cases, n_resamples)
        except ValueError:  # a test set without positives or negatives has no ROC-AUC (its rows say so)
            return None
    else:
        seg = _seg_diff(arm, ref, cases, n_resamples)
        if seg is None:
            return None
        mean, low, high, wins, left_out = seg
    return {"metric": metric, "n_cases": len(cases) - left_out, "n_undefined": left_out, "mean_diff": mean,
            "ci_low": float(low), "ci_high": float(high), "wins": wins}


def paired_over_cases(cells: Sequence[tuple[Path, Any]], meta: dict[str, Any], metric: str, where: str | None = None,
                      n_resamples: int = 4000) -> list[dict[str, Any]]:
    """For the evaluated ``cells`` of a sweep (:func:`~medmae.report.sweep_files.finished_cells`), one row per
    (arm, cell) with a scratch cell beside it: :func:`paired_difference` of the arm and that scratch cell, with the
    cell's ``init``, ``reference``, ``fraction``, ``seed`` and ``fold``."""
    coords: dict[tuple[float, int, str], dict[str, Path]] = {}
    for cell, _ in cells:
        c = parse_cell(cell.name, meta)
        coords.setdefault((c["fraction"], c["seed"], c["fold"]), {})[c["init"]] = cell
    out = []
    for (fraction, seed, fold), arms in sorted(coords.items()):
        if "scratch" not in arms:
            continue
        for init, cell in sorted(arms.items()):
            diff = paired_difference(cell, arms["scratch"], metric, where, n_resamples) if init != "scratch" else None
            if diff is not None:
                out.append({"init": init, "reference": "scratch", "fraction": fraction, "seed": seed, "fold": fold,
                            **diff})
    return out


def cases_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`paired_over_cases` rows."""
    return md_table(["init", "labels", "seed", "fold", "difference (arm - scratch)", "95 % CI over cases", "better on"],
                    [[r["init"], percent(float(r["fraction"])), str(r["seed"]), r["fold"] or "-", f"{r['mean_diff']:+.4f}",
                      f"{r['ci_low']:+.4f} to {r['ci_high']:+.4f}", _better_on(r)] for r in rows])


def _better_on(row: dict[str, Any]) -> str:
    """``wins/n_cases``, and the cases left out when the metric was undefined (both masks empty) in an arm."""
    n = int(row.get("n_undefined", 0))
    return f"{row['wins']}/{row['n_cases']}" + (f" ({n} left out: undefined in an arm)" if n else "")
