"""Plain folder layout: every image file below the folder is a case.

``train``/``val``/``validation``/``test`` folder names on the way give the split; when no image lies directly in
the root, the nearest other folder name is the case's class label. Case ids are file names without the suffix
(the relative path where two files share a name).
"""

from __future__ import annotations

from pathlib import Path

from medmae.data.cases import SPLIT_NAMES, Case, DatasetSpec, folder_split, strip_suffix
from medmae.data.image import SUPPORTED_SUFFIXES
from medmae.data.readers import is_image_file
from medmae.errors import SourceError


def load_folder(root: Path) -> DatasetSpec:
    """Images below a folder; ``train/val/test`` parts of the path give the split, the parent folder the class."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and is_image_file(f))
    if not files:
        raise SourceError(f"{root}: no image files found (looked for {', '.join(SUPPORTED_SUFFIXES)})")
    cases, seen = [], {}
    has_classes = all(f.parent != root for f in files)
    for f in files:
        parts = f.relative_to(root).parts[:-1]
        split = folder_split(parts)
        class_dirs = [p for p in parts if p.lower() not in SPLIT_NAMES]
        label = class_dirs[-1] if has_classes and class_dirs else None
        cid = strip_suffix(f.name)
        if cid in seen:
            cid = "/".join(f.relative_to(root).with_name(cid).parts)
        seen[cid] = f
        cases.append(Case(cid, (str(f.resolve()),), cid, label=label, split=split, source=str(root)))
    classes = sorted({c.label for c in cases if c.label})
    return DatasetSpec(root=root, cases=cases, classes=classes, kind="folder")
