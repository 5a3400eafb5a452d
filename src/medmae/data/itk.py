"""NRRD / MHA / MHD via SimpleITK; ITK's LPS world is converted to a RAS+ affine.

SimpleITK is imported inside the functions that need it: it takes ~0.4 s to import and only these formats use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medmae.data.image import StoredImage
from medmae.errors import ReadError

if TYPE_CHECKING:
    import SimpleITK as sitk

LPS_FLIP = np.diag([-1.0, -1.0, 1.0])


def read_itk(path: Path, *, as_label: bool) -> StoredImage:
    """NRRD/MHA/MHD via SimpleITK; ITK's LPS world is converted to a RAS+ affine."""
    import SimpleITK as sitk  # deferred: ~0.4 s to import, only these formats need it

    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C]) or (Y, X[, C])
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ReadError(f"{path}: unreadable image ({reason})") from exc
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise ReadError(f"{path}: {dim}-D image not supported (expected 2-D or 3-D)")
    source_dtype = arr.dtype.name
    if img.GetNumberOfComponentsPerPixel() == 1:
        arr = arr[..., None]
    if not as_label:
        arr = arr.astype(np.float32, copy=False)
    if dim == 2:
        sx, sy = img.GetSpacing()
        return StoredImage(np.moveaxis(arr, -1, 0), None, source_dtype, spacing_2d=(float(sy), float(sx)))
    return StoredImage(arr.transpose(3, 2, 1, 0), itk_ras_affine(img), source_dtype)


def itk_ras_affine(img: sitk.Image) -> np.ndarray:
    """(4, 4) voxel (x, y, z index) -> RAS+ mm affine of a 3D SimpleITK image (ITK world is LPS)."""
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_FLIP @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = LPS_FLIP @ np.array(img.GetOrigin(), dtype=np.float64)
    return affine
