"""Patient-level, stratified splits and nested label fractions, reproducible from a seed (k-fold: for a given
scikit-learn version).

Splits are saved as JSON in the run directory (case ids per split), so evaluation and later sweeps reuse
exactly the cases a model was trained on. k-fold files use nnU-Net's ``splits_final.json`` shape
(a list of ``{"train": [...], "val": [...]}``).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmae.data.cases import Case
from medmae.errors import SourceError

log = logging.getLogger(__name__)


def stratum(case: Case) -> str:
    """Stratification key of a case: its class label(s), or '' when unlabelled."""
    return "|".join(sorted(case.class_names())) if case.label is not None else ""


def _subject_groups(cases: Sequence[Case]) -> tuple[list[str], dict[str, list[int]]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        groups[c.subject_id].append(i)
    return sorted(groups), groups


def _subject_stratum(cases: Sequence[Case], members: list[int]) -> str:
    """A subject's stratum: the most frequent one of its cases (ties broken by name)."""
    counts: dict[str, int] = defaultdict(int)
    for i in members:
        counts[stratum(cases[i])] += 1
    return min(counts, key=lambda s: (-counts[s], s))


def kfold(cases: Sequence[Case], k: int = 5, *, seed: int = 0) -> list[dict[str, list[str]]]:
    """k folds, patient-disjoint and stratified: scikit-learn's ``StratifiedGroupKFold`` (groups: subjects,
    classes: each case's stratum, shuffled with ``seed``). It balances the cases of each stratum over the folds
    also when subjects have several images (``benchmarks/metrics_vs_sklearn.py``); the folds of a run are saved
    in its ``splits.json``."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    subjects, _ = _subject_groups(cases)
    if len(subjects) < k:
        raise ValueError(f"{len(subjects)} subjects cannot make {k} folds")
    y = [stratum(c) for c in cases]
    ids = np.array([c.case_id for c in cases])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
                     .split(np.zeros(len(cases)), y, [c.subject_id for c in cases]))
    for w in caught:  # "the least populated class in y has only 2 members": one line, not a Python warning
        log.warning("k-fold: %s", str(w.message).split("\n")[0])
    return [{"train": sorted(ids[train].tolist()), "val": sorted(ids[val].tolist())} for train, val in parts]


def train_test_split(cases: Sequence[Case], *, test_fraction: float, val_fraction: float = 0.0,
                     seed: int = 0) -> dict[str, list[str]]:
    """Patient-level stratified split into train / val / test case ids."""
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(f"bad split fractions: test {test_fraction}, val {val_fraction}")
    subjects, groups = _subject_groups(cases)
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for s in subjects:
        by_stratum[_subject_stratum(cases, groups[s])].append(s)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for key in sorted(by_stratum):
        members = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        n = len(members)
        n_test = max(1, int(round(n * test_fraction))) if n > 1 else 0
        n_val = int(round(n * val_fraction)) if n - n_test > 1 else 0
        for j, s in enumerate(members):
            part = "test" if j < n_test else ("val" if j < n_test + n_val else "train")
            out[part] += [cases[i].case_id for i in groups[s]]
    return {k: sorted(v) for k, v in out.items()}


def label_fraction(cases: Sequence[Case], fraction: float, *, seed: int = 0) -> list[str]:
    """Nested, stratified subset of ``fraction`` of the cases (by subject), at least one subject per stratum.

    Subjects are ranked once per stratum by a seeded permutation and the first ``ceil(fraction * n)`` are
    taken, so the subset for 5 % is contained in the one for 10 %, and so on.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    subjects, groups = _subject_groups(cases)
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for s in subjects:
        by_stratum[_subject_stratum(cases, groups[s])].append(s)
    keep: list[str] = []
    for key in sorted(by_stratum):
        members = [by_stratum[key][i] for i in rng.permutation(len(by_stratum[key]))]
        n = max(1, math.ceil(fraction * len(members) - 1e-9))
        keep += [cases[i].case_id for s in members[:n] for i in groups[s]]
    return sorted(keep)


def require_both_classes(cases: Sequence[Case], classes: Sequence[str], where: str) -> None:
    """Raise :class:`SourceError` unless every class has a positive and a negative case in ``cases``
    (per-class AUROC / AUPRC are undefined otherwise); ``where`` names the split in the message."""
    bad = []
    for name in classes:
        pos = sum(name in c.class_names() for c in cases)
        if pos == 0 or pos == len(cases):
            bad.append(f"class {name!r} has {pos} positive and {len(cases) - pos} negative cases")
    if bad:
        raise SourceError(f"{where}: AUROC/AUPRC need positive and negative cases of every class, but "
                          + "; ".join(bad) + " (use another split, or change eval.split_seed / eval.test_fraction)")


def save_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=isinstance(data, dict)) + "\n")
