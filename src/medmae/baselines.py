"""What a classifier that never looks at the image scores, so an accuracy can be read against it.

Single-label: always the majority class. Multi-label: every label negative, scored like
:func:`medmae.metrics.classification_metrics` scores multi-label accuracy (share of correct (case, label)
decisions). On rare findings the second is high, and a model that never fires matches it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def trivial_accuracy(targets: np.ndarray, *, multilabel: bool, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"value", "rule"}``: accuracy of the constant prediction (majority class / all-negative per label)."""
    t = np.asarray(targets)
    if t.shape[0] == 0:
        raise ValueError("trivial_accuracy: no cases")
    if multilabel:
        return {"value": float((t == 0).mean()), "rule": "all-negative per label"}
    counts = np.bincount(t.astype(np.int64), minlength=len(class_names))
    j = int(counts.argmax())
    return {"value": float(counts[j] / t.shape[0]), "rule": f"majority class {class_names[j]!r}"}


def decision_rule(*, multilabel: bool, n_classes: int, threshold: float) -> str:
    """How probabilities became the decisions behind accuracy, sensitivity and specificity."""
    if multilabel:
        return f"p >= {threshold} per label"
    if n_classes == 2:
        return f"p[positive] >= {threshold}"
    return "argmax (threshold unused for more than 2 classes)"


def accuracy_vs_baseline(accuracy: float, baseline: dict[str, Any], tol: float = 1e-9) -> dict[str, Any]:
    """The baseline with a verdict: does the model's accuracy beat predicting without looking?"""
    return {**baseline, "accuracy": accuracy, "beaten": bool(accuracy > baseline["value"] + tol)}
