"""A pack on disk: shards of compressed case arrays (blosc2 ``.b2z`` stores) and one columnar index.

::

    PACK/medmae-pack.json            contract, codec, sources, shards (name, cases, bytes, sha256), counts
    PACK/index.npz                   one row per case: shard, group, row, shape, spacing, metadata, raw size/mtime/sha256
    PACK/part-00000-of-00001/        a part: shard-00000.b2z + shard-00000.json (its cases), ..., part.json when done

A shard holds stacks of same-shape cases (``/img/g0`` codes, ``/tab/g0`` value tables, ``/msk/g0`` masks), so
reading one case decompresses its own blocks only. Shards are written to a temporary name and renamed, so a
shard file is complete or absent. Reading keeps a few shards open per process (``ulimit -n`` is never the limit).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from medmae.data.cache import atomic_file, atomic_write_bytes, make_shareable, sha256_file  # noqa: F401 - sha256_file re-exported
from medmae.data.pack_codec import Encoded, blocks_for, cparams, mask_dtype
from medmae.data.pack_names import INDEX_FILE, PACK_FILE, PART_FILE, part_dir_name, shard_name  # noqa: F401 - re-exported
from medmae.errors import CaseError, SourceError

FORMAT = "medmae-pack"
FORMAT_VERSION = 1
OPEN_SHARDS = 8


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON (sorted keys) written to a temporary name in the same folder, flushed and renamed into place."""
    atomic_write_bytes(path, json.dumps(data, sort_keys=True).encode())


# ------------------------------------------------------------------------------------------------ writing


@dataclass
class StoredCase:
    """One case to write: its encoded image and optional mask (same spatial shape)."""

    encoded: Encoded
    mask: np.ndarray | None


def _group_key(c: StoredCase) -> tuple:
    mask = None if c.mask is None else (c.mask.shape, mask_dtype(c.mask).str)
    return c.encoded.kind, c.encoded.codes.shape, mask


