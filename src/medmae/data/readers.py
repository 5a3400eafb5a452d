"""Read medical images into channel-first float32 arrays with their geometry: the dispatcher on the file type.

Formats: NIfTI (``.nii``, ``.nii.gz``, nibabel; :mod:`medmae.data.nifti`), NRRD/MHA/MHD (SimpleITK;
:mod:`medmae.data.itk`), PNG/JPEG/TIFF/GIF/BMP (Pillow; :mod:`medmae.data.raster`), ``.npz`` stacks
(:mod:`medmae.data.npz`) and DICOM (files, series folders; see :mod:`medmae.data.dicom`). Writing results back
in the input's geometry is :func:`medmae.data.writers.write_like`; the types are in :mod:`medmae.data.image`.

Conventions
-----------
- 3D arrays are ``(C, X, Y, Z)`` in voxel-index order of the file (NIfTI convention, also used for ITK and
  DICOM volumes), reoriented to RAS+ by default (axis 0 points Right, 1 Anterior, 2 Superior).
- 2D arrays are ``(C, H, W)`` (rows, columns). 2D images carry no affine (``affine``/``original_affine``/
  ``orientation`` are ``None``); ``spacing`` is ``(row_mm, col_mm)``, ``(1.0, 1.0)`` for PNG/JPEG/TIFF
  (DPI tags are print resolutions, not pixel sizes, and are ignored). EXIF rotation is not applied.
- A 2D NIfTI is read as 3D with ``Z = 1``; a 4D NIfTI ``(X, Y, Z, C)`` is one image with C channels.
- Colour images: RGB(A) gives 3 channels, alpha is dropped; palette images become RGB, or grey when the
  palette is grey. ``grey=True`` turns colour into 1 luminance channel (ITU-R BT.601 weights),
  ``grey=False`` turns grey into 3 identical channels, ``grey=None`` keeps the file's channels.
- NaN/Inf voxels are not an error here (the file is readable); count them with :func:`nonfinite_count`.

Virtual paths
-------------
``<file or folder>::<member>[::<more>]`` names one image inside a container (the part before the first
``::`` is a real path, so a content hash of it identifies the container):

- ``<file>.npz::<array>::<index>``: image ``index`` of array ``array`` in a NumPy archive (MedMNIST layout:
  ``(N, H, W)`` grey or ``(N, H, W, 3)`` colour 2D images, ``(N, D, H, W)`` volumes). 2D gives ``(C, H, W)``
  with spacing 1.0; 3D gives ``(1, D, H, W)`` with an identity affine (1 mm voxels, axes taken as stored and
  labelled RAS, so reorientation is a no-op: MedMNIST volumes carry no geometry). Values become float32.
- ``<folder>::<SeriesInstanceUID>[::<part>]``: one DICOM series below ``folder``, see
  :func:`medmae.data.dicom.series_path`.

A path that exists as written is never taken as virtual.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmae.data import dicom
from medmae.data.image import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    PILLOW_SUFFIXES,
    SUPPORTED_SUFFIXES,
    ImageMeta,
    StoredImage,
    image_suffix,
    stored_to_output,
)
from medmae.data.itk import read_itk
from medmae.data.nifti import read_nifti
from medmae.data.npz import read_npz_image
from medmae.data.raster import read_pillow
from medmae.errors import ReadError

# the suffix tables live with the image types (medmae.data.image); these are the names readers offer
__all__ = ["DICOM_SUFFIXES", "ITK_SUFFIXES", "NIFTI_SUFFIXES", "PILLOW_SUFFIXES", "SUPPORTED_SUFFIXES", "image_suffix",
           "is_image_file", "nonfinite_count", "read_image", "read_label", "split_virtual"]

logger = logging.getLogger(__name__)

_GEOMETRY_ATOL = 1e-3  # mm (and direction-cosine units) allowed between channel files of one image
_LABEL_ATOL = 1e-3  # a float label within this of an integer is that integer (2.9999 -> 3)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")


def nonfinite_count(array: np.ndarray) -> int:
    """Number of NaN / +-Inf elements (a data-check finding, not a read error)."""
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def is_image_file(path: str | Path) -> bool:
    """True for an existing, non-hidden file with a supported suffix, or a suffix-less DICOM (``DICM`` magic).

    Hidden files are skipped because archives often carry ``._name.nii.gz`` macOS resource forks.
    """
    p = Path(path)
    if p.name.startswith(".") or not p.is_file():
        return False
    if image_suffix(p):
        return True
    return p.suffix == "" and _has_dicom_magic(p)


def _has_dicom_magic(path: Path) -> bool:
    """DICOM Part 10 files hold ``DICM`` after a 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_image(
    path: str | Path | Sequence[str | Path],
    *,
    reorient: bool = True,
    expect_channels: int | None = None,
    grey: bool | None = None,
) -> tuple[np.ndarray, ImageMeta]:
    """Read an image as float32 ``(C, *spatial)`` plus its :class:`ImageMeta`.

    ``path`` may be a file, a DICOM folder holding exactly one series, or a sequence of paths giving one
    image whose channels are the files in order (nnU-Net ``_0000``/``_0001`` style); these must share shape
    and geometry. ``reorient`` turns 3D images to RAS+; ``grey`` see the module docstring;
    ``expect_channels`` raises :class:`ReadError` when the final channel count differs.
    """
    paths = _as_path_list(path)
    parts = [_read_stored(p, as_label=False) for p in paths]
    stored = _stack_channels(parts, paths)
    x, names = _apply_grey(stored.array.astype(np.float32, copy=False), stored.channel_names, grey, paths[0])
    if expect_channels is not None and x.shape[0] != expect_channels:
        raise ReadError(f"{paths[0]}: expected {expect_channels} channel(s), got {x.shape[0]}")
    stored = StoredImage(x, stored.affine, stored.source_dtype, stored.spacing_2d, stored.modality, names)
    return stored_to_output(stored, str(paths[0]), reorient=reorient)


