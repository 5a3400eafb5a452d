"""Reading a pack: a source layout like any other, whose cases come preprocessed (no raw file is opened).

Opening a pack reads ``medmae-pack.json`` and ``index.npz`` and checks each shard's size: O(shards), whatever
the number of cases. Its cases (:class:`PackCases`) and prepared cases (:class:`PackedPrepared`) are lazy lists
over the index's columns, so a pool holds its row numbers, not Python objects per case. A case's arrays are
:class:`PackedArray` objects (like the cache's ``CachedArray``): held by position, decoded per access, a crop
decompressing only the blocks it touches. A config whose preprocessing
differs from the pack's is refused with the config key that differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.data.cases import Case, Chain, DatasetSpec, LazyCases
from medmae.data.dataset import Prepared
from medmae.data.pack_codec import decode
from medmae.data.pack_merge import read_manifest
from medmae.data.pack_names import INDEX_FILE
from medmae.data.pack_store import OPEN_SHARDS, PackIndex, ShardReader
from medmae.data.preprocess import Preprocessing
from medmae.errors import ContractError, SourceError

PACK_KIND = "pack"
CHUNK = 65536  # cases decoded at a time by a pass over a lazy case list
CONTRACT_KEYS = {"spatial_dims": "model.spatial_dims", "in_channels": "model.in_channels",
                 "intensity": "data.intensity", "spacing": "data.spacing", "orientation": "data.orientation",
                 "resize": "data.resize", "slice_axis": "data.slice_axis", "label_map": "data.label_map"}


class Pack:
    """An opened pack: manifest, index and a shard reader; shards are opened on first use."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root)
        for s in self.manifest["shards"]:  # O(shards) stat calls: a lost or cut shard is named at start
            path = self.root / s["name"]
            size = path.stat().st_size if path.is_file() else None
            if size != s["bytes"]:
                raise SourceError(f"{path}: shard {'missing' if size is None else f'has {size} bytes'}, the pack "
                                  f"recorded {s['bytes']}; run `medmae data pack --verify {self.root}`")
        try:
            self.index = PackIndex.load(self.root / INDEX_FILE)
        except (OSError, ValueError, KeyError) as e:
            raise SourceError(f"{self.root / INDEX_FILE}: cannot read the pack index ({e})") from None
        self.reader = ShardReader(self.root, [s["name"] for s in self.manifest["shards"]])

    def __len__(self) -> int:
        return len(self.index)

    def read_image(self, i: int, box: tuple[slice, ...] = ()) -> np.ndarray:
        """Case ``i``'s preprocessed float32 image (C, *S), or the part of it under ``box``."""
        shard, group, row = (int(self.index[k][i]) for k in ("shard", "group", "row"))
        codes = self.reader.read(shard, f"/img/g{group}", row, box)
        table = None if self.index["kind"][i] == "f16" else self.reader.read(shard, f"/tab/g{group}", row)
        return decode(codes, table)

    def read_mask(self, i: int, box: tuple[slice, ...] = ()) -> np.ndarray:
        shard, group, row = (int(self.index[k][i]) for k in ("shard", "group", "row"))
        return self.reader.read(shard, f"/msk/g{group}", row, box)

    def case(self, i: int) -> Case:
        """Case ``i`` as its source listed it (raw paths kept for messages and records, never opened)."""
        return PackCases(self, np.array([i], np.int64)).case(0)

    def cases(self) -> PackCases:
        """Every case, as a lazy list (a :class:`Case` is built from its index row on access)."""
        return PackCases(self, np.arange(len(self), dtype=np.int64))


class PackCases(LazyCases):
    """A pack's cases (or a selection, in its order) built on access from the index columns: a pool of millions
    holds its row numbers (8 bytes a case) and a few tags, not a Python object per case. Raw paths are kept for
    messages and records, never opened."""

    def __init__(self, pack: Pack, rows: np.ndarray, tags: tuple[str | None, str | None, str | None] = (None,) * 3):
        self.pack, self.rows = pack, np.asarray(rows, dtype=np.int64)
        self.tags = tags  # (modality that overrides the case's, modality when the case has none, source)

    def __len__(self) -> int:
        return len(self.rows)

    def case(self, i: int) -> Case:
        r = int(self.rows[i])
        ix = self.pack.index
        over, default, source = self.tags
        return Case(ix["case_id"][r], tuple(ix["image"][r].split("\n")), ix["subject_id"][r], ix["label"][r],
                    ix["mask"][r], ix["split"][r], over or ix["modality"][r] or default, source or ix["source"][r],
                    _attributes(ix["attributes"][r]))

    def take(self, positions: np.ndarray) -> PackCases:
        return PackCases(self.pack, self.rows[np.asarray(positions, dtype=np.int64)], self.tags)

    def tagged(self, *, modality: str | None = None, default_modality: str | None = None,
               source: str | None = None) -> PackCases:
        over, default, src = self.tags
        return PackCases(self.pack, self.rows, (modality or over, default or default_modality, source or src))

    def column(self, name: str, rows: np.ndarray) -> list[Any]:
        """Field ``name`` of the cases at index ``rows``, as :class:`Case` would give it."""
        if name == "path":
            return [v.partition("\n")[0] for v in self.pack.index["image"].take(rows)]
        values = self.pack.index[name].take(rows)
        over, default, source = self.tags
        if name == "modality" and (over or default):
            return [over or v or default for v in values]
        if name == "source" and source:
            return [source] * len(values)
        if name == "image":
            return [tuple(v.split("\n")) for v in values]
        if name == "attributes":
            memo: dict[str, Any] = {}
            return [memo[v] if v in memo else memo.setdefault(v, _attributes(v)) for v in values]
        return values

    def distinct(self, names: tuple[str, ...]) -> tuple[list[Any], np.ndarray]:
        memo: dict[Any, int] = {}
        codes = np.empty(len(self.rows), np.int64)
        for lo in range(0, len(self.rows), CHUNK):
            rows = self.rows[lo: lo + CHUNK]
            cols = [self.column(n, rows) for n in names]
            keys = cols[0] if len(cols) == 1 else zip(*cols)
            codes[lo: lo + len(rows)] = [memo.setdefault(k, len(memo)) for k in keys]
        return list(memo), codes

    def values(self, name: str) -> Iterator[Any]:
        """Field ``name`` of every case in order, decoded a chunk at a time."""
        for lo in range(0, len(self.rows), CHUNK):
            yield from self.column(name, self.rows[lo: lo + CHUNK])


