"""Where ``medmae evaluate`` writes (one folder per evaluated split and dataset) and the units it reports in.

``RUN/eval/<split>/`` for the run's own splits, ``RUN/eval/<data-name>_<split>/`` for ``--data``; runs
evaluated before this layout have a single ``RUN/eval/summary.json``, which :func:`find_summary` still reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

from medmae.data.cases import Case
from medmae.data.image import PILLOW_SUFFIXES, image_suffix
from medmae.data.readers import split_virtual
from medmae.errors import SourceError

EVAL_DIR = "eval"
SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "per_case.csv"
_MANIFEST_SUFFIXES = (".csv", ".json", ".npz", ".yaml", ".yml")


def _slug(text: str) -> str:
    """A folder-name-safe version of ``text`` (letters, digits, ``.-_`` kept)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def data_name(data: str | Path) -> str:
    """Short name of a dataset path: the folder, or the manifest without its suffix (``dataset.json``: its folder)."""
    p = Path(str(data).rstrip("/"))
    if p.name.lower() in ("dataset.json", "dataset.yaml"):
        p = p.parent
    name = p.name[: -len(p.suffix)] if p.suffix.lower() in _MANIFEST_SUFFIXES else p.name
    return _slug(name)


def eval_dir(run_dir: str | Path, split: str, data: str | Path | None = None) -> Path:
    """``RUN/eval/<split>`` or, for other data, ``RUN/eval/<data-name>_<split>``; a folder that already holds
    another dataset's evaluation gets the path's short hash added, so evaluations never overwrite each other."""
    root = Path(run_dir) / EVAL_DIR
    if data is None:
        return root / _slug(split)
    out = root / f"{data_name(data)}_{_slug(split)}"
    previous = out / SUMMARY_FILE
    if previous.is_file() and json.loads(previous.read_text()).get("data") != str(data):
        digest = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:8]
        out = root / f"{data_name(data)}-{digest}_{_slug(split)}"
    return out


def find_summary(run_dir: str | Path, split: str = "test") -> Path | None:
    """The evaluation summary of a run's own ``split``: ``eval/<split>/summary.json``, or the single
    ``eval/summary.json`` of runs evaluated by older versions (when it is of that split); None if neither."""
    new = Path(run_dir) / EVAL_DIR / _slug(split) / SUMMARY_FILE
    if new.is_file():
        return new
    old = Path(run_dir) / EVAL_DIR / SUMMARY_FILE
    if old.is_file() and json.loads(old.read_text()).get("split", split) == split:
        return old
    return None


def has_physical_spacing(path: str) -> bool:
    """False for formats that store no voxel size (PNG/JPEG/TIFF via Pillow, ``.npz`` arrays): their spacing is
    1 per pixel, not millimetres."""
    virtual = split_virtual(path)
    if virtual is not None:
        return virtual[0].suffix.lower() != ".npz"
    return image_suffix(path) not in PILLOW_SUFFIXES


def length_unit(cases: Sequence[Case]) -> str:
    """``mm`` when every case's images carry a physical spacing, ``px`` when none does (HD95 is named by it)."""
    physical = {has_physical_spacing(p) for c in cases for p in c.image}
    if len(physical) > 1:
        raise SourceError(f"{cases[0].path}: these cases mix images with a physical spacing (mm) and without one "
                          "(PNG/JPEG/TIFF, .npz: pixels); HD95 cannot be averaged over both, evaluate them separately")
    return "mm" if physical != {False} else "px"
