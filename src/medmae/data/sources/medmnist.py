"""MedMNIST layout: an ``.npz`` with ``<split>_images`` / ``<split>_labels`` arrays, split in train/val/test.

One case per image, addressed as ``<file>.npz::<split>_images::<index>`` (see :mod:`medmae.data.npz`), case id
``<split>_<index>``. Labels ``(N, 1)`` are class indices, ``(N, K)`` with K > 1 multi-hot (ChestMNIST). Class
names come from ``<stem>.json`` beside the file (MedMNIST's INFO entry: ``{"label": {"0": name}, "task": ...}``,
or ``{"classes": [...]}``; an optional ``"modality"`` tags the cases), else ``"0"`` .. ``"K-1"``. MedMNIST has no
patient ids: ``subject_id`` is the case id, so subject-level splitting is not possible; the official splits are
kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medmae.data.cases import Case, DatasetSpec, read_json
from medmae.data.npz import npz_array, npz_image_layout, npz_keys, npz_shape
from medmae.errors import ReadError, SourceError

MEDMNIST_SPLITS = ("train", "val", "test")


def load_medmnist(path: Path) -> DatasetSpec:
    """MedMNIST-format ``.npz``: official splits, one case per image (see the module docstring)."""
    keys = set(_npz(lambda: npz_keys(path)))
    present = [s for s in MEDMNIST_SPLITS if f"{s}_images" in keys]
    if not present:
        raise SourceError(f"{path}: no <split>_images array (expected train_images, val_images, test_images; "
                          f"found {sorted(keys)})")
    info = _medmnist_info(path)
    dims: dict[str, int] = {}
    labels: dict[str, np.ndarray | None] = {}
    counts: dict[str, int] = {}
    for split in present:
        shape = _npz(lambda: npz_shape(path, f"{split}_images"))
        try:
            dims[split] = npz_image_layout(shape)[0]
        except ValueError as e:
            raise SourceError(f"{path}: {split}_images: {e}") from None
        counts[split] = shape[0]
        labels[split] = _medmnist_labels(path, split, shape[0]) if f"{split}_labels" in keys else None
    if len(set(dims.values())) > 1:
        raise SourceError(f"{path}: splits mix 2D and 3D images ({dims})")
    widths = {s: a.shape[1] for s, a in labels.items() if a is not None}
    if len(set(widths.values())) > 1:
        raise SourceError(f"{path}: label arrays differ in width across splits ({widths})")
    width = max(widths.values(), default=1)
    multilabel = width > 1 or "multi-label" in str(info.get("task", ""))
    classes = _medmnist_classes(path, info, labels, multilabel)
    digits = len(str(max(counts.values()) - 1))
    resolved = str(path.resolve())
    cases = []
    for split in present:
        for i in range(counts[split]):
            case_id = f"{split}_{i:0{digits}d}"
            row = labels[split][i] if labels[split] is not None else None
            label = None if row is None else _medmnist_label(row, classes, multilabel)
            cases.append(Case(case_id, (f"{resolved}::{split}_images::{i}",), case_id, label=label, split=split,
                              modality=info.get("modality"), source=str(path)))
    return DatasetSpec(root=path.parent, cases=cases, classes=classes, multilabel=multilabel,
                       spatial_dims=next(iter(dims.values())), modality=info.get("modality"), kind="medmnist")


def _npz(read):
    """Run a ``.npz`` read, turning the reader's error into a :class:`SourceError`."""
    try:
        return read()
    except ReadError as e:
        raise SourceError(str(e)) from None


def _medmnist_info(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    return read_json(sidecar) if sidecar.is_file() else {}


def _medmnist_labels(path: Path, split: str, n: int) -> np.ndarray:
    """``(N, K)`` integer labels of a split; ``(N,)`` is taken as ``(N, 1)``."""
    raw = np.asarray(_npz(lambda: npz_array(path, f"{split}_labels")))
    arr = raw[:, None] if raw.ndim == 1 else raw
    if arr.ndim != 2 or arr.shape[0] != n:
        raise SourceError(f"{path}: {split}_labels has shape {raw.shape}, expected ({n}, K) for {n} images")
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.rint(arr)):
        bad = np.argwhere(arr != np.rint(arr))[0]
        raise SourceError(f"{path}: {split}_labels row {bad[0]} holds the non-integer {arr[tuple(bad)]!r}")
    if arr.dtype.kind not in "iubf":
        raise SourceError(f"{path}: {split}_labels has non-numeric dtype {arr.dtype}")
    return arr.astype(np.int64)


def _medmnist_classes(path: Path, info: Mapping[str, Any], labels: Mapping[str, np.ndarray | None],
                      multilabel: bool) -> list[str]:
    arrays = [a for a in labels.values() if a is not None]
    if multilabel:
        bad = [(s, a) for s, a in labels.items() if a is not None and not np.isin(a, (0, 1)).all()]
        if bad:
            raise SourceError(f"{path}: {bad[0][0]}_labels of a multi-label dataset must be 0/1, "
                              f"found {sorted(set(np.unique(bad[0][1]).tolist()) - {0, 1})[:5]}")
        n = arrays[0].shape[1] if arrays else 0
    else:
        n = int(max(a.max() for a in arrays)) + 1 if arrays else 0
        low = min((int(a.min()) for a in arrays), default=0)
        if low < 0:
            raise SourceError(f"{path}: negative class index {low} in the labels")
    named = info.get("label") or info.get("classes")
    if named is None:
        return [str(i) for i in range(n)]
    names = [str(named[k]) for k in sorted(named, key=int)] if isinstance(named, Mapping) else [str(c) for c in named]
    if len(names) < n:
        raise SourceError(f"{path.with_suffix('.json')}: {len(names)} class names, but the labels of {path.name} "
                          f"use {n} classes")
    return names


def _medmnist_label(row: np.ndarray, classes: list[str], multilabel: bool) -> str:
    """Class index row -> name; multi-hot row -> names joined by ``|`` (empty for no finding)."""
    if multilabel:
        return "|".join(classes[j] for j in np.flatnonzero(row))
    return classes[int(row[0])]
