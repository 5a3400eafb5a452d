"""Disk cache of preprocessed arrays: ``.npy`` files keyed by content hash, read back memory-mapped.

Decoding a NIfTI/DICOM and resampling it happens once; every later epoch (and every later run with the
same preprocessing) memory-maps the result. Writes go to a temporary file and are renamed into place, so
two processes preparing the same case at once both end with a complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_VERSION = "1"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    def load(self, key: str) -> np.ndarray | None:
        """Memory-mapped array for ``key``, or None when absent or unreadable (then it is recomputed)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, mmap_mode="r")
        except (ValueError, OSError, EOFError):
            p.unlink(missing_ok=True)
            return None

    def store(self, key: str, array: np.ndarray) -> np.ndarray:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name + ".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return np.load(p, mmap_mode="r")

    def get_or_create(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
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
