"""Dataset layouts beyond folders, CSV manifests and MSD: nnU-Net v2 raw, MedMNIST ``.npz``, DICOM trees and
JSON manifests. Each loader returns a :class:`~medmae.data.sources.DatasetSpec`; ``load_source`` detects them.

Layout notes
------------
- nnU-Net v2 (``dataset.json`` with ``channel_names`` and ``file_ending``): ``imagesTr/{case}_{CCCC}{ending}``
  channel files become one case whose ``image`` lists the channels in index order; ``labelsTr/{case}{ending}``
  is its mask. ``imagesTs`` cases are ``split="unlabelled"`` (``"test"`` when a ``labelsTs`` folder holds their
  labels). ``labels`` maps names to label values; a region entry (a list of values, region-based training)
  declares a union of values: the plain integers name the values, values only seen in regions are named
  ``label_<v>``, and :func:`nnunet_regions` gives the regions (the shape of ``eval.regions``). nnU-Net has no
  subject ids: ``subject_id`` is the case id. The optional ``dataset`` key (explicit file lists) is not read.
- MedMNIST (``.npz`` with ``<split>_images`` / ``<split>_labels``, split in train/val/test): one case per image,
  addressed as ``<file>.npz::<split>_images::<index>`` (see :mod:`medmae.data.readers`), case id
  ``<split>_<index>``. Labels ``(N, 1)`` are class indices, ``(N, K)`` with K > 1 multi-hot (ChestMNIST).
  Class names come from ``<stem>.json`` beside the file (MedMNIST's INFO entry: ``{"label": {"0": name}, "task":
  ...}``, or ``{"classes": [...]}``; an optional ``"modality"`` tags the cases), else ``"0"`` .. ``"K-1"``.
  MedMNIST has no patient ids: ``subject_id`` is the case id, so subject-level splitting is not possible; the
  official splits are kept.
- DICOM tree: every non-localizer series found by :func:`medmae.data.dicom.scan_dicom_tree` is a case addressed as
  ``<folder>::<SeriesInstanceUID>[::<part>]``; ``subject_id`` is PatientID (else the series folder relative
  to the root), ``case_id`` is ``<PatientID>_<SeriesNumber>`` (``_p<part>`` for a split UID), or
  ``<PatientID>_<UID>`` where that is not unique. ``train``/``val``/``test`` folder names give the split.
- JSON manifest: a list of ``{"image", "label", "mask", "subject_id", "split", "case_id", "modality"}``, or a
  MONAI datalist ``{"training": [...], "validation": [...], "test": [...]}``. ``image`` is a path or a list of
  channel paths, relative to the JSON's folder. A string ``label`` is a mask when it ends in an image suffix
  or names an existing file, else a class name; an integer is a class index, a list of strings several
  classes, a list of numbers a multi-hot vector.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medmae.data.dicom import log_scan_warnings, scan_dicom_tree, series_path
from medmae.data.readers import (
    DICOM_SUFFIXES,
    ReadError,
    image_suffix,
    npz_array,
    npz_image_layout,
    npz_keys,
    npz_shape,
)
from medmae.data.sources import (
    SPLIT_NAMES,
    Case,
    DatasetSpec,
    SourceError,
    _declared,
    _read_json,
    _split_name,
    strip_suffix,
)

logger = logging.getLogger(__name__)

MEDMNIST_SPLITS = ("train", "val", "test")
DICOM_SNIFF_FILES = 16  # DICOM files looked at when deciding whether a folder is a DICOM tree
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_RASTER_2D = (".png", ".bmp", ".jpg", ".jpeg")
_DATALIST_SECTIONS = (("training", "train"), ("validation", "val"), ("test", "test"), ("testing", "test"))


# ------------------------------------------------------------------------------------------------ nnU-Net


def is_nnunet_json(meta: Mapping[str, Any]) -> bool:
    """An nnU-Net v2 ``dataset.json`` declares ``channel_names`` and ``file_ending``."""
    return "channel_names" in meta and "file_ending" in meta


def nnunet_labels(meta: Mapping[str, Any], where: Path) -> tuple[dict[int, str], dict[str, list[int]]]:
    """``labels`` of an nnU-Net ``dataset.json`` -> (value -> name, region name -> values).

    Regions are only returned when some entry is a list (region-based training); then every non-background
    entry is a region. Values seen only inside regions are named ``label_<v>``.
    """
    labels = meta.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise SourceError(f"{where}: 'labels' must map label names to values, got {labels!r}")
    names: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    for key, value in labels.items():
        if str(key).lstrip("-").isdigit() and isinstance(value, str):  # MSD style "1": "liver"
            key, value = value, int(key)
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise SourceError(f"{where}: label {key!r} must be an integer or a list of integers, got {value!r}")
        if isinstance(value, list):
            regions[str(key)] = sorted(values)
        else:
            names[int(value)] = str(key)
    if regions:
        for name, value in labels.items():
            if isinstance(value, int) and value != 0:
                regions.setdefault(str(name), [int(value)])
        for v in sorted({v for vs in regions.values() for v in vs} - set(names)):
            names[v] = f"label_{v}"
    return dict(sorted(names.items())), regions


def nnunet_regions(root: str | Path) -> dict[str, list[int]]:
    """Regions declared by an nnU-Net dataset folder (empty for plain integer labels)."""
    where = Path(root) / "dataset.json"
    return nnunet_labels(_read_json(where), where)[1]


def load_nnunet(root: Path) -> DatasetSpec:
    """nnU-Net v2 raw dataset folder (``Dataset004_Hippocampus``-style): see the module docstring."""
    where = root / "dataset.json"
    meta = _read_json(where)
    channels = _nnunet_channels(meta, where)
    ending = str(meta["file_ending"])
    label_names, _ = nnunet_labels(meta, where)
    if not (root / "imagesTr").is_dir():
        raise SourceError(f"{root / 'imagesTr'}: folder not found (nnU-Net layout, {where})")
    cases = _nnunet_cases(root, "imagesTr", "labelsTr", ending, channels, split="train")
    declared = meta.get("numTraining")
    if declared is not None and int(declared) != len(cases):
        raise SourceError(f"{where}: numTraining is {declared}, but {root / 'imagesTr'} holds {len(cases)} cases")
    if (root / "imagesTs").is_dir():
        labelled = (root / "labelsTs").is_dir()
        test = _nnunet_cases(root, "imagesTs", "labelsTs" if labelled else None, ending, channels,
                             split="test" if labelled else "unlabelled")
        clash = sorted({c.case_id for c in cases} & {c.case_id for c in test})
        if clash:
            raise SourceError(f"{root}: case ids {clash[:5]} are in both imagesTr and imagesTs")
        cases += test
    names = list(dict.fromkeys(channels))
    return DatasetSpec(
        root=root,
        cases=cases,
        label_names=label_names,
        spatial_dims=2 if ending.lower() in _RASTER_2D else 3,
        modality="+".join(names),
        kind="nnunet",
    )


def _nnunet_channels(meta: Mapping[str, Any], where: Path) -> list[str]:
    raw = meta.get("channel_names")
    if not isinstance(raw, Mapping) or not raw:
        raise SourceError(f"{where}: 'channel_names' must map channel indices to names, got {raw!r}")
    keys = sorted(raw, key=lambda k: int(k) if str(k).isdigit() else -1)
    if [str(k) for k in keys] != [str(i) for i in range(len(raw))]:
        raise SourceError(f"{where}: channel_names keys must be 0..{len(raw) - 1}, got {list(raw)}")
    return [str(raw[k]) for k in keys]


def _nnunet_cases(root: Path, images: str, labels: str | None, ending: str, channels: list[str], *,
                  split: str) -> list[Case]:
    """Group ``{case}_{CCCC}{ending}`` files by case; every channel and (when ``labels``) the label must exist."""
    image_dir = root / images
    files = sorted(f for f in image_dir.iterdir() if f.is_file() and not f.name.startswith("."))
    groups: dict[str, dict[int, Path]] = {}
    for f in files:
        if not f.name.endswith(ending):
            if image_suffix(f):
                raise SourceError(f"{f}: file ending differs from the declared file_ending {ending!r}")
            continue
        match = _NNUNET_CHANNEL.match(f.name[: -len(ending)])
        if match is None:
            raise SourceError(f"{f}: nnU-Net image names are <case>_<CCCC>{ending} (4-digit channel index)")
        channel = int(match["channel"])
        if channel >= len(channels):
            raise SourceError(f"{f}: channel {channel:04d}, but dataset.json declares {len(channels)} channel(s) {channels}")
        groups.setdefault(match["case"], {})[channel] = f
    label_dir = root / labels if labels else None
    cases = []
    for case_id in sorted(groups):
        found = groups[case_id]
        missing = [i for i in range(len(channels)) if i not in found]
        if missing:
            raise SourceError(f"{image_dir / f'{case_id}_{missing[0]:04d}{ending}'}: missing channel {missing[0]} "
                              f"({channels[missing[0]]}) of case {case_id!r}")
        mask = None
        if label_dir is not None:
            label = label_dir / f"{case_id}{ending}"
            if not label.is_file():
                raise SourceError(f"{label}: label file of case {case_id!r} not found")
            mask = str(label.resolve())
        image = tuple(str(found[i].resolve()) for i in range(len(channels)))
        cases.append(Case(case_id, image, case_id, mask=mask, split=split, source=str(root)))
    if label_dir is not None and label_dir.is_dir():
        orphans = sorted(f for f in label_dir.iterdir()
                         if f.name.endswith(ending) and not f.name.startswith(".") and f.name[: -len(ending)] not in groups)
        if orphans:
            raise SourceError(f"{orphans[0]}: label file without images (no {orphans[0].name[: -len(ending)]}_0000{ending} "
                              f"in {image_dir}); {len(orphans)} such label file(s)")
    return cases


# ----------------------------------------------------------------------------------------------- MedMNIST


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
    return _read_json(sidecar) if sidecar.is_file() else {}


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


# ----------------------------------------------------------------------------------------------- DICOM


def looks_like_dicom_tree(root: Path, sample: int = DICOM_SNIFF_FILES) -> bool:
    """True when the first DICOM image files of a sorted walk include two slices of one series.

    A folder of single-file DICOM images (radiographs, perhaps in class folders) stays a plain image folder,
    and so does a folder whose first image file is not DICOM. At most ``4 * sample`` files are opened.
    """
    seen: set[str] = set()
    opened = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith("."):
                continue
            suffix = image_suffix(path)
            if suffix and suffix not in DICOM_SUFFIXES:
                return False
            opened += 1
            if len(seen) >= sample or opened > 4 * sample:
                return False
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Rows"])
            except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
                continue
            if "Rows" not in ds:
                continue
            uid = str(ds.get("SeriesInstanceUID", ""))
            if uid and uid in seen:
                return True
            seen.add(uid)
    return False


def load_dicom_tree(root: Path) -> DatasetSpec:
    """Every non-localizer DICOM series below ``root`` as one case (see the module docstring)."""
    root = root.resolve()
    try:
        scan = scan_dicom_tree(root)
    except ReadError as e:
        raise SourceError(str(e)) from None
    series = [s for s in scan.series if not s.is_localizer]
    log_scan_warnings(scan, root)
    if not series:
        raise SourceError(f"{root}: no DICOM image series ({len(scan.series)} localizer(s), {len(scan.non_dicom)} "
                          f"non-DICOM files, {len(scan.no_pixels)} DICOM files without pixels)")
    headers = [_series_header(s.files[0]) for s in series]
    base_ids = []
    for s, (patient, number) in zip(series, headers):
        base = f"{patient or 'series'}_{number}" if number else f"{patient or 'series'}_{s.uid}"
        base_ids.append(base + (f"_p{s.part.split('/')[0]}" if s.part else ""))
    repeated = {b for b, n in Counter(base_ids).items() if n > 1}
    cases = []
    for s, (patient, _), base in zip(series, headers, base_ids):
        case_id = base
        if base in repeated:
            case_id = f"{patient or 'series'}_{s.uid}" + (f"_p{s.part.split('/')[0]}" if s.part else "")
        rel = Path(s.folder).relative_to(root) if Path(s.folder) != root else Path(root.name)
        cases.append(Case(case_id, (series_path(s),), patient or rel.as_posix(), split=_folder_split(rel.parts),
                          modality=s.modality, source=str(root), attributes=s.attributes))
    modalities = {c.modality for c in cases}
    dims = {3 if len(s.files) > 1 else 2 for s in series}
    return DatasetSpec(root=root, cases=cases, spatial_dims=dims.pop() if len(dims) == 1 else None,
                       modality=modalities.pop() if len(modalities) == 1 else None, kind="dicom")


def _series_header(path: str) -> tuple[str, str]:
    """(PatientID, SeriesNumber) of a series' first file, empty strings when absent."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "SeriesNumber"])
    return str(ds.get("PatientID", "") or "").strip(), str(ds.get("SeriesNumber", "") or "").strip()


