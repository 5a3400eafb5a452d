"""Read medical images into channel-first float32 arrays with their geometry, and write results back.

Formats: NIfTI (``.nii``, ``.nii.gz``, nibabel), NRRD/MHA/MHD (SimpleITK), PNG/JPEG/TIFF/GIF/BMP (Pillow)
and DICOM (files, series folders; see :mod:`medmae.data.dicom`).

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

import functools
import logging
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
from PIL import Image, UnidentifiedImageError

from medmae.data.validity import check_nifti_size
from medmae.errors import ReadError

if TYPE_CHECKING:
    import SimpleITK as sitk

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
PILLOW_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
SUPPORTED_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES + PILLOW_SUFFIXES + DICOM_SUFFIXES

_RAS = nio.axcodes2ornt("RAS")
_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])
_GEOMETRY_ATOL = 1e-3  # mm (and direction-cosine units) allowed between channel files of one image
_LABEL_ATOL = 1e-3  # a float label within this of an integer is that integer (2.9999 -> 3)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
_PIL_MODE_DTYPE = {"1": "bool", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}
_NIFTI_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)


@dataclass(frozen=True, eq=False)
class ImageMeta:
    """Geometry and provenance of an array returned by :func:`read_image` / :func:`read_label`.

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


def nonfinite_count(array: np.ndarray) -> int:
    """Number of NaN / +-Inf elements (a data-check finding, not a read error)."""
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def image_suffix(path: str | Path) -> str:
    """Lower-case supported suffix of ``path`` (``".nii.gz"`` counts as one), or ``""`` if none matches."""
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


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
        x, affine = reorient_array(x, stored.affine, _RAS)
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
        from medmae.data import dicom  # deferred: dicom imports this module

        return dicom.load_dicom(path)
    suffix = image_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path, as_label=as_label)
    if suffix in ITK_SUFFIXES:
        return _read_itk(path, as_label=as_label)
    if suffix in PILLOW_SUFFIXES:
        return _read_pillow(path, as_label=as_label)
    if suffix in DICOM_SUFFIXES or _has_dicom_magic(path):
        from medmae.data import dicom

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
        from medmae.data import dicom  # deferred: dicom imports this module

        return dicom.load_series_path(container, member)
    if container.suffix.lower() == ".npz":
        return _read_npz_image(path, container, member, as_label=as_label)
    raise ReadError(f"{path}: virtual paths address an .npz array or a DICOM folder, not {container.name}")


def npz_image_layout(shape: Sequence[int]) -> tuple[int, bool]:
    """(spatial_dims, channels_last) of an image stack: (N,H,W) and (N,H,W,1|3) are 2D, (N,D,H,W[,C]) 3D."""
    ndim = len(shape)
    if ndim == 3:
        return 2, False
    if ndim == 4:
        return (2, True) if shape[-1] in (1, 3) else (3, False)
    if ndim == 5:
        return 3, True
    raise ValueError(f"image stack of shape {tuple(shape)}: expected (N,H,W), (N,H,W,C), (N,D,H,W) or (N,D,H,W,C)")


def _read_npz_image(path: Path, container: Path, member: tuple[str, ...], *, as_label: bool) -> StoredImage:
    """One image of an ``.npz`` stack -> ``(C, *spatial)``; 3D gets an identity affine (see module docstring)."""
    if len(member) != 2 or not member[1].isdigit():
        raise ReadError(f"{path}: expected <file>.npz::<array>::<index>")
    stack = npz_array(container, member[0])
    index = int(member[1])
    if index >= stack.shape[0]:
        raise ReadError(f"{path}: index {index} out of range, {container.name}:{member[0]} holds {stack.shape[0]} images")
    try:
        spatial_dims, channels_last = npz_image_layout(stack.shape)
    except ValueError as exc:
        raise ReadError(f"{path}: {exc}") from None
    item = np.asarray(stack[index])
    x = np.moveaxis(item, -1, 0) if channels_last else item[None]
    source_dtype = x.dtype.name
    if not as_label:
        x = x.astype(np.float32)
    names = ("R", "G", "B") if x.shape[0] == 3 and spatial_dims == 2 else None
    affine = np.eye(4) if spatial_dims == 3 else None
    return StoredImage(np.ascontiguousarray(x), affine, source_dtype, channel_names=names)


