"""Disk cache of preprocessed arrays: ``.npy`` files keyed by content hash, held by path, mapped on demand.

Decoding a NIfTI/DICOM and resampling it happens once; every later epoch (and every later run with the
same preprocessing) memory-maps the result. A cached case is a :class:`CachedArray` (path, shape, dtype):
each access maps the file, reads what it needs and drops the mapping, so a run holds no open file or memory
map per case (``ulimit -n`` and ``vm.max_map_count`` do not bound the dataset size). Writes go to a temporary
file and are renamed into place, so two processes preparing the same case at once both end with a complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CACHE_VERSION = "1"


def _umask() -> int:
    mask = os.umask(0o022)  # read once, at import: setting it back and forth races with threads creating files
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # the mode ``open`` gives a new file


def make_shareable(path: str | Path) -> None:
    """Give a file made private (``mkstemp``, blosc2) the mode ``open`` would have given it; a file system that
    refuses modes (some network mounts) leaves it as it is."""
    with contextlib.suppress(OSError):
        os.chmod(path, FILE_MODE)


def default_cache_dir() -> Path:
    """``$MEDMAE_CACHE`` if set, else ``~/.cache/medmae``."""
    env = os.environ.get("MEDMAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medmae"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """``chunks`` written atomically (:func:`atomic_file`), never joined in memory."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)


@contextlib.contextmanager
def atomic_file(path: Path, sync: bool = True) -> Iterator[BinaryIO]:
    """A binary file at a temporary name in ``path``'s folder, flushed, synced (``sync``) and renamed to ``path``
    when the block ends: the file is whole or absent (a full disk or an error in the block leaves nothing behind).
    Its mode is that of a file ``open`` creates (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``,
    so a shared cache, pack or run directory stays readable to the group it is shared with."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        make_shareable(tmp)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class CachedArray:
    """A cached ``.npy`` array held by its path; every access maps the file and drops the mapping after it."""

    path: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def open(self) -> np.ndarray:
        """The array memory-mapped, read-only; the mapping (and its file descriptor) lives as long as the result."""
        return np.load(self.path, mmap_mode="r")

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole array, read into memory (no mapping is kept)."""
        return np.array(self.open(), dtype=dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        """A part of the array, read into memory (no mapping is kept)."""
        return np.array(self.open()[index])


def mapped(array: np.ndarray | CachedArray) -> np.ndarray:
    """A cached array memory-mapped for one access (drop the result to unmap it), a packed one decoded
    (``medmae.data.packed.PackedArray``); an in-memory array as it is."""
    return array if isinstance(array, np.ndarray) else array.open()


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes needed) of a ``.npy`` file from its header; ValueError when the file is too short."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        needed = f.tell() + math.prod(shape) * dtype.itemsize
    size = os.stat(path).st_size
    if dtype.hasobject or size < needed:
        raise ValueError(f"{path}: {size} bytes, its header {shape} {dtype} needs {needed}")
    return tuple(int(s) for s in shape), dtype, needed


class ArrayCache:
    """Content-addressed store of float32/integer arrays under ``root/arrays``."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.arrays = self.root / "arrays"
        self.arrays.mkdir(parents=True, exist_ok=True)
        self._digests: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    def file_digest(self, path: str | Path) -> str:
        """sha256 of a file's content, memoised by (path, size, mtime) for this process.

        A virtual path ``file::member`` (an array in an ``.npz``, a series in a DICOM folder) hashes the file
        (a folder: all files below it) together with the member name.
        """
        real, sep, member = str(path).partition("::")
        if sep:
            return hashlib.sha256(f"{self.file_digest(real)}::{member}".encode()).hexdigest()
        if Path(real).is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in Path(real).rglob("*") if p.is_file()):
                h.update(f"{f.relative_to(real)}:{self.file_digest(f)}\n".encode())
            return h.hexdigest()
        st = os.stat(path)
        ident = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            if ident in self._digests:
                return self._digests[ident]
        digest = sha256_file(path)
        with self._lock:
            self._digests[ident] = digest
        return digest

    def key(self, files: Iterable[str | Path], recipe: str) -> str:
        """Cache key of ``files`` (by content) processed by ``recipe`` (a canonical string of the settings)."""
        h = hashlib.sha256(f"medmae-cache-v{CACHE_VERSION}\n{recipe}\n".encode())
        for f in files:
            h.update(self.file_digest(f).encode())
        return h.hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.arrays / key[:2] / f"{key}.npy"

    def load(self, key: str, shape: Sequence[int] | None = None, dtype: str | None = None) -> CachedArray | None:
        """The array stored under ``key``, or None when absent, unreadable, or not of the recorded ``shape`` /
        ``dtype`` (then it is recomputed). Only the header is read; no file stays open."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            found, found_dtype, _ = npy_layout(p)
        except (ValueError, OSError, EOFError):
            p.unlink(missing_ok=True)
            return None
        if (shape is not None and tuple(shape) != found) or (dtype is not None and dtype != found_dtype.name):
            return None
        return CachedArray(p, found, found_dtype.name)

    def store(self, key: str, array: np.ndarray) -> CachedArray:
        p = self.path(key)
        with atomic_file(p, sync=False) as f:  # a case lost to a power cut is found damaged and prepared again
            np.save(f, np.ascontiguousarray(array))
        return CachedArray(p, tuple(int(s) for s in array.shape), np.asarray(array).dtype.name)

    def get_or_create(self, key: str, make: Callable[[], np.ndarray]) -> CachedArray:
        cached = self.load(key)
        return cached if cached is not None else self.store(key, make())

    def store_json(self, key: str, data: dict) -> None:
        atomic_write_bytes(self.path(key).with_suffix(".json"), json.dumps(data, sort_keys=True).encode())

    def load_json(self, key: str) -> dict | None:
        p = self.path(key).with_suffix(".json")
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
