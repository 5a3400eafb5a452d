"""DICOM tree scan: which files make which image series (headers only, no pixels).

Rules
-----
- Files are grouped by SeriesInstanceUID; within one UID, localizers (ImageType contains LOCALIZER) and
  slices of different orientation or size become separate :class:`DicomSeries` (``part`` "i/n").
- Copies of one series in several folders (the same SOPInstanceUID in more than one folder) become one
  series per folder (parts of the UID), never one series with every slice twice; the scan lists them in
  ``copies``. A series whose slices are spread over folders without repeats stays one series.
- Files without the ``DICM`` Part-10 header and without a DICOM suffix are counted as non-DICOM; DICOM
  objects without pixels (RTSTRUCT, SR, DICOMDIR...) as ``no_pixels``. A file that claims to be DICOM (the
  ``DICM`` magic or a ``.dcm`` suffix) but does not parse, or an image object (SOP class "... Image
  Storage") whose header ends before Rows/Columns (truncated), is ``broken``: reading a series it may belong
  to (same UID, or an unknown UID in one of its folders) raises a ReadError naming the broken file.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medmae.data.image import DICOM_SUFFIXES
from medmae.data.series_filter import series_attributes
from medmae.errors import ReadError

logger = logging.getLogger(__name__)

_ORIENTATION_DECIMALS = 3  # rounding of ImageOrientationPatient when grouping files
_HEADER_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError)


@dataclass(frozen=True)
class DicomSeries:
    """The files of one image series (or one part of a SeriesInstanceUID, see ``part``)."""

    uid: str
    files: tuple[str, ...]
    modality: str | None
    description: str | None
    rows: int
    columns: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient, rounded to 1e-3
    is_localizer: bool
    part: str | None = None  # "i/n" when the UID was split by orientation, size, localizer flag or folder copy
    attributes: tuple[tuple[str, str], ...] = ()  # of the first file, for data.include / data.exclude

    @property
    def folder(self) -> str:
        """Deepest folder holding all files."""
        return os.path.dirname(self.files[0]) if len(self.files) == 1 else os.path.commonpath(self.files)

    @property
    def label(self) -> str:
        """Human-readable identity for messages: UID, part, localizer flag, file count, modality."""
        extras = [f"part {self.part}"] if self.part else []
        extras += ["localizer"] if self.is_localizer else []
        extras += [f"{len(self.files)} files", self.modality or "?", f"{self.rows}x{self.columns}"]
        if self.description:
            extras.append(repr(self.description))
        return f"{self.uid} ({', '.join(extras)})"


@dataclass(frozen=True)
class BrokenFile:
    """A file that claims to be DICOM but cannot be used; ``uid`` when its header got that far."""

    path: str
    reason: str
    uid: str | None = None


@dataclass(frozen=True)
class DicomScan:
    """Result of walking a folder tree: the series found and the files that were skipped."""

    series: list[DicomSeries]
    non_dicom: tuple[str, ...]
    no_pixels: tuple[str, ...]
    broken: tuple[BrokenFile, ...] = ()
    copies: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (SeriesInstanceUID, its folders)


def scan_dicom_tree(root: str | Path) -> DicomScan:
    """Walk ``root`` (sorted, deterministic) and group DICOM image files into series."""
    root = Path(root)
    if not root.is_dir():
        raise ReadError(f"{root}: not a folder")
    groups: dict[tuple, list[tuple[str, Dataset]]] = defaultdict(list)
    non_dicom: list[str] = []
    no_pixels: list[str] = []
    broken: list[BrokenFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except _HEADER_ERRORS as exc:
                if claims_dicom(path):
                    broken.append(BrokenFile(path, f"does not parse: {type(exc).__name__}: {exc}"))
                else:
                    non_dicom.append(path)
                continue
            if "Rows" not in ds or "Columns" not in ds:
                if claims_dicom(path) and _image_class_or_none(ds):
                    broken.append(BrokenFile(path, "image header ends before Rows/Columns (truncated?)",
                                             str(ds.get("SeriesInstanceUID", "")) or None))
                else:
                    no_pixels.append(path)
                continue
            groups[_group_key(ds, dirpath)].append((path, ds))
    groups, copies = _split_copies(groups)
    series = _make_series(groups)
    logger.debug("%s: %d series, %d non-DICOM files, %d DICOM files without pixels, %d broken", root, len(series),
                 len(non_dicom), len(no_pixels), len(broken))
    return DicomScan(series, tuple(non_dicom), tuple(no_pixels), tuple(broken), tuple(copies))


def find_series(root: str | Path) -> list[DicomSeries]:
    """DICOM image series under ``root`` (see :func:`scan_dicom_tree` for the skipped-file counts)."""
    return scan_dicom_tree(root).series


def claims_dicom(path: str) -> bool:
    """A DICOM suffix, or ``DICM`` after the 128-byte preamble."""
    if path.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _image_class_or_none(ds: Dataset) -> bool:
    """The SOP class is an image storage class, or the header ended before naming one."""
    meta = getattr(ds, "file_meta", None)
    sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return sop is None or "Image Storage" in str(getattr(sop, "name", ""))


def broken_files_of(scan: DicomScan, series: DicomSeries) -> list[BrokenFile]:
    """Broken files that may be slices of ``series``: its UID, or an unknown UID in one of its folders."""
    folders = {os.path.dirname(f) for f in series.files}
    return [b for b in scan.broken if b.uid == series.uid or (b.uid is None and os.path.dirname(b.path) in folders)]


def require_whole(scan: DicomScan, series: DicomSeries) -> None:
    """ReadError naming the first broken file that may belong to ``series``."""
    bad = broken_files_of(scan, series)
    if bad:
        more = f" (and {len(bad) - 1} more broken file(s))" if len(bad) > 1 else ""
        raise ReadError(f"{bad[0].path}: broken DICOM file, {bad[0].reason}; series {series.uid} in "
                        f"{series.folder} cannot be read whole{more}")


def scan_warnings(scan: DicomScan) -> list[str]:
    """One line each for the broken files and the copied series of a scan."""
    out = []
    if scan.broken:
        shown = "; ".join(f"{b.path} ({b.reason})" for b in scan.broken[:5])
        out.append(f"{len(scan.broken)} broken DICOM file(s), their series cannot be read: {shown}")
    for uid, folders in scan.copies:
        out.append(f"series {uid} is copied in {len(folders)} folders ({', '.join(folders)}): each copy is a case")
    return out


def log_scan_warnings(scan: DicomScan, root: str | Path) -> None:
    """Log :func:`scan_warnings` once, for the tree a dataset is read from."""
    for warning in scan_warnings(scan):
        logger.warning("%s: %s", root, warning)


def _group_key(ds: Dataset, dirpath: str) -> tuple:
    uid = str(ds.get("SeriesInstanceUID", "") or f"(no SeriesInstanceUID in {dirpath})")
    iop = ds.get("ImageOrientationPatient")
    iop_key = tuple(round(float(v), _ORIENTATION_DECIMALS) for v in iop) if iop else None
    return (uid, _is_localizer(ds), iop_key, int(ds.Rows), int(ds.Columns))


def _is_localizer(ds: Dataset) -> bool:
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).upper() == "LOCALIZER" for v in values)


def _instance_id(ds: Dataset) -> str:
    """SOPInstanceUID, else InstanceNumber with ImagePositionPatient: the same slice in two copies."""
    return str(ds.get("SOPInstanceUID", "") or f"{ds.get('InstanceNumber')}@{ds.get('ImagePositionPatient')}")


def _split_copies(groups: dict[tuple, list[tuple[str, Dataset]]]) -> tuple[dict[tuple, list], list]:
    """Groups keyed ``(*key, folder)``: a group whose instances repeat across folders is split per folder."""
    out: dict[tuple, list[tuple[str, Dataset]]] = {}
    copies = []
    for key, members in groups.items():
        by_folder: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
        for path, ds in members:
            by_folder[os.path.dirname(path)].append((path, ds))
        ids = [{_instance_id(ds) for _, ds in part} for part in by_folder.values()]
        if len(by_folder) > 1 and sum(len(i) for i in ids) > len(set().union(*ids)):
            out.update({(*key, folder): part for folder, part in sorted(by_folder.items())})
            copies.append((key[0], tuple(sorted(by_folder))))
        else:
            out[(*key, "")] = members
    return out, copies


def _make_series(groups: dict[tuple, list[tuple[str, Dataset]]]) -> list[DicomSeries]:
    per_uid: dict[str, list[tuple]] = defaultdict(list)
    for key in groups:
        per_uid[key[0]].append(key)
    series = []
    for uid, keys in per_uid.items():
        keys.sort(key=lambda k: (k[1], str(k[2]), k[3], k[4], k[5]))
        for i, key in enumerate(keys, start=1):
            members = groups[key]
            first = members[0][1]
            series.append(
                DicomSeries(
                    uid=uid,
                    files=tuple(path for path, _ in members),
                    modality=first.get("Modality") or None,
                    description=str(first.get("SeriesDescription", "")) or None,
                    rows=key[3],
                    columns=key[4],
                    orientation=key[2],
                    is_localizer=key[1],
                    part=f"{i}/{len(keys)}" if len(keys) > 1 else None,
                    attributes=series_attributes(first),
                )
            )
    series.sort(key=lambda s: (s.folder, s.uid, s.part or ""))
    return series
