"""One case of ``medmae data check``: read its image (and mask), collect statistics and per-case findings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmae.data.cases import Case, DatasetSpec
from medmae.data.check_options import CheckOptions
from medmae.data.check_report import Finding
from medmae.data.image import ImageMeta
from medmae.data.readers import nonfinite_count, read_image, read_label
from medmae.data.validity import image_problems, is_colour

STATS_VOXELS = 1 << 20  # percentiles come from a regular subsample of at most this many voxels per channel
ANISOTROPY_RATIO = 3.0
TINY_AXIS = 16  # voxels; a smaller spatial axis is worth a warning
INT16_MAX = 32767
SPACING_RTOL, SPACING_ATOL = 1e-3, 1e-4  # image vs label spacing, as medmae.data.preprocess.load_mask
AFFINE_ATOL_MM = 1e-2  # image vs label voxel-to-world affines


_Add = Callable[[str, str, str, "str | None"], None]  # (severity, code, message, file) -> record a finding


@dataclass
class CaseResult:
    stats: dict[str, Any]
    findings: list[tuple[str, Finding]]  # ("error" | "warning", finding)


def inspect_case(source: str, spec: DatasetSpec, case: Case, opts: CheckOptions) -> CaseResult:
    """Read one case's image (and mask) and collect its statistics and problems; never raises for bad data."""
    findings: list[tuple[str, Finding]] = []

    def add(severity: str, code: str, message: str, file: str | None) -> None:
        findings.append((severity, Finding(code, message, source=source, case_id=case.case_id, file=file)))

    stats: dict[str, Any] = {
        "source": source, "case_id": case.case_id, "subject_id": case.subject_id, "split": case.split,
        "image": list(case.image), "mask": case.mask, "label": case.label,
        "labelled": bool(case.mask or case.label is not None), "read": False,
    }
    try:
        x, meta = read_image(case.image if len(case.image) > 1 else case.image[0])
    except Exception as e:  # noqa: BLE001 - a check reports every failure instead of stopping
        add("error", "unreadable", str(e) or type(e).__name__, _file_in(e, case.image))
        return CaseResult(stats, findings)
    stats.update(_image_stats(x, meta, case, spec))
    _image_findings(stats, meta, add)
    if case.mask:
        _mask_findings(case, spec, x, meta, stats, add, opts)
    if case.label is not None and spec.classes:
        unknown = [n for n in case.class_names() if n not in spec.classes]
        if unknown:
            add("error", "undeclared_class", f"class label(s) {unknown} not among the declared classes {spec.classes}",
                case.path)
    return CaseResult(stats, findings)


def _image_stats(x_cs: np.ndarray, meta: ImageMeta, case: Case, spec: DatasetSpec) -> dict[str, Any]:
    """Shape, geometry and per-channel intensity statistics of one image ``(C, *spatial)``."""
    channels = []
    for ch in x_cs:
        finite = np.isfinite(ch)
        valid = ch if finite.all() else ch[finite]
        if valid.size == 0:
            channels.append({"min": None, "max": None, "p1": None, "p50": None, "p99": None})
            continue
        p1, p50, p99 = (float(v) for v in np.percentile(_subsample(valid), [1, 50, 99]))
        channels.append({"min": float(valid.min()), "max": float(valid.max()), "p1": p1, "p50": p50, "p99": p99})
    return {
        "read": True,
        "spatial_dims": meta.spatial_dims,
        "channels": int(x_cs.shape[0]),
        "shape": [int(s) for s in x_cs.shape[1:]],
        "spacing": [float(s) for s in meta.spacing],
        "dtype": meta.source_dtype,
        "modality": case.modality or spec.modality or meta.modality,
        "nonfinite": nonfinite_count(x_cs),
        "intensity": channels,
    }


