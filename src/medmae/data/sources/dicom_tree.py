"""DICOM tree layout: a folder whose first DICOM files include two slices of one series.

Every non-localizer series found by :func:`medmae.data.dicom.scan_dicom_tree` is a case addressed as
``<folder>::<SeriesInstanceUID>[::<part>]``; ``subject_id`` is PatientID (else the series folder relative to the
root), ``case_id`` is ``<PatientID>_<SeriesNumber>`` (``_p<part>`` for a split UID), or ``<PatientID>_<UID>``
where that is not unique. ``train``/``val``/``test`` folder names give the split.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from medmae.data.cases import Case, DatasetSpec, folder_split
from medmae.data.dicom import log_scan_warnings, scan_dicom_tree, series_path
from medmae.data.image import DICOM_SUFFIXES, image_suffix
from medmae.errors import ReadError, SourceError

DICOM_SNIFF_FILES = 16  # DICOM files looked at when deciding whether a folder is a DICOM tree


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
        cases.append(Case(case_id, (series_path(s),), patient or rel.as_posix(), split=folder_split(rel.parts),
                          modality=s.modality, source=str(root), attributes=s.attributes))
    modalities = {c.modality for c in cases}
    dims = {3 if len(s.files) > 1 else 2 for s in series}
    return DatasetSpec(root=root, cases=cases, spatial_dims=dims.pop() if len(dims) == 1 else None,
                       modality=modalities.pop() if len(modalities) == 1 else None, kind="dicom")


def _series_header(path: str) -> tuple[str, str]:
    """(PatientID, SeriesNumber) of a series' first file, empty strings when absent."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "SeriesNumber"])
    return str(ds.get("PatientID", "") or "").strip(), str(ds.get("SeriesNumber", "") or "").strip()
