"""NIfTI (``.nii``, ``.nii.gz``) via nibabel: ``(C, X, Y, Z)`` in the file's voxel order with its affine."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medmae.data.image import StoredImage
from medmae.data.validity import check_nifti_size
from medmae.errors import ReadError

NIFTI_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)


def read_nifti(path: Path, *, as_label: bool) -> StoredImage:
    """NIfTI via nibabel; scl_slope/scl_inter are applied; 4D ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)``."""
    try:
        img = nib.load(path)
    except NIFTI_ERRORS as exc:
        raise ReadError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ReadError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    check_nifti_size(path, img)
    try:
        data = np.asanyarray(img.dataobj) if as_label else img.get_fdata(dtype=np.float32)
    except NIFTI_ERRORS as exc:
        raise ReadError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 2:
        x = data[None, :, :, None]
    elif data.ndim == 3:
        x = data[None]
    elif data.ndim == 4:
        x = np.moveaxis(data, 3, 0)
    elif data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector images put components on the 5th axis
        x = np.moveaxis(data[:, :, :, 0, :], 3, 0)
    else:
        raise ReadError(f"{path}: unsupported NIfTI shape {data.shape} (expected 2 to 4 dimensions)")
    return StoredImage(x, np.array(img.affine, dtype=np.float64), img.get_data_dtype().name)