def _attributes(text: str | None) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(a) for a in json.loads(text)) if text and text != "[]" else ()


class PackedPrepared(Sequence[Prepared]):
    """The prepared cases of a pack (a selection, in its order), each built on access: nothing is decoded and
    nothing per case is held but the row number."""

    def __init__(self, pack: Pack, cases: Sequence[Case], rows: np.ndarray, with_masks: bool):
        self.pack, self.cases, self.rows, self.with_masks = pack, cases, np.asarray(rows, dtype=np.int64), with_masks

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        case, r, ix = self.cases[i], int(self.rows[i]), self.pack.index
        shape = ix.shape(r)
        mask = PackedArray(self.pack, r, mask=True, shape=shape) if self.with_masks and ix["mask_values"][r] else None
        digests = tuple(ix["sha256"][r].split(",")[: len(case.image)])  # the raw image files' (a mask's follows)
        return Prepared(case, PackedArray(self.pack, r, shape=shape), mask, ix.spacing(r), digests=digests)

    def records(self) -> Iterator[list[dict[str, Any]]]:
        """What ``pretrain_cases.json`` lists of each case (id, raw files' sha256, source, modality), a chunk of
        cases at a time, read from the index columns (no :class:`Prepared` built)."""
        cases = self.cases if isinstance(self.cases, PackCases) else None
        for lo in range(0, len(self.rows), CHUNK):
            rows = self.rows[lo: lo + CHUNK]
            if cases is None:
                chunk = [self.cases[i] for i in range(lo, lo + len(rows))]
                ids, sources, modalities, images = ([getattr(c, n) for c in chunk] for n in
                                                    ("case_id", "source", "modality", "image"))
            else:
                ids, sources, modalities, images = (cases.column(n, cases.rows[lo: lo + CHUNK]) for n in
                                                    ("case_id", "source", "modality", "image"))
            yield [{"case_id": i, "sha256": sha.split(",")[: len(img)], "source": src, "modality": mod}
                   for i, sha, src, mod, img in zip(ids, self.pack.index["sha256"].take(rows), sources, modalities,
                                                    images)]


class PackedArray:
    """A packed case's image (or mask) held by position; every access decodes what it needs."""

    __slots__ = ("pack", "i", "mask", "shape")

    def __init__(self, pack: Pack, i: int, *, mask: bool = False, shape: tuple[int, ...] | None = None):
        self.pack, self.i, self.mask = pack, i, mask
        full = shape or pack.index.shape(i)
        self.shape = full[1:] if mask else full

    @property
    def dtype(self) -> str:
        return "int64" if self.mask else "float32"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def open(self) -> np.ndarray:
        """The whole array decoded (what ``mapped`` gives ``CaseDataset``)."""
        return self[()]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.open(), dtype=dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        """A part of the array: basic slices are decoded alone (a 3D crop reads the blocks under it only)."""
        box = index if isinstance(index, tuple) else (index,)
        if all(isinstance(b, slice) for b in box):
            return self.pack.read_mask(self.i, box) if self.mask else self.pack.read_image(self.i, box)
        return np.asarray(self.open())[index]


_OPEN: dict[Path, Pack] = {}


def open_pack(path: str | Path) -> Pack:
    """The pack at ``path``, opened once per process."""
    root = Path(path).expanduser().resolve()
    if root not in _OPEN:
        _OPEN[root] = Pack(root)
    return _OPEN[root]