def read_label(path: str | Path, *, reorient: bool = True) -> tuple[np.ndarray, ImageMeta]:
    """Read an integer label map ``(*spatial)`` (uint8 when values fit 0..255, else int16, else int32).

    Float files must hold integers up to 1e-3 (rounded); other values, NaN/Inf, or several different
    channels raise :class:`ReadError`. Palette PNG/GIF keep their palette indices. Several identical channels
    (a grey mask saved as RGB) are collapsed to one.
    """
    p = Path(path)
    stored = _read_stored(p, as_label=True)
    y = _single_channel_label(stored.array, p)
    y_int = _integral_label(y, p)
    stored = StoredImage(y_int[None], stored.affine, stored.source_dtype, stored.spacing_2d, stored.modality)
    y_out, meta = stored_to_output(stored, str(p), reorient=reorient)
    return y_out[0], meta


def _as_path_list(path: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        return [Path(path)]
    paths = [Path(p) for p in path]
    if not paths:
        raise ReadError("read_image: empty list of paths")
    return paths


def _read_stored(path: Path, *, as_label: bool) -> StoredImage:
    """Dispatch on the file type; ``as_label`` keeps native integer values instead of float32."""
    virtual = split_virtual(path)
    if virtual is not None:
        return _read_virtual(path, *virtual, as_label=as_label)
    if not path.exists():
        raise ReadError(f"{path}: file not found")
    if path.is_dir():
        return dicom.load_dicom(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path, as_label=as_label)
    if suffix in ITK_SUFFIXES:
        return read_itk(path, as_label=as_label)
    if suffix in PILLOW_SUFFIXES:
        return read_pillow(path, as_label=as_label)
    if suffix in DICOM_SUFFIXES or _has_dicom_magic(path):
        return dicom.load_dicom(path)
    raise ReadError(
        f"{path}: unsupported file type {''.join(path.suffixes) or '(no suffix)'!r}; "
        f"supported: {', '.join(SUPPORTED_SUFFIXES)}, DICOM files/folders"
    )


def split_virtual(path: str | Path) -> tuple[Path, tuple[str, ...]] | None:
    """``"a.npz::train_images::3"`` -> ``(Path("a.npz"), ("train_images", "3"))``; None for a real path."""
    text = str(path)
    if "::" not in text or Path(text).exists():
        return None
    real, _, member = text.partition("::")
    return Path(real), tuple(member.split("::"))


def _read_virtual(path: Path, container: Path, member: tuple[str, ...], *, as_label: bool) -> StoredImage:
    if not container.exists():
        raise ReadError(f"{path}: {container} not found")
    if container.is_dir():
        return dicom.load_series_path(container, member)
    if container.suffix.lower() == ".npz":
        return read_npz_image(path, container, member, as_label=as_label)
    raise ReadError(f"{path}: virtual paths address an .npz array or a DICOM folder, not {container.name}")


def _stack_channels(parts: list[StoredImage], paths: list[Path]) -> StoredImage:
    """Concatenate per-file channels after checking that every file has the first file's geometry."""
    if len(parts) == 1:
        return parts[0]
    ref, ref_path = parts[0], paths[0]
    for part, p in zip(parts[1:], paths[1:]):
        if part.array.shape[1:] != ref.array.shape[1:]:
            raise ReadError(
                f"{p}: spatial shape {part.array.shape[1:]} differs from {ref_path} {ref.array.shape[1:]}"
            )
        if (part.affine is None) != (ref.affine is None):
            raise ReadError(f"{p}: cannot combine a 2-D and a 3-D file ({ref_path}) as channels")
        if part.affine is not None:
            diff = float(np.abs(part.affine - ref.affine).max())
            if diff > _GEOMETRY_ATOL:
                raise ReadError(
                    f"{p}: affine differs from {ref_path} by up to {diff:.4g} (tolerance {_GEOMETRY_ATOL}); "
                    "channel files must share geometry"
                )
    dtypes = list(dict.fromkeys(part.source_dtype for part in parts))
    return StoredImage(
        np.concatenate([part.array.astype(np.float32, copy=False) for part in parts], axis=0),
        ref.affine,
        ",".join(dtypes),
        ref.spacing_2d,
        ref.modality,
        None,
    )


def _apply_grey(
    x: np.ndarray, names: tuple[str, ...] | None, grey: bool | None, path: Path
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """``grey=True``: colour ``(3, ...)`` -> luminance ``(1, ...)``; ``False``: grey -> 3 equal channels."""
    c = x.shape[0]
    if grey is None or (grey and c == 1) or (grey is False and c == 3):
        return x, names
    if grey and c == 3:
        return np.tensordot(_LUMA, x, axes=1)[None].astype(np.float32, copy=False), None
    if grey is False and c == 1:
        return np.repeat(x, 3, axis=0), ("R", "G", "B")
    raise ReadError(f"{path}: grey={grey} needs a 1- or 3-channel image, got {c} channels")


def _single_channel_label(x_cs: np.ndarray, path: Path) -> np.ndarray:
    """``(C, *spatial)`` -> ``(*spatial)``; identical channels (grey mask saved as RGB) collapse to one."""
    if x_cs.shape[0] == 1:
        return x_cs[0]
    if all(np.array_equal(x_cs[0], ch) for ch in x_cs[1:]):
        logger.debug("%s: %d identical channels read as one label channel", path, x_cs.shape[0])
        return x_cs[0]
    raise ReadError(f"{path}: a label map needs 1 channel, got {x_cs.shape[0]} different channels")


def _integral_label(y: np.ndarray, path: Path) -> np.ndarray:
    """Check label values are integers (floats within ``_LABEL_ATOL``) and cast to the smallest int dtype."""
    if y.dtype.kind == "f":
        bad_nonfinite = nonfinite_count(y)
        if bad_nonfinite:
            raise ReadError(f"{path}: label map has {bad_nonfinite} NaN/Inf voxels")
        rounded = np.rint(y)
        off = np.abs(y - rounded) > _LABEL_ATOL
        if off.any():
            example = float(y[off].flat[0])
            raise ReadError(
                f"{path}: label map has {int(off.sum())} non-integer voxels (e.g. {example!r}, tolerance {_LABEL_ATOL})"
            )
        y = rounded
    elif y.dtype.kind not in "iub":
        raise ReadError(f"{path}: label map has non-numeric dtype {y.dtype}")
    lo, hi = float(y.min()), float(y.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return y.astype(dtype)
    raise ReadError(f"{path}: label values {lo:g}..{hi:g} do not fit in int32")
