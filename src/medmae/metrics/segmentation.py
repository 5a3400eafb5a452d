"""Segmentation metrics per case and region (Dice, precision, recall, HD95) under an explicit empty-mask
policy, and their summary: means over the cases where a metric is defined, the others excluded and counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medmae.metrics.bootstrap import bootstrap_ci, bootstrap_metric_ci
from medmae.metrics.rows import MetricRow

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "precision", "recall", "hd95_mm")
HD95_KEYS = {"mm": "hd95_mm", "px": "hd95_px"}  # HD95 is named by the unit of the spacing it was measured with
_STATUSES = ("ok", "both_empty", "missed", "false_positive")
_MEAN_REGION = "mean"  # region name of the across-regions mean row


@dataclass(frozen=True)
class EmptyMaskPolicy:
    """What each segmentation metric is when the reference and/or prediction region is empty.

    Recorded verbatim (``asdict``) in :func:`summarize_segmentation` outputs. Undefined ratios
    (0/0) are NaN, never 0 or 1, and every NaN is excluded from means *and counted* by reason.
    """

    version: str = "medmae-empty-mask-v2"
    both_empty: str = (
        "status 'both_empty': dice, precision, recall, hd95 = NaN; the case is excluded from the "
        "region's means and counted in n_both_empty"
    )
    missed: str = (
        "status 'missed' (ref present, pred empty): dice 0, precision 0, recall 0, hd95 = worst case "
        "(precision is 0/0 here but counts as 0: a NaN the prediction chose would bias the precision mean upward)"
    )
    false_positive: str = (
        "status 'false_positive' (ref empty, pred present): dice 0, precision 0, hd95 = worst case; "
        "recall NaN (0/0: nothing to find, whatever is predicted), excluded from the recall mean and counted"
    )
    hd95_worst_case: str = (
        "diagonal of the image field of view, ||shape * spacing|| (BraTS convention: "
        "373.13 mm for 240x240x155 at 1 mm)"
    )
    hd95_definition: str = (
        "max of the two directed 95th percentiles (linear interpolation) of Euclidean distances between "
        "edge voxels, edges = mask minus its face-connected erosion (as MONAI "
        "compute_hausdorff_distance(percentile=95)); hd95_mm in mm, hd95_px in pixels for images without "
        "physical spacing (PNG/JPEG/TIFF, .npz)"
    )


EMPTY_MASK_POLICY = EmptyMaskPolicy()


def regions_from_labels(label_names: Mapping[int, str]) -> dict[str, list[int]]:
    """One region per non-background label: ``{1: "liver"} -> {"liver": [1]}`` (label 0 skipped)."""
    regions: dict[str, list[int]] = {}
    for label, name in sorted(label_names.items()):
        if int(label) == 0:
            continue
        if int(label) < 0:
            raise ValueError(f"label values must be >= 0, got {label} ({name!r})")
        if name in regions or name == _MEAN_REGION:
            raise ValueError(f"region name {name!r} (label {label}) is duplicated or reserved")
        regions[name] = [int(label)]
    if not regions:
        raise ValueError(f"no foreground label in {dict(label_names)}")
    return regions


def _validate_label_map(arr: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{what}: expected an integer label map, got dtype {a.dtype} (probabilities?)")
    if a.ndim not in (2, 3):
        raise ValueError(f"{what}: expected a 2D or 3D label map, got shape {a.shape}")
    return a


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty ``mask``."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _edge_coords_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(M, ndim)`` mm coordinates of edge voxels: the mask minus its face-connected erosion."""
    edges = mask & ~ndimage.binary_erosion(mask)
    return np.argwhere(edges) * spacing


def hd95_mm(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two non-empty boolean masks.

    Definition in :attr:`EmptyMaskPolicy.hd95_definition`; exact distances via a KD-tree over
    edge voxels. Work is cropped to the union's bounding box: erosion pads with background, and
    everything outside the box is background, so the crop cannot change the edges.
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"hd95_mm: pred shape {pred_mask.shape} != ref shape {ref_mask.shape}")
    spacing_d = _validate_spacing(spacing, pred_mask.ndim)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError(
            f"hd95_mm: needs non-empty masks, got {int(pred_mask.sum())} pred and {int(ref_mask.sum())} "
            "ref voxels (see EmptyMaskPolicy)"
        )
    box = _foreground_box(pred_mask | ref_mask)
    pred_mm = _edge_coords_mm(pred_mask[box], spacing_d)
    ref_mm = _edge_coords_mm(ref_mask[box], spacing_d)
    d_pred_to_ref = cKDTree(ref_mm).query(pred_mm, k=1)[0]
    d_ref_to_pred = cKDTree(pred_mm).query(ref_mm, k=1)[0]
    return float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))


def _validate_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    spacing_d = np.asarray(spacing, dtype=np.float64)
    if spacing_d.shape != (ndim,) or not np.all(np.isfinite(spacing_d)) or np.any(spacing_d <= 0):
        raise ValueError(f"spacing: expected {ndim} positive values (one per axis), got {list(np.ravel(spacing))}")
    return spacing_d