def load_pack_source(path: str | Path) -> DatasetSpec:
    """A pack as a source: its cases and what its sources declared (classes, label names, dims, modality)."""
    pack = open_pack(path)
    m = pack.manifest
    return DatasetSpec(pack.root, pack.cases(),
                       label_names={int(k): v for k, v in (m.get("label_names") or {}).items()},
                       classes=list(m.get("classes") or []), multilabel=bool(m.get("multilabel", False)),
                       spatial_dims=m["contract"]["spatial_dims"], modality=m.get("modality"), kind=PACK_KIND)


def check_contract(pack: Pack, prep: Preprocessing) -> None:
    """ContractError naming the first config key whose preprocessing differs from the pack's."""
    have = pack.manifest["contract"]
    want = json.loads(json.dumps(prep.contract()))  # tuples as the manifest's JSON lists
    for field_name, key in CONTRACT_KEYS.items():
        if have.get(field_name) != want.get(field_name):
            raise ContractError(f"{pack.root} was packed with {key}={have.get(field_name)!r} but this config has "
                                f"{key}={want.get(field_name)!r}; pack again with this config or set {key} to match")


def packed_cases(spec: DatasetSpec, prep: Preprocessing, *, with_masks: bool = False) -> PackedPrepared:
    """The prepared cases of a pack's ``spec`` (a selection of its cases, in its order): nothing is decoded."""
    pack = open_pack(spec.root)
    check_contract(pack, prep)
    if with_masks and not pack.manifest["with_masks"]:
        raise ContractError(f"{pack.root} was packed without masks; pack it again with --masks for segmentation")
    cases = spec.cases
    rows = cases.rows if isinstance(cases, PackCases) and cases.pack is pack else _rows(pack, cases)
    return PackedPrepared(pack, cases, rows, with_masks)


def case_list(prepared: Sequence[Prepared]) -> Sequence[Case]:
    """The cases of prepared cases, lazy where they are (a pack's, a chain of packs')."""
    if isinstance(prepared, PackedPrepared):
        return prepared.cases
    if isinstance(prepared, Chain):
        return Chain([case_list(p) for p in prepared.parts])
    return [p.case for p in prepared]


def field_values(cases: Sequence[Case], name: str) -> Sequence[Any]:
    """Field ``name`` of every case: a lazy view for a pack's cases (indexable, iterated a chunk at a time)."""
    if isinstance(cases, PackCases):
        return FieldView(cases, name)
    if isinstance(cases, Chain):
        return Chain([field_values(p, name) for p in cases.parts])
    return [getattr(c, name) for c in cases]


class FieldView(Sequence[Any]):
    """One field of a pack's cases (e.g. the case ids a checkpoint's data digest hashes), read on access."""

    def __init__(self, cases: PackCases, name: str):
        self.cases, self.name = cases, name

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.cases.column(self.name, self.cases.rows[i])
        return getattr(self.cases[i], self.name)

    def __iter__(self) -> Iterator[Any]:
        return self.cases.values(self.name)


def shard_groups(prepared: Sequence[Prepared]) -> np.ndarray | None:
    """The shard of each case (numbered over the packs) when every case is packed and they span more shards than a
    reader keeps open, so that the training order can read few shards per batch; None otherwise (a global
    permutation then costs no shard re-opening, and keeps a small pack's order equal to the cache's)."""
    parts = _shards(prepared)
    if parts is None:
        return None
    unique = [(root, *np.unique(shards, return_inverse=True)) for root, shards in parts]
    pairs = sorted({(root, int(s)) for root, values, _ in unique for s in values})
    if len(pairs) <= OPEN_SHARDS:
        return None
    ids = {pair: n for n, pair in enumerate(pairs)}
    return np.concatenate([np.array([ids[root, int(s)] for s in values], np.int64)[inverse]
                           for root, values, inverse in unique])


def _shards(prepared: Sequence[Prepared]) -> list[tuple[str, np.ndarray]] | None:
    """(pack root, shard of each case) per run of cases, or None when a case is not packed."""
    if isinstance(prepared, PackedPrepared):
        return [(str(prepared.pack.root), prepared.pack.index["shard"][prepared.rows])]
    if isinstance(prepared, Chain):
        parts = [_shards(p) for p in prepared.parts]
        return None if any(p is None for p in parts) else [x for p in parts for x in p]  # type: ignore[union-attr]
    runs: list[tuple[str, list[int]]] = []  # a list of prepared cases: runs of cases of one pack
    for p in prepared:
        if not isinstance(p.image, PackedArray):
            return None
        root = str(p.image.pack.root)
        if not runs or runs[-1][0] != root:
            runs.append((root, []))
        runs[-1][1].append(int(p.image.pack.index["shard"][p.image.i]))
    return [(root, np.asarray(shards, np.int64)) for root, shards in runs]


def _rows(pack: Pack, cases: Sequence[Case]) -> list[int]:
    """The index row of each case (matched by its image files and id, which pools' source tags do not change)."""
    ids = pack.index["case_id"].tolist()
    if len(cases) == len(pack) and all(c.case_id == ids[i] for i, c in enumerate(cases)):
        return list(range(len(cases)))
    where = {(image, cid): i for i, (image, cid) in enumerate(zip(pack.index["image"].tolist(), ids))}
    return [where["\n".join(c.image), c.case_id] for c in cases]
