"""Sources: enumerate the cases of a dataset from a folder, a CSV manifest or an MSD ``dataset.json``.

Every source yields :class:`Case` records (ids, image path(s), optional class label / mask, split) inside a
:class:`DatasetSpec` that also carries what the dataset declares (segmentation label names, class names).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medmae.data.readers import SUPPORTED_SUFFIXES as IMAGE_SUFFIXES
from medmae.data.readers import is_image_file
from medmae.errors import SourceError

SPLIT_NAMES = ("train", "val", "validation", "test")


@dataclass(frozen=True)
class Case:
    """One image (one file, or one file per channel) with its optional annotations."""

    case_id: str
    image: tuple[str, ...]
    subject_id: str
    label: str | None = None
    mask: str | None = None
    split: str | None = None
    modality: str | None = None
    source: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()  # DICOM attributes for data.include / data.exclude

    @property
    def path(self) -> str:
        return self.image[0]

    def class_names(self) -> list[str]:
        """Class names of the label column (``a|b`` for multi-label; empty for no finding)."""
        return [c for c in (self.label or "").split("|") if c]


@dataclass
class DatasetSpec:
    root: Path
    cases: list[Case]
    label_names: dict[int, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    multilabel: bool = False
    spatial_dims: int | None = None
    modality: str | None = None
    intensity: dict[str, Any] | None = None
    kind: str = "folder"

    def select(self, splits: Sequence[str] | None) -> DatasetSpec:
        """Cases whose split is in ``splits`` (None keeps all)."""
        if splits is None:
            return self
        keep = [c for c in self.cases if (c.split or "train") in splits]
        return replace(self, cases=keep)

    def labelled(self) -> DatasetSpec:
        return replace(self, cases=[c for c in self.cases if c.mask or c.label is not None])


def strip_suffix(name: str) -> str:
    lower = name.lower()
    for suf in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def load_source(path: str | Path) -> DatasetSpec:
    """Detect the layout at ``path`` and enumerate its cases.

    - a ``.csv`` file: manifest with columns ``path[,label][,mask][,subject_id][,split][,case_id]``;
    - a ``.npz`` file: MedMNIST arrays (``train_images``, ``train_labels``, ...);
    - a ``.json`` file other than ``dataset.json``: JSON manifest (case list or MONAI datalist);
    - a folder with ``dataset.json`` holding ``channel_names`` and ``file_ending``: nnU-Net v2 raw layout;
    - a folder with ``dataset.json`` holding ``training``: Medical Segmentation Decathlon layout;
    - a folder with ``manifest.csv``: that manifest;
    - a folder whose first DICOM files include two slices of one series: DICOM tree, one case per series;
    - any other folder: images found below it; ``train/val/test`` folders give the split and
      class-named sub-folders the class label.

    The layouts beyond CSV, MSD and plain folders are described in :mod:`medmae.data.layouts`.
    """
    from medmae.data import layouts  # deferred: layouts builds on this module

    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".csv":
            return load_manifest(p)
        if suffix == ".npz":
            return layouts.load_medmnist(p)
        if p.name == "dataset.json":
            return layouts.load_nnunet(p.parent) if layouts.is_nnunet_json(_read_json(p)) else load_msd(p.parent)
        if suffix == ".json":
            return layouts.load_json_manifest(p)
        raise SourceError(f"{p}: expected a folder, a .csv / .json manifest, a dataset.json or a MedMNIST .npz")
    ds_json = p / "dataset.json"
    if ds_json.is_file():
        meta = _read_json(ds_json)
        if layouts.is_nnunet_json(meta):
            return layouts.load_nnunet(p)
        if "training" in meta:
            return load_msd(p)
    if (p / "manifest.csv").is_file():
        return load_manifest(p / "manifest.csv")
    if layouts.looks_like_dicom_tree(p):
        return layouts.load_dicom_tree(p)
    return load_folder(p)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: top level must be an object")
    return data


def _declared(meta: dict[str, Any]) -> dict[str, Any]:
    """Label names, classes and hints declared in a dataset.json."""
    labels = meta.get("labels") or {}
    if labels and all(not str(k).lstrip("-").isdigit() for k in labels):
        labels = {v: k for k, v in labels.items()}  # nnU-Net style name -> int
    label_names = {int(k): str(v) for k, v in labels.items()}
    modality = meta.get("modality")
    if isinstance(modality, dict):
        modality = modality.get("0")
    return {
        "label_names": label_names,
        "classes": [str(c) for c in meta.get("classes") or []],
        "multilabel": bool(meta.get("multilabel", False)),
        "spatial_dims": meta.get("spatial_dims"),
        "modality": modality,
        "intensity": meta.get("intensity") if isinstance(meta.get("intensity"), dict) else (
            {"name": meta["intensity"]} if isinstance(meta.get("intensity"), str) else None
        ),
    }


def load_manifest(path: Path) -> DatasetSpec:
    """CSV manifest; paths relative to the CSV's folder. A ``dataset.json`` beside it adds declarations."""
    root = path.parent
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read CSV: {e}") from None
    if not rows or "path" not in rows[0]:
        raise SourceError(f"{path}: manifest needs a 'path' column (found {list(rows[0]) if rows else 'no rows'})")
    cases, seen = [], set()
    for i, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        if not rel:
            raise SourceError(f"{path}: line {i}: empty path")
        images = tuple(str((root / r.strip()).resolve()) for r in rel.split(";"))
        case_id = (row.get("case_id") or "").strip() or strip_suffix(Path(images[0]).name)
        if case_id in seen:
            raise SourceError(f"{path}: line {i}: duplicate case id {case_id!r}")
        seen.add(case_id)
        mask = (row.get("mask") or "").strip()
        label = row.get("label")
        cases.append(
            Case(
                case_id=case_id,
                image=images,
                subject_id=(row.get("subject_id") or "").strip() or case_id,
                label=None if label is None else label.strip(),
                mask=str((root / mask).resolve()) if mask else None,
                split=_split_name(row.get("split")),
                modality=(row.get("modality") or "").strip() or None,
                source=str(path),
            )
        )
    declared = _declared(_read_json(root / "dataset.json")) if (root / "dataset.json").is_file() else {}
    spec = DatasetSpec(root=root, cases=cases, kind="manifest", **declared)
    if not spec.classes:
        names = sorted({n for c in cases for n in c.class_names()})
        spec.classes = names
        spec.multilabel = any(len(c.class_names()) > 1 for c in cases)
    return spec