def _region_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_d: np.ndarray, worst_mm: float, hd95_key: str
) -> dict[str, Any]:
    """Metrics of one region from boolean masks, following :data:`EMPTY_MASK_POLICY`."""
    n_pred = int(np.count_nonzero(pred_mask))
    n_ref = int(np.count_nonzero(ref_mask))
    tp = int(np.count_nonzero(pred_mask & ref_mask)) if n_pred and n_ref else 0
    fp, fn = n_pred - tp, n_ref - tp
    nan = float("nan")
    if n_pred == 0 and n_ref == 0:
        status, dice, precision, recall, hd95 = "both_empty", nan, nan, nan, nan
    elif n_pred == 0:
        status, dice, precision, recall, hd95 = "missed", 0.0, 0.0, 0.0, worst_mm
    elif n_ref == 0:
        status, dice, precision, recall, hd95 = "false_positive", 0.0, 0.0, nan, worst_mm
    else:
        status = "ok"
        dice = 2.0 * tp / (2 * tp + fp + fn)
        precision, recall = tp / n_pred, tp / n_ref
        hd95 = hd95_mm(pred_mask, ref_mask, spacing_d)
    return {"dice": dice, "precision": precision, "recall": recall, hd95_key: hd95, "tp": tp, "fp": fp, "fn": fn,
            "ref_empty": n_ref == 0, "pred_empty": n_pred == 0, "status": status}


def segmentation_case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
    unit: str = "mm",
) -> dict[str, dict[str, Any]]:
    """Per-region Dice, precision, recall, HD95, voxel counts and status for one case.

    pred, ref: integer label maps of the same 2D ``(H, W)`` or 3D ``(D, H, W)`` shape.
    regions: name -> label values whose union is the region (e.g. BraTS ``{"TC": [2, 3]}``).
    spacing: voxel size per axis in ``unit`` (``mm``, or ``px`` for images without physical spacing).
    Returns ``{region: {"dice", "precision", "recall", "hd95_<unit>", "tp", "fp", "fn",
    "ref_empty", "pred_empty", "status"}}``; empty regions follow :data:`EMPTY_MASK_POLICY`.
    """
    if unit not in HD95_KEYS:
        raise ValueError(f"unit must be one of {sorted(HD95_KEYS)}, got {unit!r}")
    pred_a = _validate_label_map(pred, "pred")
    ref_a = _validate_label_map(ref, "ref")
    if pred_a.shape != ref_a.shape:
        raise ValueError(f"pred shape {pred_a.shape} != ref shape {ref_a.shape}")
    spacing_d = _validate_spacing(spacing, pred_a.ndim)
    if not regions:
        raise ValueError("regions is empty")
    worst_mm = float(np.linalg.norm(np.asarray(pred_a.shape) * spacing_d))
    out: dict[str, dict[str, Any]] = {}
    for name, labels in regions.items():
        labels_l = [int(v) for v in labels]
        if not labels_l or min(labels_l) <= 0:
            raise ValueError(f"region {name!r}: needs foreground label values (> 0), got {labels_l}")
        if name == _MEAN_REGION:
            raise ValueError(f"region name {name!r} is reserved for the across-regions mean row")
        out[name] = _region_metrics(np.isin(pred_a, labels_l), np.isin(ref_a, labels_l), spacing_d, worst_mm,
                                    HD95_KEYS[unit])
    return out



def _reasons(statuses: np.ndarray) -> str:
    """``"both_empty=2;missed=1"`` for the statuses of excluded values (fixed order)."""
    counts = Counter(statuses.tolist())
    return ";".join(f"{s}={counts[s]}" for s in _STATUSES if counts.get(s))


def _mean_over_regions(values_nr: np.ndarray) -> float:
    """Mean over regions of each region's mean over its defined (non-NaN) cases."""
    defined_r = (~np.isnan(values_nr)).sum(axis=0)
    if np.any(defined_r == 0):
        raise ValueError("a region has no defined value in this resample")
    return float(np.mean(np.nansum(values_nr, axis=0) / defined_r))