def _folder_split(parts: Iterable[str]) -> str | None:
    split = next((p.lower() for p in parts if p.lower() in SPLIT_NAMES), None)
    return "val" if split == "validation" else split


# ------------------------------------------------------------------------------------------- JSON manifest


def load_json_manifest(path: Path) -> DatasetSpec:
    """A JSON list of case records, or a MONAI datalist with training / validation / test sections."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read JSON: {e}") from None
    declared: dict[str, Any] = {}
    if isinstance(data, list):
        sections: list[tuple[str, str | None, list[Any]]] = [("entries", None, data)]
    elif isinstance(data, dict):
        sections = [(key, split, data[key]) for key, split in _DATALIST_SECTIONS if key in data]
        if not sections:
            raise SourceError(f"{path}: expected a list of cases or a datalist with 'training', 'validation' or "
                              f"'test' (found keys {sorted(data)[:10]})")
        declared = _declared({k: v for k, v in data.items() if k in ("labels", "classes", "multilabel",
                                                                       "spatial_dims", "modality", "intensity")})
    else:
        raise SourceError(f"{path}: top level must be a list or an object, got {type(data).__name__}")
    root = path.parent
    classes = list(declared.get("classes") or [])
    cases: list[Case] = []
    seen: set[str] = set()
    multihot = False
    for section, split, entries in sections:
        if not isinstance(entries, list):
            raise SourceError(f"{path}: '{section}' must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            where = f"{path}: {section}[{i}]"
            case, is_multihot = _json_case(entry, root, split, classes, where, str(path))
            multihot |= is_multihot
            if case.case_id in seen:
                raise SourceError(f"{where}: duplicate case id {case.case_id!r} (give a 'case_id')")
            seen.add(case.case_id)
            cases.append(case)
    if not cases:
        raise SourceError(f"{path}: no cases")
    spec = DatasetSpec(root=root, cases=cases, kind="json", **declared)
    if not spec.classes:
        spec.classes = sorted({n for c in cases for n in c.class_names()}, key=_numeric_first)
    spec.multilabel = spec.multilabel or multihot or any(len(c.class_names()) > 1 for c in cases)
    return spec


def _json_case(entry: Any, root: Path, split: str | None, classes: Sequence[str], where: str,
               source: str) -> tuple[Case, bool]:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: expected an object or an image path, got {entry!r}")
    image = entry.get("image")
    rels = image if isinstance(image, list) else [image]
    if not rels or not all(isinstance(r, str) and r.strip() for r in rels):
        raise SourceError(f"{where}: 'image' must be a path or a list of paths, got {image!r}")
    images = tuple(str((root / r).resolve()) for r in rels)
    mask = entry.get("mask")
    if mask is not None and not isinstance(mask, str):
        raise SourceError(f"{where}: 'mask' must be a path, got {mask!r}")
    label, multihot = entry.get("label"), False
    if isinstance(label, str) and (image_suffix(label) or (root / label).is_file()):
        if mask is not None:
            raise SourceError(f"{where}: both 'mask' and a mask path in 'label' ({label!r})")
        mask, label = label, None
    else:
        label, multihot = _class_label(label, classes, where)
    case_id = str(entry.get("case_id") or strip_suffix(Path(images[0]).name))
    return Case(
        case_id=case_id,
        image=images,
        subject_id=str(entry.get("subject_id") or case_id),
        label=label,
        mask=str((root / mask).resolve()) if mask else None,
        split=_split_name(entry.get("split")) or split,
        modality=entry.get("modality"),
        source=source,
    ), multihot


def _class_label(value: Any, classes: Sequence[str], where: str) -> tuple[str | None, bool]:
    """A JSON class label as the ``a|b`` string of :class:`Case`; also whether it was a multi-hot vector."""
    if value is None or isinstance(value, str):
        return value, False
    if isinstance(value, bool):
        raise SourceError(f"{where}: label must be a class, a class index or a list, got {value!r}")
    if isinstance(value, (int, float)) and float(value).is_integer():
        return _class_name(int(value), classes), False
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "|".join(value), False
    if isinstance(value, list) and all(isinstance(v, (int, float)) and v in (0, 1) for v in value):
        if classes and len(classes) != len(value):
            raise SourceError(f"{where}: multi-hot label of length {len(value)}, but {len(classes)} classes are declared")
        return "|".join(_class_name(j, classes) for j, v in enumerate(value) if v), True
    raise SourceError(f"{where}: label must be a mask path, a class name, a class index, a list of names or a "
                      f"0/1 vector, got {value!r}")


def _class_name(index: int, classes: Sequence[str]) -> str:
    return classes[index] if 0 <= index < len(classes) else str(index)


def _numeric_first(name: str) -> tuple[int, int, str]:
    """Sort key: integer names by value ("2" before "10"), then other names alphabetically."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)
