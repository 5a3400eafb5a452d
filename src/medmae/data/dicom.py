"""DICOM: find image series in a folder tree and read them as RAS+ volumes (pydicom 3).

Rules
-----
- Which files make which series (grouping, localizers, copies in several folders, broken and non-DICOM
  files) is decided by the header scan in :mod:`medmae.data.dicom_scan`; its names are importable from here.
- Slices are ordered by ImagePositionPatient projected on the slice normal (row x column cosines), never
  by file name or InstanceNumber. Duplicate positions and irregular gaps (missing slices) raise
  :class:`~medmae.errors.ReadError`; gantry tilt is kept as a sheared affine.
- Pixel values: RescaleSlope/RescaleIntercept are applied per slice in float32 first (uint16 stored values
  with intercept -1024 give HU without wrap-around). MONOCHROME1 is then inverted to the MONOCHROME2
  convention (bright = high) within the stored bit range: ``v -> lo + hi - v``. No VOI LUT/windowing,
  no vendor-private scaling. YBR colour is decoded to RGB, PALETTE COLOR through its LUT.
- A series of several slices gives ``(C, X, Y, Z)`` (X along the row direction = columns), affine in RAS+
  (DICOM patient coordinates are LPS). A single file / single-slice series gives 2D ``(C, H, W)``
  with spacing from PixelSpacing (or ImagerPixelSpacing for CR/DX) and no affine.
- Multi-frame objects (NumberOfFrames > 1, enhanced CT/MR, cine) are not supported.
- One series, even when several share a folder, is addressed by the virtual path
  ``<folder>::<SeriesInstanceUID>[::<i>]`` (:func:`series_path`); ``i`` picks part ``i/n`` of a UID that a
  scan of ``folder`` splits, and is omitted otherwise. :func:`medmae.data.readers.read_image` reads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut

from medmae.data.dicom_scan import (DicomScan, DicomSeries, find_series, log_scan_warnings, require_whole,
                                    scan_dicom_tree)
from medmae.data.image import ImageMeta, StoredImage, stored_to_output
from medmae.errors import ReadError

__all__ = ["DicomScan", "DicomSeries", "find_series", "load_dicom", "load_series", "log_scan_warnings", "read_series",
           "scan_dicom_tree", "series_path"]

logger = logging.getLogger(__name__)

CODECS_HINT = "pip install 'medmae[dicom-codecs]'"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_DUPLICATE_MM = 0.01  # slices closer than this along the normal are the same position
_ORIENTATION_ATOL = 1e-4  # direction-cosine tolerance for "same orientation"
_HEADER_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError)
_DECODE_ERRORS = (RuntimeError, NotImplementedError, ValueError, AttributeError, OSError, EOFError, TypeError)


def read_series(
    series: DicomSeries | str | Path, *, reorient: bool = True, gap_rtol: float = 0.1
) -> tuple[np.ndarray, ImageMeta]:
    """Read a series (or a folder holding exactly one non-localizer series) as float32.

    Returns ``(C, X, Y, Z)`` (C = 1 for greyscale) with a RAS+ affine, or ``(C, H, W)`` for a single
    slice. ``gap_rtol``: allowed relative deviation of each slice gap from the median gap.
    """
    if not isinstance(series, DicomSeries):
        series = _single_series(Path(series))
    return stored_to_output(load_series(series, gap_rtol=gap_rtol), series.folder, reorient=reorient)


def load_dicom(path: Path) -> StoredImage:
    """Entry point for :func:`medmae.data.readers.read_image`: a folder (one series) or a single file (2D)."""
    if path.is_dir():
        return load_series(_single_series(path))
    return _load_file_2d(path)


def series_path(series: DicomSeries) -> str:
    """Virtual path that :func:`load_series_path` resolves to exactly ``series``.

    The part index is the one a scan of ``series.folder`` gives (parts of the UID lying elsewhere do not
    count), so the path stays valid for a reader that only scans that folder.
    """
    base = f"{series.folder}::{series.uid}"
    if series.part is None:
        return base
    same_uid = [s for s in scan_dicom_tree(series.folder).series if s.uid == series.uid]
    if len(same_uid) == 1:
        return base
    match = next((s for s in same_uid if sorted(s.files) == sorted(series.files)), None)
    if match is None or match.part is None:
        raise ReadError(f"{series.folder}: series {series.label} changed while it was being listed")
    return f"{base}::{match.part.split('/')[0]}"


def load_series_path(folder: Path, member: tuple[str, ...]) -> StoredImage:
    """Stored image of the series named by ``member`` = ``(uid,)`` or ``(uid, part index)`` below ``folder``."""
    where = f"{folder}::{'::'.join(member)}"
    if not member or len(member) > 2 or (len(member) == 2 and not member[1].isdigit()):
        raise ReadError(f"{where}: expected <folder>::<SeriesInstanceUID>[::<part>]")
    uid = member[0]
    scan = scan_dicom_tree(folder)
    same_uid = [s for s in scan.series if s.uid == uid]
    if len(member) == 2:
        chosen = [s for s in same_uid if s.part and s.part.split("/")[0] == member[1]]
    else:
        chosen = [s for s in same_uid if not s.is_localizer] if len(same_uid) > 1 else same_uid
    if len(chosen) != 1:
        found = "; ".join(s.label for s in same_uid) or "none"
        raise ReadError(f"{where}: expected one DICOM series, found {len(chosen)} (series with this UID: {found})")
    require_whole(scan, chosen[0])
    return load_series(chosen[0])


def load_series(series: DicomSeries, *, gap_rtol: float = 0.1) -> StoredImage:
    """Stored (not reoriented) ``(C, X, Y, Z)`` volume with its RAS+ affine; one slice -> 2D."""
    if len(series.files) == 1:
        return _load_file_2d(Path(series.files[0]))
    slices = [_read_slice(Path(f)) for f in series.files]
    where = f"{series.folder}: series {series.uid}"
    _check_consistent(slices, where)
    row, col = slices[0].iop[:3], slices[0].iop[3:]
    normal = np.cross(row, col)
    positions = np.array([s.ipp @ normal for s in slices])
    order = np.argsort(positions, kind="stable")
    slices = [slices[i] for i in order]
    _check_gaps(positions[order], [s.path for s in slices], where, gap_rtol)
    step = (slices[-1].ipp - slices[0].ipp) / (len(slices) - 1)
    row_mm, col_mm = slices[0].pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * col_mm  # array axis 0 runs along a row, i.e. across columns
    affine_lps[:3, 1] = col * row_mm
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = slices[0].ipp
    affine = np.eye(4)
    affine[:3] = _LPS_TO_RAS @ affine_lps[:3]
    volume = np.stack([s.pixels.transpose(2, 1, 0) for s in slices], axis=-1)  # (C, cols, rows, Z)
    return StoredImage(
        volume,
        affine,
        slices[0].source_dtype,
        modality=slices[0].modality,
        channel_names=_channel_names(volume.shape[0]),
    )


@dataclass(frozen=True, eq=False)
class _Slice:
    path: str
    ipp: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    iop: np.ndarray  # (6,) ImageOrientationPatient row then column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    pixels: np.ndarray  # (rows, cols, C) float32, rescaled
    source_dtype: str
    modality: str | None


def _single_series(folder: Path) -> DicomSeries:
    """The one non-localizer series under ``folder`` (a lone localizer is accepted)."""
    scan = scan_dicom_tree(folder)
    candidates = [s for s in scan.series if not s.is_localizer] or scan.series
    if not candidates:
        raise ReadError(
            f"{folder}: no DICOM image series found ({len(scan.non_dicom)} non-DICOM files, "
            f"{len(scan.no_pixels)} DICOM files without pixels)"
        )
    if len(candidates) > 1:
        listing = "; ".join(s.label for s in candidates)
        raise ReadError(f"{folder}: holds {len(candidates)} DICOM series, pick one with find_series: {listing}")
    require_whole(scan, candidates[0])
    return candidates[0]


def _read_dataset(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except _HEADER_ERRORS as exc:
        raise ReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _load_file_2d(path: Path) -> StoredImage:
    ds = _read_dataset(path)
    pixels, source_dtype = _pixels(ds, path)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing_2d = (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)
    return StoredImage(
        pixels.transpose(2, 0, 1),
        None,
        source_dtype,
        spacing_2d=spacing_2d,
        modality=ds.get("Modality") or None,
        channel_names=_channel_names(pixels.shape[-1]),
    )


def _channel_names(n_channels: int) -> tuple[str, ...] | None:
    """Decoded colour DICOM (RGB, YBR, PALETTE COLOR) is RGB; grey has no channel names."""
    return ("R", "G", "B") if n_channels == 3 else None


def _read_slice(path: Path) -> _Slice:
    ds = _read_dataset(path)
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if not ds.get(k)]
    if missing:
        raise ReadError(f"{path}: missing {', '.join(missing)}; cannot place the slice in a volume")
    pixels, source_dtype = _pixels(ds, path)
    return _Slice(
        path=str(path),
        ipp=np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
        iop=np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64),
        pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
        pixels=pixels,
        source_dtype=source_dtype,
        modality=ds.get("Modality") or None,
    )


def _pixels(ds: Dataset, path: Path) -> tuple[np.ndarray, str]:
    """Decoded, rescaled float32 ``(rows, cols, C)`` pixels and the stored dtype name."""
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; convert it (e.g. dcm2niix)")
    raw = _decode(ds, path)
    source_dtype = raw.dtype.name
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
    slope = _float_attr(ds, "RescaleSlope", 1.0)
    intercept = _float_attr(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise ReadError(f"{path}: RescaleSlope is 0")
    x = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = _invert_monochrome1(x, ds, slope, intercept)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ReadError(f"{path}: unexpected decoded pixel shape {raw.shape}")
    return x, source_dtype


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    """``ds.pixel_array`` with a ReadError naming the file and, for compressed data, the codec hint."""
    if "PixelData" not in ds:
        raise ReadError(f"{path}: DICOM file has no pixel data (Modality {ds.get('Modality')})")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except _DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())
        if syntax is not None and syntax.is_compressed:
            raise ReadError(
                f"{path}: cannot decode {syntax.name} ({syntax}) pixel data with the installed codecs "
                f"({reason}); install the optional codecs with: {CODECS_HINT}"
            ) from exc
        raise ReadError(f"{path}: corrupt or truncated pixel data ({type(exc).__name__}: {reason})") from exc


def _float_attr(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    return default if value is None or value == "" else float(value)


def _invert_monochrome1(x: np.ndarray, ds: Dataset, slope: float, intercept: float) -> np.ndarray:
    """Map MONOCHROME1 (bright = low) to MONOCHROME2 within the rescaled range of the stored bits."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        stored_lo, stored_hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        stored_lo, stored_hi = 0, 2**bits - 1
    total = (stored_lo + stored_hi) * slope + 2 * intercept
    return (np.float32(total) - x).astype(np.float32)