def _image_findings(stats: dict[str, Any], meta: ImageMeta, add: _Add) -> None:
    where = meta.path
    ranges = [(ch["min"], ch["max"]) for ch in stats["intensity"]]  # the rule training applies (medmae.data.validity):
    for problem in image_problems(stats["shape"], stats["nonfinite"], ranges, colour=is_colour(meta.channel_names)):
        add("error", problem.code, problem.message, where)
    top = max((ch["max"] for ch in stats["intensity"] if ch["max"] is not None), default=0.0)
    if "uint16" in stats["dtype"] and top > INT16_MAX:
        if str(stats["modality"] or "").upper() == "CT":
            add("error", "int16_overflow", f"uint16 CT values up to {top:g} exceed {INT16_MAX}: negative HU were "
                f"probably stored as unsigned (wrapped); fix the file's data type", where)
        else:
            add("warning", "int16_overflow", f"uint16 values up to {top:g} exceed {INT16_MAX}: tools that store "
                "int16 would wrap them (medmae reads them as float32)", where)
    spacing, shape = stats["spacing"], stats["shape"]
    if len(spacing) == 3 and min(spacing) > 0 and max(spacing) / min(spacing) > ANISOTROPY_RATIO:
        add("warning", "anisotropic", f"spacing {_fmt(spacing)} mm is anisotropic "
            f"({max(spacing) / min(spacing):.1f}:1 > {ANISOTROPY_RATIO:g}:1)", where)
    if min(shape) < TINY_AXIS:
        add("warning", "tiny_image", f"spatial shape {tuple(shape)} has an axis below {TINY_AXIS} voxels", where)


def _mask_findings(case: Case, spec: DatasetSpec, x_cs: np.ndarray, meta: ImageMeta, stats: dict[str, Any],
                   add: _Add, opts: CheckOptions) -> None:
    try:
        y, label_meta = read_label(case.mask)
    except Exception as e:  # noqa: BLE001 - as in inspect_case
        add("error", "unreadable", str(e), case.mask)
        return
    values = opts.mask_values(_value_counts(y))  # after data.label_map
    stats["label_values"] = {str(v): n for v, n in values.items()}
    image_shape = tuple(x_cs.shape[1:])
    if tuple(y.shape) != image_shape or tuple(label_meta.original_shape) != tuple(meta.original_shape):
        add("error", "shape_mismatch", f"label shape {tuple(label_meta.original_shape)} differs from image shape "
            f"{tuple(meta.original_shape)} (as stored; {tuple(y.shape)} vs {image_shape} after reorientation)", case.mask)
    elif not np.allclose(label_meta.spacing, meta.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        add("error", "spacing_mismatch", f"label spacing {_fmt(label_meta.spacing)} differs from image spacing "
            f"{_fmt(meta.spacing)}", case.mask)
    elif label_meta.affine is not None and meta.affine is not None:
        diff = float(np.abs(label_meta.affine - meta.affine).max())
        if diff > AFFINE_ATOL_MM:
            add("warning", "affine_mismatch", f"label affine (origin/direction) differs from the image's by up to "
                f"{diff:.3g} mm", case.mask)
    if spec.label_names:
        outside = sorted(set(values) - set(spec.label_names))
        if outside:
            hint = ("a 0/255 mask image? --set 'data.label_map={255: 1}'" if outside == [255]
                    else "or declare them in data.labels")
            add("error", "undeclared_label", f"label values {outside} not declared (declared: "
                f"{sorted(spec.label_names)}) ({hint})", case.mask)
    if set(values) <= {0}:
        add("warning", "empty_label", "label map holds only background (0)", case.mask)


def _file_in(exc: Exception, files: Iterable[str]) -> str:
    """The file an error message starts with (readers name the file first), else the first file."""
    text = str(exc)
    files = list(files)
    return next((f for f in files if text.startswith(str(f))), files[0])


def _subsample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    step = max(1, math.ceil(flat.size / STATS_VOXELS))
    return flat[::step]


def _value_counts(y: np.ndarray) -> dict[int, int]:
    """Label value -> voxel count (bincount when the values are small non-negative integers)."""
    if y.size and y.min() >= 0 and y.max() < 1 << 16:
        counts = np.bincount(y.reshape(-1).astype(np.int64))
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(y, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