def _split_name(value: str | None) -> str | None:
    """A manifest's split, spelled as the folder layout spells it ('Test' -> 'test', 'validation' -> 'val')."""
    name = (value or "").strip().lower()
    return {"validation": "val", "": None}.get(name, name)


def load_msd(root: Path) -> DatasetSpec:
    """Medical Segmentation Decathlon folder: ``dataset.json`` with ``training`` (image, label) and ``test``."""
    meta = _read_json(root / "dataset.json")
    cases = []
    for entry in meta.get("training", []):
        img, lab = _msd_path(root, entry.get("image")), _msd_path(root, entry.get("label"))
        cid = strip_suffix(Path(img).name)
        cases.append(Case(cid, (img,), cid, mask=lab, split="train", source=str(root)))
    for entry in meta.get("test", []):
        img = _msd_path(root, entry if isinstance(entry, str) else entry.get("image"))
        cid = strip_suffix(Path(img).name)
        cases.append(Case(cid, (img,), cid, split="unlabelled", source=str(root)))
    if not cases:
        raise SourceError(f"{root / 'dataset.json'}: no 'training' or 'test' entries")
    declared = _declared(meta)
    # MSD's tensorImageSize counts the channel axis: "4D" (BraTS, prostate) is a 3D multi-channel image
    declared["spatial_dims"] = declared["spatial_dims"] or (2 if str(meta.get("tensorImageSize", "3D")).startswith("2") else 3)
    return DatasetSpec(root=root, cases=cases, kind="msd", **declared)


def _msd_path(root: Path, rel: str | None) -> str:
    if not rel:
        raise SourceError(f"{root / 'dataset.json'}: entry without a path")
    return str((root / rel).resolve())


def load_folder(root: Path) -> DatasetSpec:
    """Images below a folder; ``train/val/test`` parts of the path give the split, the parent folder the class."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and is_image_file(f))
    if not files:
        raise SourceError(f"{root}: no image files found (looked for {', '.join(IMAGE_SUFFIXES)})")
    cases, seen = [], {}
    has_classes = all(f.parent != root for f in files)
    for f in files:
        parts = f.relative_to(root).parts[:-1]
        split = next((p.lower() for p in parts if p.lower() in SPLIT_NAMES), None)
        if split == "validation":
            split = "val"
        class_dirs = [p for p in parts if p.lower() not in SPLIT_NAMES]
        label = class_dirs[-1] if has_classes and class_dirs else None
        cid = strip_suffix(f.name)
        if cid in seen:
            cid = "/".join(f.relative_to(root).with_name(cid).parts)
        seen[cid] = f
        cases.append(Case(cid, (str(f.resolve()),), cid, label=label, split=split, source=str(root)))
    classes = sorted({c.label for c in cases if c.label})
    return DatasetSpec(root=root, cases=cases, classes=classes, kind="folder")