def summarize_segmentation(
    per_case: Sequence[Mapping[str, Mapping[str, Any]]],
    *,
    mean_over: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Means with case-bootstrap CIs of per-case segmentation metrics, excluding NaN *by reason*.

    per_case: outputs of :func:`segmentation_case_metrics`, one per case, same regions each.
    Returns ``{"rows", "policy", "counts", "mean_over"}``:

    * ``rows``: one :class:`MetricRow` per (region, metric) with ``value`` = mean over the cases
      where the metric is defined, ``n`` = that many cases, ``n_excluded`` + ``excluded_reasons``
      (statuses of the NaN cases); then, per metric, a ``region="mean"`` row = mean over the
      ``mean_over`` regions (default all) of their region means (e.g. BTCV 8-organ average),
      with CIs from resampling cases jointly across regions (resamples leaving a region without
      a defined value are skipped and counted). For that row ``n`` = cases with at least one
      defined value and ``n_excluded`` counts excluded (case, region) values.
    * ``policy``: :data:`EMPTY_MASK_POLICY` as a dict.
    * ``counts``: per region ``n_cases``, ``n_ok``, ``n_both_empty``, ``n_missed``, ``n_false_positive``.
    """
    if not per_case:
        raise ValueError("summarize_segmentation: no cases")
    region_names = list(per_case[0].keys())
    first = per_case[0][region_names[0]] if region_names else {}
    metrics = (*SEGMENTATION_METRICS[:3], HD95_KEYS["px"] if HD95_KEYS["px"] in first else HD95_KEYS["mm"])
    for i, case in enumerate(per_case):
        if list(case.keys()) != region_names:
            raise ValueError(f"case {i}: regions {list(case.keys())} differ from case 0's {region_names}")
        for name in region_names:
            missing = [m for m in (*metrics, "status") if m not in case[name]]
            if missing:
                raise ValueError(f"case {i}, region {name!r}: missing keys {missing}")
            if case[name]["status"] not in _STATUSES:
                raise ValueError(f"case {i}, region {name!r}: unknown status {case[name]['status']!r}")
    selected = list(region_names) if mean_over is None else list(mean_over)
    unknown = [r for r in selected if r not in region_names]
    if unknown or not selected:
        raise ValueError(f"mean_over: unknown regions {unknown} (available: {region_names})")
    if len(set(selected)) != len(selected):
        raise ValueError(f"mean_over: duplicated regions in {selected}")

    statuses_nr = np.array([[case[r]["status"] for r in region_names] for case in per_case], dtype=object)
    counts = {
        r: {"n_cases": len(per_case)}
        | {f"n_{s}": int((statuses_nr[:, j] == s).sum()) for s in _STATUSES}
        for j, r in enumerate(region_names)
    }
    rows: list[MetricRow] = []
    sel_idx = [region_names.index(r) for r in selected]
    for metric in metrics:
        values_nr = np.array([[float(case[r][metric]) for r in region_names] for case in per_case])
        nan_nr = np.isnan(values_nr)
        bad = np.argwhere(nan_nr & (statuses_nr == "ok"))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"case {i}, region {region_names[j]!r}: {metric} is NaN but status is 'ok'")
        for j, region in enumerate(region_names):
            rows.append(_region_row(metric, region, values_nr[:, j], statuses_nr[:, j], n_resamples, seed))
        rows.append(_mean_row(metric, selected, values_nr[:, sel_idx], statuses_nr[:, sel_idx], n_resamples, seed))
    return {"rows": rows, "policy": asdict(EMPTY_MASK_POLICY), "counts": counts, "mean_over": selected}


def _region_row(
    metric: str, region: str, values_n: np.ndarray, statuses_n: np.ndarray, n_resamples: int, seed: int
) -> MetricRow:
    excluded = np.isnan(values_n)
    kept = values_n[~excluded]
    n = int(kept.size)
    note = ""
    if n == 0:
        value = low = high = float("nan")
        note = "no case with a defined value"
    else:
        value = float(kept.mean())
        low, high = bootstrap_ci(kept, n_resamples=n_resamples, seed=seed)
        if n == 1:
            note = "CI undefined for n=1"
    return {
        "metric": metric,
        "region": region,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_excluded": int(excluded.sum()),
        "excluded_reasons": _reasons(statuses_n[excluded]),
        "note": note,
    }


def _mean_row(
    metric: str, regions: list[str], values_nr: np.ndarray, statuses_nr: np.ndarray, n_resamples: int, seed: int
) -> MetricRow:
    excluded = np.isnan(values_nr)
    empty_regions = [r for j, r in enumerate(regions) if excluded[:, j].all()]
    row: MetricRow = {
        "metric": metric,
        "region": _MEAN_REGION,
        "regions": ",".join(regions),
        "value": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "n": int((~excluded).any(axis=1).sum()),
        "n_excluded": int(excluded.sum()),
        "excluded_reasons": _reasons(statuses_nr[excluded]),
        "n_resamples_skipped": 0,
        "note": "",
    }
    if empty_regions:
        row["note"] = f"undefined: no case with a defined {metric} in regions {empty_regions}"
        return row
    boot = bootstrap_metric_ci(_mean_over_regions, values_nr, n_resamples=n_resamples, seed=seed)
    row.update(value=boot.value, ci_low=boot.low, ci_high=boot.high, n_resamples_skipped=boot.n_skipped)
    if values_nr.shape[0] == 1:
        row["note"] = "CI undefined for n=1"
    elif boot.n_valid < 2:
        row["note"] = f"CI undefined: only {boot.n_valid} valid resamples"
    elif boot.n_skipped:
        row["note"] = f"{boot.n_skipped} of {n_resamples} resamples skipped: a region had no defined value"
    return row
