"""JSON manifest layout: a list of case records, or a MONAI datalist.

A list of ``{"image", "label", "mask", "subject_id", "split", "case_id", "modality"}``, or a MONAI datalist
``{"training": [...], "validation": [...], "test": [...]}``. ``image`` is a path or a list of channel paths,
relative to the JSON's folder. A string ``label`` is a mask when it ends in an image suffix or names an existing
file, else a class name; an integer is a class index, a list of strings several classes, a list of numbers a
multi-hot vector.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmae.data.cases import Case, DatasetSpec, declared, split_name, strip_suffix
from medmae.data.image import image_suffix
from medmae.errors import SourceError

_DATALIST_SECTIONS = (("training", "train"), ("validation", "val"), ("test", "test"), ("testing", "test"))


def load_json_manifest(path: Path) -> DatasetSpec:
    """A JSON list of case records, or a MONAI datalist with training / validation / test sections."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: cannot read JSON: {e}") from None
    declarations: dict[str, Any] = {}
    if isinstance(data, list):
        sections: list[tuple[str, str | None, list[Any]]] = [("entries", None, data)]
    elif isinstance(data, dict):
        sections = [(key, split, data[key]) for key, split in _DATALIST_SECTIONS if key in data]
        if not sections:
            raise SourceError(f"{path}: expected a list of cases or a datalist with 'training', 'validation' or "
                              f"'test' (found keys {sorted(data)[:10]})")
        keys = ("labels", "classes", "multilabel", "spatial_dims", "modality", "intensity")
        declarations = declared({k: v for k, v in data.items() if k in keys})
    else:
        raise SourceError(f"{path}: top level must be a list or an object, got {type(data).__name__}")
    root = path.parent
    classes = list(declarations.get("classes") or [])
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
    spec = DatasetSpec(root=root, cases=cases, kind="json", **declarations)
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
        split=split_name(entry.get("split")) or split,
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
