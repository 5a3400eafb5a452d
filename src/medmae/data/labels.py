"""Class labels of cases as training targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmae.data.cases import Case
from medmae.errors import CaseError


def class_targets(cases: Sequence[Case], info: dict[str, Any]) -> np.ndarray:
    """Multi-hot (N, K) float32 for multi-label, class indices (N,) int64 otherwise; unknown labels are errors."""
    classes = info["classes"]
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(cases), len(classes)), np.float32) if info["multilabel"] else np.zeros(len(cases), np.int64)
    for n, case in enumerate(cases):
        if case.label is None:
            raise CaseError(f"case {case.case_id} ({case.path}): no class label")
        names = case.class_names()
        unknown = [c for c in names if c not in index]
        if unknown:
            raise CaseError(f"case {case.case_id} ({case.path}): label(s) {unknown} not among the declared classes {classes}")
        if info["multilabel"]:
            out[n, [index[c] for c in names]] = 1.0
        elif len(names) != 1:
            raise CaseError(f"case {case.case_id} ({case.path}): expected exactly one class, got {names or 'none'}")
        else:
            out[n] = index[names[0]]
    return out