def npz_array(path: str | Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz`` file: memory-mapped when stored uncompressed, else decompressed (kept in a
    small per-process cache, so reading image i of N does not decompress the stack N times)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{key}.npy")
    except KeyError:
        raise ReadError(f"{path}: no array {key!r} (found {npz_keys(path)})") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReadError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from exc
    st = path.stat()
    if info.compress_type == zipfile.ZIP_STORED:
        return _npz_memmap(str(path), info.header_offset, st.st_size, st.st_mtime_ns)
    return _npz_loaded(str(path), key, st.st_size, st.st_mtime_ns)


def npz_keys(path: str | Path) -> list[str]:
    """Array names in an ``.npz`` file (without the ``.npy`` suffix)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReadError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from exc


def npz_shape(path: str | Path, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` read from its ``.npy`` header (no data is read or decompressed)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            return tuple(int(s) for s in _npy_header(fh)[0])
    except KeyError:
        raise ReadError(f"{path}: no array {key!r} (found {npz_keys(path)})") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ReadError(f"{path}: unreadable .npz member {key!r} ({type(exc).__name__}: {exc})") from exc


def _npy_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


@functools.lru_cache(maxsize=16)
def _npz_memmap(path: str, header_offset: int, size: int, mtime_ns: int) -> np.ndarray:
    """Memory map of an uncompressed ``.npy`` member; ``size``/``mtime_ns`` key the cache to the file version."""
    with open(path, "rb") as fh:
        fh.seek(header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ReadError(f"{path}: corrupt .npz (bad local header at byte {header_offset})")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise ReadError(f"{path}: object arrays are not supported")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=2)
def _npz_loaded(path: str, key: str, size: int, mtime_ns: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ReadError(f"{path}: unreadable .npz member {key!r} ({type(exc).__name__}: {exc})") from exc


def _read_nifti(path: Path, *, as_label: bool) -> StoredImage:
    """NIfTI via nibabel; scl_slope/scl_inter are applied; 4D ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)``."""
    try:
        img = nib.load(path)
    except _NIFTI_ERRORS as exc:
        raise ReadError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise ReadError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    check_nifti_size(path, img)
    try:
        data = np.asanyarray(img.dataobj) if as_label else img.get_fdata(dtype=np.float32)
    except _NIFTI_ERRORS as exc:
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


def _read_itk(path: Path, *, as_label: bool) -> StoredImage:
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
    affine[:3, :3] = _LPS_FLIP @ direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = _LPS_FLIP @ np.array(img.GetOrigin(), dtype=np.float64)
    return affine


def _read_pillow(path: Path, *, as_label: bool) -> StoredImage:
    """2D raster via Pillow -> ``(C, H, W)`` in the file's own value range (16-bit kept)."""
    try:
        with Image.open(path) as img:
            n_frames = int(getattr(img, "n_frames", 1))
            img.load()
            mode = img.mode
            arr, names = _pil_to_array(img, as_label=as_label)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    if n_frames > 1:
        raise ReadError(f"{path}: {n_frames} frames/pages; multi-frame raster images are not supported")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise ReadError(f"{path}: Pillow mode {mode!r} gave an array of shape {arr.shape}")
    return StoredImage(arr, None, _PIL_MODE_DTYPE.get(mode, "uint8"), channel_names=names)


def _pil_to_array(img: Image.Image, *, as_label: bool) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Pillow image -> ``(H, W)`` or ``(H, W, 3)`` array; labels keep palette indices."""
    mode = img.mode
    if mode in ("P", "PA"):
        if as_label:
            return np.asarray(img.convert("P") if mode == "PA" else img), None
        palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        if len(palette) and (palette == palette[:, :1]).all():
            return np.asarray(img.convert("L")), None
        return np.asarray(img.convert("RGB")), ("R", "G", "B")
    if mode == "1":
        return np.asarray(img).astype(np.uint8), None
    if mode in ("LA", "La"):
        return np.asarray(img.convert("L")), None
    if mode in ("I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16), None
    if mode in ("L", "I;16", "I", "F"):
        return np.asarray(img), None
    return np.asarray(img.convert("RGB")), ("R", "G", "B")


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


def write_like(array: np.ndarray, meta: ImageMeta, out_path: str | Path) -> Path:
    """Write ``array`` (``(*spatial)`` or ``(C, *spatial)``, in the orientation :func:`read_image` returned)
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
    import SimpleITK as sitk  # deferred, see _read_itk

    zyx = x_cs.transpose(3, 2, 1, 0)  # (Z, Y, X, C)
    img = sitk.GetImageFromArray(zyx if has_channels else zyx[..., 0], isVector=has_channels)
    spacing = np.array(voxel_sizes(affine))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (_LPS_FLIP @ affine[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in _LPS_FLIP @ affine[:3, 3]))
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
