"""CSV manifest layout: columns ``path[,label][,mask][,subject_id][,split][,case_id][,modality]`` (``image`` is
read as ``path``, MONAI's name for it).

Paths are relative to the CSV's folder; ``a;b`` in ``path`` lists one image's channel files. ``label`` is a class
name (``a|b`` for several). A ``dataset.json`` beside the CSV adds declarations (labels, classes, modality).
"""

from __future__ import annotations

import csv
from pathlib import Path

from medmae.data.cases import Case, DatasetSpec, declared, read_json, split_name, strip_suffix
from medmae.errors import SourceError


IMAGE_COLUMNS = ("path", "image")  # the image column, by the first name present


def load_manifest(path: Path) -> DatasetSpec:
    """CSV manifest; paths relative to the CSV's folder. A ``dataset.json`` beside it adds declarations."""
    root = path.parent
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read CSV: {e}") from None
    column = next((c for c in IMAGE_COLUMNS if rows and c in rows[0]), None)
    if column is None:
        raise SourceError(f"{path}: manifest needs a 'path' (or 'image') column "
                          f"(found {list(rows[0]) if rows else 'no rows'})")
    cases, seen = [], set()
    for i, row in enumerate(rows, start=2):
        rel = (row.get(column) or "").strip()
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
                split=split_name(row.get("split")),
                modality=(row.get("modality") or "").strip() or None,
                source=str(path),
            )
        )
    declarations = declared(read_json(root / "dataset.json")) if (root / "dataset.json").is_file() else {}
    spec = DatasetSpec(root=root, cases=cases, kind="manifest", **declarations)
    if not spec.classes:
        names = sorted({n for c in cases for n in c.class_names()})
        spec.classes = names
        spec.multilabel = any(len(c.class_names()) > 1 for c in cases)
    return spec