def _check_consistent(slices: list[_Slice], where: str) -> None:
    """All slices share orientation, pixel spacing, size and channel count."""
    ref = slices[0]
    for s in slices[1:]:
        if np.abs(s.iop - ref.iop).max() > _ORIENTATION_ATOL:
            raise ReadError(f"{where}: {s.path} orientation {s.iop.round(4).tolist()} differs from {ref.path}")
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, rtol=1e-4):
            raise ReadError(f"{where}: {s.path} PixelSpacing {s.pixel_spacing} differs from {ref.pixel_spacing}")
        if s.pixels.shape != ref.pixels.shape:
            raise ReadError(f"{where}: {s.path} pixel shape {s.pixels.shape} differs from {ref.pixels.shape}")


def _check_gaps(positions: np.ndarray, paths: list[str], where: str, gap_rtol: float) -> None:
    """Sorted slice positions must be distinct and evenly spaced (within ``gap_rtol`` of the median gap)."""
    gaps = np.diff(positions)
    dup = np.flatnonzero(gaps < _DUPLICATE_MM)
    if dup.size:
        i = int(dup[0])
        raise ReadError(
            f"{where}: {dup.size} duplicate slice position(s), e.g. {paths[i]} and {paths[i + 1]} "
            f"both at {positions[i]:.3f} mm along the slice normal"
        )
    expected = float(np.median(gaps))
    irregular = np.flatnonzero(np.abs(gaps - expected) > gap_rtol * expected)
    if irregular.size:
        i = int(irregular[0])
        raise ReadError(
            f"{where}: non-uniform slice spacing (missing slices?): gap {gaps[i]:.3f} mm between {paths[i]} "
            f"and {paths[i + 1]}, expected {expected:.3f} mm ({irregular.size} irregular gap(s))"
        )
