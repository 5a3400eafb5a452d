"""Medical Segmentation Decathlon layout: a folder with a ``dataset.json`` holding ``training`` (image, label pairs)
and ``test`` (images). Training cases are ``split="train"``, test images ``split="unlabelled"``; ``tensorImageSize``
("2D", "3D", or "4D" for a 3D multi-channel image) gives the spatial dims unless ``spatial_dims`` is declared.
"""

from __future__ import annotations

from pathlib import Path

from medmae.data.cases import Case, DatasetSpec, declared, read_json, strip_suffix
from medmae.errors import SourceError


def load_msd(root: Path) -> DatasetSpec:
    """Medical Segmentation Decathlon folder: ``dataset.json`` with ``training`` (image, label) and ``test``."""
    meta = read_json(root / "dataset.json")
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
    declarations = declared(meta)
    # MSD's tensorImageSize counts the channel axis: "4D" (BraTS, prostate) is a 3D multi-channel image
    declarations["spatial_dims"] = declarations["spatial_dims"] or (2 if str(meta.get("tensorImageSize", "3D")).startswith("2") else 3)
    return DatasetSpec(root=root, cases=cases, kind="msd", **declarations)


def _msd_path(root: Path, rel: str | None) -> str:
    if not rel:
        raise SourceError(f"{root / 'dataset.json'}: entry without a path")
    return str((root / rel).resolve())