def write_shard(path: Path, cases: Sequence[StoredCase], codec: str) -> list[tuple[int, int]]:
    """Write ``cases`` into the shard ``path`` atomically; returns each case's (group, row) in the shard."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(cases):  # 2D cases of one kind and size share a stack; a 3D volume is a stack of one
        groups.setdefault(_group_key(c) if c.encoded.codes.ndim == 3 else (i,), []).append(i)
    where: list[tuple[int, int]] = [(0, 0)] * len(cases)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.b2z")
    tmp.unlink(missing_ok=True)
    with blosc2.DictStore(str(tmp), mode="w") as store:
        for g, members in enumerate(groups.values()):
            codes = np.stack([cases[i].encoded.codes for i in members])
            spatial_dims = codes.ndim - 2
            _put(store, f"/img/g{g}", codes, spatial_dims, codec)
            if cases[members[0]].encoded.table is not None:
                width = max(len(cases[i].encoded.table) for i in members)
                table = np.zeros((len(members), width), np.float32)
                for r, i in enumerate(members):
                    table[r, : len(cases[i].encoded.table)] = cases[i].encoded.table
                store[f"/tab/g{g}"] = blosc2.asarray(table, chunks=(min(len(table), 64), width), blocks=(1, width),
                                                     cparams=cparams(codec, 4))
            if cases[members[0]].mask is not None:
                masks = np.stack([cases[i].mask.astype(mask_dtype(cases[i].mask)) for i in members])
                _put(store, f"/msk/g{g}", masks, spatial_dims, codec)
            for r, i in enumerate(members):
                where[i] = (g, r)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    make_shareable(tmp)  # readable as any file the user writes (blosc2 creates it private)
    os.replace(tmp, path)
    return where


def _put(store: blosc2.DictStore, key: str, stack: np.ndarray, spatial_dims: int, codec: str) -> None:
    chunks, blocks = blocks_for(stack.shape, spatial_dims)
    store[key] = blosc2.asarray(np.ascontiguousarray(stack), chunks=chunks, blocks=blocks,
                                cparams=cparams(codec, stack.dtype.itemsize))


# ------------------------------------------------------------------------------------------------ reading


def single_threaded_blosc() -> None:
    """Decompress in the calling thread: a blosc2 thread pool started in a process that then forks DataLoader
    workers (the budget calibration reads batches before the loader starts) leaves the workers waiting forever on
    a pool that does not exist in them. Loader workers are the parallelism."""
    if blosc2.nthreads != 1:
        blosc2.set_nthreads(1)


class ShardReader:
    """Reads case arrays from a pack's shards; keeps at most ``OPEN_SHARDS`` shards open in this process."""

    def __init__(self, root: Path, shards: Sequence[str]):
        self.root, self.shards = Path(root), list(shards)
        self._open: OrderedDict[int, tuple[int, blosc2.DictStore, dict[str, Any]]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (spawned DataLoader workers) without its open shards: each process opens its own."""
        return {**self.__dict__, "_open": OrderedDict()}

    def _arrays(self, shard: int) -> dict[str, Any]:
        pid = os.getpid()  # a forked DataLoader worker opens its own handles
        got = self._open.get(shard)
        if got is not None and got[0] == pid:
            self._open.move_to_end(shard)
            return got[2]
        if got is not None:
            self._open.clear()
        path = self.root / self.shards[shard]
        store = blosc2.DictStore(str(path), mode="r", mmap_mode="r")
        self._open[shard] = (pid, store, {})
        while len(self._open) > OPEN_SHARDS:
            _, (_, old, _) = self._open.popitem(last=False)
            old.close()
        return self._open[shard][2]

    def array(self, shard: int, key: str) -> Any:
        """The stacked array ``key`` of a shard (handles are kept with the open shard)."""
        arrays = self._arrays(shard)
        if key not in arrays:
            arrays[key] = self._open[shard][1][key]
        return arrays[key]

    def read(self, shard: int, key: str, row: int, box: tuple[slice, ...] = ()) -> np.ndarray:
        """Row ``row`` of stack ``key`` (only the blocks under ``box`` are decompressed); errors name the shard.

        A value table is read row by row too (one block each): decoding a shard's whole table when it is opened
        made a training item 2.9 ms of CPU instead of 1.0 ms in the random order over 20 shards."""
        single_threaded_blosc()  # on every read: whatever set blosc2's threads since, a pool would hang forked workers
        try:
            return np.asarray(self.array(shard, key)[(row, *box)])
        except Exception as e:  # noqa: BLE001 - a damaged shard must be named, whatever blosc2 raises
            raise CaseError(f"{self.root / self.shards[shard]}: cannot read {key}[{row}] "
                            f"({type(e).__name__}: {e}); run `medmae data pack --verify {self.root}`") from e


# -------------------------------------------------------------------------------------------------- index


NULL = "\0"  # how None is spelled in a text column (a label of "" is not the same as no label)


class StringColumn:
    """Strings kept as one UTF-8 buffer and offsets: memory is the text itself, not a Python object per row."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_list(cls, values: Sequence[str | None]) -> StringColumn:
        encoded = [(NULL if v is None else v).encode() for v in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        offsets[1:] = np.cumsum([len(e) for e in encoded])
        return cls(np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _views(self) -> tuple[memoryview, memoryview]:
        if not hasattr(self, "_offs"):  # memoryviews give Python ints and slices fast per element, and copy nothing
            offsets = np.ascontiguousarray(self.offsets, np.int64)  # '<i8' from a file: cast to the native 'q'
            self._text, self._offs = memoryview(self.blob), memoryview(offsets).cast("B").cast("q")
        return self._text, self._offs

    def __getitem__(self, i: int) -> str | None:
        text, offs = self._views()
        value = str(text[offs[i]: offs[i + 1]], "utf-8")
        return None if value == NULL else value

    def __getstate__(self) -> dict[str, Any]:
        return {"blob": self.blob, "offsets": self.offsets}  # memoryviews do not pickle (spawned workers)

    def take(self, rows: np.ndarray) -> list[str | None]:
        """The values at ``rows`` (int array), decoded in one pass."""
        text = self._views()[0]
        values = [str(text[a:b], "utf-8") for a, b in zip(self.offsets[rows].tolist(), self.offsets[rows + 1].tolist())]
        return [None if v == NULL else v for v in values]

    def tolist(self) -> list[str | None]:
        """Every value, decoded in one pass (ASCII text, the usual case, is decoded once and sliced)."""
        raw, o = self.blob.tobytes(), self.offsets.tolist()
        if raw.isascii():
            text = raw.decode("ascii")
            values = [text[o[i]: o[i + 1]] for i in range(len(o) - 1)]
        else:
            values = [raw[o[i]: o[i + 1]].decode() for i in range(len(o) - 1)]
        return [None if v == NULL else v for v in values]


STRINGS = ("case_id", "subject_id", "source", "modality", "split", "label", "mask", "image", "attributes", "sha256",
           "mask_values")
NUMBERS = {"shard": np.int32, "group": np.int32, "row": np.int32, "kind": "U3", "shape": np.int32,
           "spacing": np.float64, "raw_bytes": np.int64, "raw_mtime_ns": np.int64}


def save_index(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """The columnar index of ``records`` (one dict per case, in pack order), written atomically."""
    cols: dict[str, np.ndarray] = {}
    for name in STRINGS:
        col = StringColumn.from_list([r.get(name) for r in records])
        cols[f"{name}.blob"], cols[f"{name}.offsets"] = col.blob, col.offsets
    for name, dtype in NUMBERS.items():
        values = [r[name] for r in records]
        if name in ("shape", "spacing"):
            width = 4 if name == "shape" else 3
            pad = 0 if name == "shape" else np.nan
            values = [list(v) + [pad] * (width - len(v)) for v in values] or np.zeros((0, width))
        cols[name] = np.asarray(values, dtype=dtype)
    with atomic_file(path) as f:
        np.savez(f, **cols)


def map_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``np.savez`` (members stored, not deflated) as read-only views of one
    memory map of the file: the index is page cache, not process memory, and one descriptor per pack.

    NumPy memory-maps a ``.npy`` but not the members of an ``.npz``; a compressed ``.npz``, or one on a file system
    that cannot map it, is read into memory.
    Raises ValueError naming what is wrong when the file is not such an archive.
    """
    with open(path, "rb") as f:
        try:
            with zipfile.ZipFile(f) as z:
                members = z.infolist()
        except zipfile.BadZipFile as e:
            raise ValueError(f"not a zip archive ({e})") from None
        if not members:
            return {}
        try:
            if any(m.compress_type != zipfile.ZIP_STORED for m in members):
                raise ValueError("compressed members")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # compressed, or a file system that cannot map (some FUSE mounts): read it
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        arrays = {}
        for m in members:
            f.seek(m.header_offset)
            local = f.read(30)  # zip local file header: name and extra-field lengths at bytes 26-29
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {m.filename}: bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(m.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"member {m.filename}: .npy format {version} (np.savez writes 1.0 or 2.0)")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if dtype.hasobject:
                raise ValueError(f"member {m.filename}: object arrays are not allowed")
            count = int(np.prod(shape))
            if f.tell() + count * dtype.itemsize > len(data):
                raise ValueError(f"member {m.filename}: truncated")
            array = np.frombuffer(data, dtype, count, f.tell()).reshape(shape, order="F" if fortran else "C")
            arrays[m.filename.removesuffix(".npy")] = array
    return arrays


def _remap_index(path: Path, stamp: tuple[int, int]) -> PackIndex:
    index = PackIndex.load(path)
    if index.stamp != stamp:
        raise SourceError(f"{path}: the pack index changed since this run opened it (size, mtime_ns {stamp} -> "
                          f"{index.stamp}); a pack being rewritten cannot be read by a run")
    return index


@dataclass
class PackIndex:
    """The loaded index: numeric columns as arrays, text columns as :class:`StringColumn`; all of them views of one
    memory map of ``index.npz`` (:func:`map_npz`)."""

    columns: dict[str, Any]
    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns) of the file when it was mapped

    @classmethod
    def load(cls, path: Path) -> PackIndex:
        st = os.stat(path)
        data = map_npz(path)
        cols: dict[str, Any] = {n: data[n] for n in NUMBERS}
        for name in STRINGS:
            cols[name] = StringColumn(data[f"{name}.blob"], data[f"{name}.offsets"])
        return cls(cols, Path(path), (st.st_size, st.st_mtime_ns))

    def __reduce__(self) -> tuple:
        """Pickled as its path (spawned loader workers map the file, not receive a copy of the columns)."""
        return _remap_index, (self.path, self.stamp)

    def __len__(self) -> int:
        return len(self.columns["shard"])

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def shapes(self) -> list[tuple[int, ...]]:
        """(C, *S) of every case, in one pass."""
        return [tuple(s for s in row if s > 0) for row in self.columns["shape"].tolist()]

    def spacings(self) -> list[tuple[float, ...]]:
        return [tuple(s for s in row if s == s) for row in self.columns["spacing"].tolist()]  # NaN pads dropped

    def shape(self, i: int) -> tuple[int, ...]:
        """(C, *S) of case ``i``."""
        return tuple(int(s) for s in self.columns["shape"][i] if s > 0)

    def spacing(self, i: int) -> tuple[float, ...]:
        return tuple(float(s) for s in self.columns["spacing"][i] if not np.isnan(s))

    def record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as the dict it was written from."""
        out: dict[str, Any] = {name: self.columns[name][i] for name in STRINGS}
        out.update(shard=int(self["shard"][i]), group=int(self["group"][i]), row=int(self["row"][i]),
                   kind=str(self["kind"][i]), shape=list(self.shape(i)), spacing=list(self.spacing(i)),
                   raw_bytes=int(self["raw_bytes"][i]), raw_mtime_ns=int(self["raw_mtime_ns"][i]))
        return out
