"""Evaluation metrics for medmae: classification, per-case segmentation, bootstrap CIs, summaries.

Everything here is NumPy/SciPy/scikit-learn (no torch), so ``medmae evaluate`` and the sweep/report code can
run it on saved predictions anywhere. Summaries share one row shape, :class:`MetricRow`.

Conventions
-----------
* Classification ``probs_nk`` are probabilities (softmax rows for multi-class, independent
  sigmoids for multi-label), never logits.
* Segmentation masks are integer label maps; a *region* is the union of some label values
  (BraTS WT = {1, 2, 3}); HD95 is in the unit of the voxel ``spacing``: ``hd95_mm``, or ``hd95_px``
  for images without physical spacing (PNG/JPEG/TIFF, ``.npz``).
* Undefined values are NaN *with a reason*: summaries report how many values each mean is over
  (``n``), how many were excluded (``n_excluded``) and why (``excluded_reasons``).
"""

from __future__ import annotations

from medmae.metrics.bootstrap import BootstrapResult, bootstrap_ci, bootstrap_metric_ci
from medmae.metrics.classification import classification_metrics, paired_auroc_difference, summarize_classification
from medmae.metrics.rows import MetricRow
from medmae.metrics.segmentation import (
    EMPTY_MASK_POLICY,
    HD95_KEYS,
    SEGMENTATION_METRICS,
    EmptyMaskPolicy,
    hd95_mm,
    regions_from_labels,
    segmentation_case_metrics,
    summarize_segmentation,
)

__all__ = [
    "EMPTY_MASK_POLICY",
    "HD95_KEYS",
    "SEGMENTATION_METRICS",
    "BootstrapResult",
    "EmptyMaskPolicy",
    "MetricRow",
    "bootstrap_ci",
    "bootstrap_metric_ci",
    "classification_metrics",
    "hd95_mm",
    "paired_auroc_difference",
    "regions_from_labels",
    "segmentation_case_metrics",
    "summarize_classification",
    "summarize_segmentation",
]
