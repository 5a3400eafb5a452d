"""NumPy archives (``.npz``, the MedMNIST layout): one image of a stack, addressed as ``<file>.npz::<array>::<index>``.

``(N, H, W)`` grey or ``(N, H, W, 3)`` colour 2D images, ``(N, D, H, W)`` volumes. 2D gives ``(C, H, W)`` with
spacing 1.0; 3D gives ``(1, D, H, W)`` with an identity affine (1 mm voxels, axes taken as stored and labelled
RAS, so reorientation is a no-op: MedMNIST volumes carry no geometry). Uncompressed members are memory-mapped.
"""

from __future__ import annotations

import functools
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medmae.data.image import StoredImage
from medmae.errors import ReadError


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


def read_npz_image(path: Path, container: Path, member: tuple[str, ...], *, as_label: bool) -> StoredImage:
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
