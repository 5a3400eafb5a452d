"""Shared dataset types: :class:`Case` (one image with its annotations) and :class:`DatasetSpec` (a source's
cases and what it declares), plus the helpers every layout in :mod:`medmae.data.sources` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medmae.data.image import SUPPORTED_SUFFIXES
from medmae.errors import SourceError

SPLIT_NAMES = ("train", "val", "validation", "test")


@dataclass(frozen=True, slots=True)
class Case:
    """One image (one file, or one file per channel) with its optional annotations (slots: a pool of millions holds
    one per case)."""

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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled by its fields (Python 3.10's pickling of frozen slotted dataclasses fails in ``__setstate__``)."""
        return Case, tuple(getattr(self, f.name) for f in fields(self))


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
    """A file name without its image suffix (``case_01.nii.gz`` -> ``case_01``): the default case id."""
    lower = name.lower()
    for suf in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file whose top level is an object; :class:`SourceError` naming the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: top level must be an object")
    return data


def declared(meta: dict[str, Any]) -> dict[str, Any]:
    """Label names, classes and hints declared in a dataset.json (keyword arguments of :class:`DatasetSpec`)."""
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


def split_name(value: str | None) -> str | None:
    """A manifest's split, spelled as the folder layout spells it ('Test' -> 'test', 'validation' -> 'val')."""
    name = (value or "").strip().lower()
    return {"validation": "val", "": None}.get(name, name)


def folder_split(parts: Iterable[str]) -> str | None:
    """The split a folder path names (the first of ``train``/``val``/``validation``/``test``; 'validation' -> 'val')."""
    split = next((p.lower() for p in parts if p.lower() in SPLIT_NAMES), None)
    return "val" if split == "validation" else split
