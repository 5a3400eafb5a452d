"""nnU-Net's planning rules as pure functions of the fingerprint: target spacing (with the separate rule for
the low-resolution axis), shape after resampling, crop size, stages and stride, intensity preset by modality,
flips, the label map of 0/255 masks, and the splits pretraining may see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ANISOTROPY = 3.0  # max / min spacing above which the low-resolution axis gets its own rule
LOW_RES_PERCENTILE = 10  # ... the 10th percentile of that axis's spacings (nnU-Net)
MAX_VOXELS = {2: 512 * 512, 3: 128 * 128 * 128}  # crop budget (nnU-Net's default patch sizes)
MIN_BOTTLENECK = 4  # voxels per axis left at the deepest stage
MAX_STAGES = {2: 7, 3: 6}
INTENSITY_PERCENTILES = (0.5, 99.5)


def target_spacing(spacings: Sequence[Sequence[float]]) -> tuple[list[float], str]:
    """Median spacing per axis; when it is anisotropic (max / min > 3), the low-resolution axis takes the 10th
    percentile of its spacings instead (never finer than the in-plane spacing). Returns the spacing and why."""
    arr = np.asarray(spacings, dtype=np.float64)
    if arr.ndim != 2 or not len(arr):
        raise ValueError(f"need one spacing per case, got an array of shape {arr.shape}")
    target = np.median(arr, axis=0)
    worst = int(np.argmax(target))
    others = [target[i] for i in range(len(target)) if i != worst]
    if not others or target[worst] / min(others) <= ANISOTROPY:
        return [round(float(v), 6) for v in target], "median spacing"
    low = max(float(np.percentile(arr[:, worst], LOW_RES_PERCENTILE)), max(others))
    target[worst] = low
    return ([round(float(v), 6) for v in target],
            f"median spacing; axis {worst} is {float(np.median(arr[:, worst])) / min(others):.1f}x coarser (> "
            f"{ANISOTROPY:g}): its {LOW_RES_PERCENTILE}th percentile {low:.4g}")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    """A case's shape after resampling to ``target`` (as :func:`medmae.data.preprocess.target_shape`)."""
    return [max(1, int(round(s * a / b))) for s, a, b in zip(shape, spacing, target)]


def median_shape(shapes: Sequence[Sequence[int]]) -> list[int]:
    return [int(round(v)) for v in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]


def cap_voxels(shape: Sequence[int], max_voxels: int) -> list[int]:
    """Shrink the largest axis by 10 % at a time until the crop holds at most ``max_voxels`` (nnU-Net shrinks
    the patch along its largest axis first)."""
    out = [float(s) for s in shape]
    while math.prod(out) > max_voxels:
        i = int(np.argmax(out))
        out[i] = max(1.0, out[i] * 0.9)
    return [max(1, int(s)) for s in out]


def num_stages(crop: Sequence[int], dims: int, unit: int = 1) -> int:
    """Encoder stages (each later one halves every axis) leaving at least ``MIN_BOTTLENECK`` voxels on the
    shortest axis; 2 at least, nnU-Net's maximum at most. ``unit``: the stem's stride."""
    shortest = min(crop) / unit
    halvings = int(math.floor(math.log2(max(shortest, 1) / MIN_BOTTLENECK))) if shortest >= MIN_BOTTLENECK else 0
    return int(min(max(halvings + 1, 2), MAX_STAGES[dims]))


def round_to(shape: Sequence[int], multiple: int) -> list[int]:
    """Each axis rounded up to a multiple of ``multiple`` (the network's total stride); crops pad the rest."""
    return [int(math.ceil(s / multiple) * multiple) for s in shape]


def stride_multiple(shape: Sequence[int], multiple: int) -> list[int]:
    """Each axis to the nearest multiple of ``multiple`` (at least one): a capped crop stays near its budget."""
    return [max(multiple, int(math.floor(s / multiple + 0.5)) * multiple) for s in shape]


def shrink_once(crop: Sequence[int], multiple: int) -> list[int] | None:
    """The crop with its largest axis one stride step smaller, or None when it is at its smallest."""
    out = list(crop)
    i = int(np.argmax(out))
    if out[i] - multiple < max(multiple, MIN_BOTTLENECK):
        return None
    out[i] -= multiple
    return out


def intensity_preset(modality: str | None, foreground: tuple[float, float] | None,
                     channels: int) -> tuple[dict[str, Any], str]:
    """The intensity preset for a modality: CT -> ct_window over the foreground's (0.5, 99.5) percentiles
    (nnU-Net), MR -> z-score over non-zero voxels, radiographs -> histogram equalisation, other pictures and
    unknown images -> min-max over the (0.5, 99.5) percentiles. Returns the ``data.intensity`` section and why."""
    if modality == "CT":
        if foreground is None:
            return {"name": "ct_window", "lo": -175.0, "hi": 250.0}, "CT without readable foreground: soft-tissue window"
        lo, hi = foreground
        return ({"name": "ct_window", "lo": round(lo, 1), "hi": round(max(hi, lo + 1.0), 1)},
                "CT: window = 0.5 / 99.5 percentiles of the foreground HU (nnU-Net)")
    if modality == "MR":
        return {"name": "mri_zscore_nonzero"}, "MR: z-score over the non-zero voxels"
    if modality == "XR" and channels == 1:
        return {"name": "xray_histeq"}, "radiograph: histogram equalisation"
    why = "colour picture" if channels > 1 else f"{modality or 'unknown'} modality"
    return ({"name": "minmax", "percentiles": list(INTENSITY_PERCENTILES)},
            f"{why}: min-max over the 0.5 / 99.5 percentiles")


def label_map(values: Sequence[int], declared: dict[str, str]) -> dict[int, int] | None:
    """``{255: 1}`` for 0/255 mask images that do not declare 255 as a label; None otherwise."""
    if set(values) == {0, 255} and "255" not in declared:
        return {255: 1}
    return None


def seg_classes(values: Sequence[int], declared: dict[str, str], mapping: dict[int, int] | None) -> int:
    """Output channels of a segmenter: background plus every label value (after ``mapping``)."""
    vals = {int(k) for k in declared} | {mapping.get(v, v) if mapping else v for v in values}
    return max(2, max(vals, default=1) + 1)


def flip_axes(task: str, dims: int) -> list[int]:
    """Segmentation mirrors every axis (nnU-Net); classification only the first (left-right in RAS; for
    pictures their first axis), anatomy being not mirror-symmetric top to bottom."""
    return list(range(dims)) if task == "seg" else [0]


def pretraining_splits(splits: dict[str, dict[str, int]]) -> list[str] | None:
    """The splits pretraining may see: all but a labelled test split (the images fine-tuning is scored on); an
    unlabelled test split (MSD ``imagesTs``) is fair game. None: every case."""
    test = splits.get("test")
    if not test or not test.get("labelled"):
        return None
    return sorted({"train" if s == "none" else s for s in splits if s != "test"}) or None  # unnamed cases train
