"""Write results back in the geometry of the image they were computed from (:func:`write_like`).

SimpleITK is imported inside :func:`_write_itk` only: it takes ~0.4 s to import and only NRRD/MHA output needs it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
from PIL import Image

from medmae.data.image import ITK_SUFFIXES, NIFTI_SUFFIXES, ImageMeta, image_suffix, reorient_array, voxel_sizes
from medmae.data.itk import LPS_FLIP


def write_like(array: np.ndarray, meta: ImageMeta, out_path: str | Path) -> Path:
    """Write ``array`` (``(*spatial)`` or ``(C, *spatial)``, in the orientation :func:`~medmae.data.readers.read_image` returned)
    in the input's stored orientation and geometry.

    3D -> ``.nii``/``.nii.gz`` (nibabel, ``original_affine`` as qform and sform) or ``.nrrd``/``.nhdr``/
    ``.mha``/``.mhd`` (SimpleITK, LPS); 2D -> ``.png``/``.tif``/``.tiff``/``.bmp`` (lossless only). Integer
    data is stored in the smallest fitting type, bool as uint8, float as float32. Returns the written path.
    """
    out = Path(out_path)
    x = np.asarray(array)
    if x.ndim not in (meta.spatial_dims, meta.spatial_dims + 1):
        raise ValueError(
            f"{out}: expected a {meta.spatial_dims}-D array or (C, *spatial), got shape {x.shape} (from {meta.path})"
        )
    has_channels = x.ndim == meta.spatial_dims + 1
    x_cs = x if has_channels else x[None]
    if meta.spatial_dims == 3:
        if meta.affine is None or meta.original_affine is None:
            raise ValueError(f"{out}: {meta.path} has no affine to write 3-D data with")
        expected = _returned_shape(meta)
        if x_cs.shape[1:] != expected:
            raise ValueError(f"{out}: spatial shape {x_cs.shape[1:]} does not match {meta.path} {expected}")
        x_cs, _ = reorient_array(x_cs, meta.affine, nio.io_orientation(meta.original_affine))
    elif x_cs.shape[1:] != meta.original_shape:
        raise ValueError(f"{out}: spatial shape {x_cs.shape[1:]} does not match {meta.path} {meta.original_shape}")
    x_cs = _storage_array(np.ascontiguousarray(x_cs), out)
    suffix = image_suffix(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if meta.spatial_dims == 3 and suffix in NIFTI_SUFFIXES:
        _write_nifti(x_cs, meta.original_affine, out, has_channels)
    elif meta.spatial_dims == 3 and suffix in ITK_SUFFIXES:
        _write_itk(x_cs, meta.original_affine, out, has_channels)
    elif meta.spatial_dims == 2 and suffix in (".png", ".tif", ".tiff", ".bmp"):
        _write_pillow(x_cs, out)
    else:
        allowed = NIFTI_SUFFIXES + ITK_SUFFIXES if meta.spatial_dims == 3 else (".png", ".tif", ".tiff", ".bmp")
        raise ValueError(f"{out}: cannot write {meta.spatial_dims}-D data as {suffix or out.suffix!r}; use {allowed}")
    return out


def _returned_shape(meta: ImageMeta) -> tuple[int, ...]:
    """Spatial shape of the array read_image returned, from the stored shape and the two affines."""
    transform = nio.ornt_transform(nio.io_orientation(meta.original_affine), nio.io_orientation(meta.affine))
    shape = [0] * len(meta.original_shape)
    for in_axis, (out_axis, _) in enumerate(transform):
        shape[int(out_axis)] = meta.original_shape[in_axis]
    return tuple(shape)


def _storage_array(x: np.ndarray, out: Path) -> np.ndarray:
    """bool -> uint8, integers -> smallest of uint8/int16/uint16/int32 holding the values, floats -> float32."""
    if x.dtype == bool:
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{out}: cannot write dtype {x.dtype}")
    lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return x.astype(dtype, copy=False)
    raise ValueError(f"{out}: integer values {lo}..{hi} do not fit in int32")


def _write_nifti(x_cs: np.ndarray, affine: np.ndarray, out: Path, has_channels: bool) -> None:
    data = np.moveaxis(x_cs, 0, -1) if has_channels else x_cs[0]
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, out)


def _write_itk(x_cs: np.ndarray, affine: np.ndarray, out: Path, has_channels: bool) -> None:
    import SimpleITK as sitk  # deferred: ~0.4 s to import, only NRRD/MHA output needs it

    zyx = x_cs.transpose(3, 2, 1, 0)  # (Z, Y, X, C)
    img = sitk.GetImageFromArray(zyx if has_channels else zyx[..., 0], isVector=has_channels)
    spacing = np.array(voxel_sizes(affine))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (LPS_FLIP @ affine[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in LPS_FLIP @ affine[:3, 3]))
    sitk.WriteImage(img, str(out), useCompression=out.suffix.lower() in (".nrrd", ".mha"))


def _write_pillow(x_cs: np.ndarray, out: Path) -> None:
    """uint8 grey/RGB, uint16 grey (PNG/TIFF) or float32 grey (TIFF)."""
    c, dtype, suffix = x_cs.shape[0], x_cs.dtype, out.suffix.lower()
    grey_ok = dtype == np.uint8 or (dtype == np.uint16 and suffix != ".bmp")
    grey_ok = grey_ok or (dtype == np.float32 and suffix in (".tif", ".tiff"))
    if not ((c == 3 and dtype == np.uint8) or (c == 1 and grey_ok)):
        raise ValueError(
            f"{out}: cannot store {c} channel(s) of {dtype} as {suffix}; use 1 channel uint8, uint16 "
            "(PNG/TIFF) or float32 (TIFF), or 3 channels uint8"
        )
    Image.fromarray(np.moveaxis(x_cs, 0, -1) if c == 3 else x_cs[0]).save(out)
