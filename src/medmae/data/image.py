"""Shared image types: the geometry of a read image (:class:`ImageMeta`), one file's stored pixels
(:class:`StoredImage`), the file suffixes medmae reads, and the geometry helpers every reader and writer uses.

Conventions (see :mod:`medmae.data.readers`): 3D arrays are ``(C, X, Y, Z)`` in the file's voxel-index order,
reoriented to RAS+ on output; 2D arrays are ``(C, H, W)`` with no affine and ``spacing`` ``(row_mm, col_mm)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np

from medmae.errors import ReadError

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
PILLOW_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
SUPPORTED_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES + PILLOW_SUFFIXES + DICOM_SUFFIXES

RAS = nio.axcodes2ornt("RAS")


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Geometry and provenance of an array returned by :func:`~medmae.data.readers.read_image` /
    :func:`~medmae.data.readers.read_label`.

    ``eq=False``: the affines are arrays, so compare fields explicitly. Affine arrays are read-only.
    For a multi-file image (one channel per file) ``path`` is the first file, the geometry reference.
    """

    path: str
    spatial_dims: int
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    original_affine: np.ndarray | None
    original_shape: tuple[int, ...]
    orientation: str | None
    original_orientation: str | None
    modality: str | None
    source_dtype: str
    channel_names: tuple[str, ...] | None

    def __post_init__(self) -> None:
        for name in ("affine", "original_affine"):
            value = getattr(self, name)
            if value is not None:
                frozen = np.array(value, dtype=np.float64)
                frozen.flags.writeable = False
                object.__setattr__(self, name, frozen)


@dataclass(frozen=True, eq=False)
class StoredImage:
    """One file's pixels as stored (before reorientation); shared by the format readers and the DICOM module.

    ``array`` is ``(C, *spatial)``; ``affine`` maps stored voxel indices to RAS+ mm (``None`` for 2D, which
    then uses ``spacing_2d``).
    """

    array: np.ndarray
    affine: np.ndarray | None
    source_dtype: str
    spacing_2d: tuple[float, float] = (1.0, 1.0)
    modality: str | None = None
    channel_names: tuple[str, ...] | None = None


def image_suffix(path: str | Path) -> str:
    """Lower-case supported suffix of ``path`` (``".nii.gz"`` counts as one), or ``""`` if none matches."""
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def stored_to_output(stored: StoredImage, path: str, *, reorient: bool) -> tuple[np.ndarray, ImageMeta]:
    """Reorient a stored ``(C, *spatial)`` array if asked and describe it with an :class:`ImageMeta`."""
    x = stored.array
    spatial = tuple(int(s) for s in x.shape[1:])
    if min(spatial, default=0) == 0:
        raise ReadError(f"{path}: empty image, spatial shape {spatial}")
    if stored.affine is None:
        meta = ImageMeta(
            path=path,
            spatial_dims=len(spatial),
            spacing=tuple(float(s) for s in stored.spacing_2d),
            affine=None,
            original_affine=None,
            original_shape=spatial,
            orientation=None,
            original_orientation=None,
            modality=stored.modality,
            source_dtype=stored.source_dtype,
            channel_names=stored.channel_names,
        )
        return np.ascontiguousarray(x), meta
    affine = stored.affine
    if reorient:
        x, affine = reorient_array(x, stored.affine, RAS)
    meta = ImageMeta(
        path=path,
        spatial_dims=3,
        spacing=voxel_sizes(affine),
        affine=affine,
        original_affine=stored.affine,
        original_shape=spatial,
        orientation="".join(nib.aff2axcodes(affine)),
        original_orientation="".join(nib.aff2axcodes(stored.affine)),
        modality=stored.modality,
        source_dtype=stored.source_dtype,
        channel_names=stored.channel_names,
    )
    return np.ascontiguousarray(x), meta


def voxel_sizes(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size in mm along each array axis: the norms of the affine's first three columns."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))


def reorient_array(x_cs: np.ndarray, affine: np.ndarray, target_ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the spatial axes of ``x_cs`` ``(C, X, Y, Z)`` to ``target_ornt`` (nibabel ornt).

    Returns the reoriented array (a view) and its voxel->world affine; only the closest axis-aligned
    orientation is reached, oblique rotations stay in the affine.
    """
    transform = nio.ornt_transform(nio.io_orientation(affine), target_ornt)
    x_sc = nio.apply_orientation(np.moveaxis(x_cs, 0, -1), transform)
    return np.moveaxis(x_sc, -1, 0), affine @ nio.inv_ornt_aff(transform, x_cs.shape[1:])
