"""Shared dataset types: :class:`Case` (one image with its annotations), :class:`DatasetSpec` (a source's
cases and what it declares) and the lazy case lists of large pools (:class:`LazyCases`, :class:`Chain`), plus the
helpers every layout in :mod:`medmae.data.sources` uses.
"""

from __future__ import annotations

import bisect
import json
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

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


class LazyCases(Sequence[Case]):
    """A case list whose :class:`Case` objects are built on access (a pack's millions of rows): what it holds is
    O(1) Python objects whatever the number of cases. Passes over all cases go through :func:`distinct`.
    The one kind today is ``medmae.data.packed.PackCases``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def case(self, i: int) -> Case:
        """Case ``i`` (0 <= i < len)."""

    @abstractmethod
    def take(self, positions: np.ndarray) -> LazyCases:
        """The cases at ``positions`` (int array), still lazy."""

    @abstractmethod
    def tagged(self, *, modality: str | None = None, default_modality: str | None = None,
               source: str | None = None) -> LazyCases:
        """The same cases with ``modality`` (else their own, else ``default_modality``) and ``source`` set."""

    @abstractmethod
    def distinct(self, names: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
        """(distinct values of the fields ``names``, int64 code of each case): see :func:`distinct`."""

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"case {i} of {n}")
        return self.case(int(i) % n)

    def __iter__(self) -> Iterator[Case]:
        return (self.case(i) for i in range(len(self)))


class Chain(Sequence[Any]):
    """Sequences one after the other, without copying them (a pool of several packs)."""

    def __init__(self, parts: Sequence[Sequence[Any]]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        i = int(i) % len(self)
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]

    def __iter__(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part


def distinct(cases: Sequence[Case], *names: str) -> tuple[list[Any], np.ndarray]:
    """The distinct values of the fields ``names`` over ``cases`` (a tuple per value when several names) and each
    case's int64 code into them, in first-seen order: a pass over millions of cases that keeps O(distinct) objects.

    >>> distinct([Case("a", ("a.png",), "a", split="train"), Case("b", ("b.png",), "b")], "split")
    (['train', None], array([0, 1]))
    """
    if isinstance(cases, LazyCases):
        return cases.distinct(names)
    if isinstance(cases, Chain):
        values: dict[Any, int] = {}
        codes = []
        for part in cases.parts:
            part_values, part_codes = distinct(part, *names)
            remap = np.array([values.setdefault(v, len(values)) for v in part_values], np.int64)
            codes.append(remap[part_codes] if len(part_codes) else part_codes)
        return list(values), np.concatenate(codes) if codes else np.zeros(0, np.int64)
    memo: dict[Any, int] = {}
    if len(names) == 1:
        keys: Iterable[Any] = (getattr(c, names[0]) for c in cases)
    else:
        keys = (tuple(getattr(c, n) for n in names) for c in cases)
    out = np.fromiter((memo.setdefault(k, len(memo)) for k in keys), np.int64, len(cases))
    return list(memo), out


def tag_cases(cases: Sequence[Case], *, modality: str | None = None, default_modality: str | None = None,
              source: str | None = None) -> Sequence[Case]:
    """``cases`` with ``modality`` (else their own, else ``default_modality``) and, when given, ``source``."""
    if isinstance(cases, LazyCases):
        return cases.tagged(modality=modality, default_modality=default_modality, source=source)
    out = []
    for c in cases:
        mod = modality or c.modality or default_modality
        out.append(c if mod == c.modality and source in (None, c.source) else
                   replace(c, modality=mod, source=c.source if source is None else source))
    return out


@dataclass
class DatasetSpec:
    root: Path
    cases: Sequence[Case]  # a list, or a LazyCases for a pack
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
        if isinstance(self.cases, LazyCases):
            values, codes = distinct(self.cases, "split")
            wanted = [k for k, split in enumerate(values) if (split or "train") in splits]
            return replace(self, cases=self.cases.take(np.flatnonzero(np.isin(codes, wanted))))
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
