"""Reading a pack: a source layout like any other, whose cases come preprocessed (no raw file is opened).

Opening a pack reads ``medmae-pack.json`` and ``index.npz`` and checks each shard's size: O(shards), whatever
the number of cases. A case's arrays are :class:`PackedArray` objects (like the cache's ``CachedArray``): held
by position, decoded per access, a crop decompressing only the blocks it touches. A config whose preprocessing
differs from the pack's is refused with the config key that differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.data.cases import Case, DatasetSpec
from medmae.data.dataset import Prepared
from medmae.data.pack_codec import decode
from medmae.data.pack_merge import read_manifest
from medmae.data.pack_names import INDEX_FILE
from medmae.data.pack_store import OPEN_SHARDS, PackIndex, ShardReader
from medmae.data.preprocess import Preprocessing
from medmae.errors import ContractError, SourceError

PACK_KIND = "pack"
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
        ix = self.index
        return Case(ix["case_id"][i], tuple(ix["image"][i].split("\n")), ix["subject_id"][i], ix["label"][i],
                    ix["mask"][i], ix["split"][i], ix["modality"][i], ix["source"][i],
                    tuple(tuple(a) for a in json.loads(ix["attributes"][i] or "[]")))


    def cases(self) -> list[Case]:
        """Every case, built in one pass over the index columns; a value repeated over cases (split, modality,
        source, label, attributes) is one shared object, not one string per case."""
        ix = self.index
        cols = {k: ix[k].tolist() for k in ("case_id", "image", "subject_id")}
        shared = {k: _shared(ix[k].tolist()) for k in ("label", "mask", "split", "modality", "source")}
        attrs = _shared(ix["attributes"].tolist(),
                        lambda a: tuple(tuple(x) for x in json.loads(a)) if a and a != "[]" else ())
        return [Case(cid, tuple(img.split("\n")), cid if sub == cid else sub, lab, msk, spl, mod, src, att)
                for cid, img, sub, lab, msk, spl, mod, src, att in zip(*cols.values(), *shared.values(), attrs)]


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


def packed_cases(spec: DatasetSpec, prep: Preprocessing, *, with_masks: bool = False) -> list[Prepared]:
    """The prepared cases of a pack's ``spec`` (a selection of its cases, in its order): nothing is decoded."""
    pack = open_pack(spec.root)
    check_contract(pack, prep)
    if with_masks and not pack.manifest["with_masks"]:
        raise ContractError(f"{pack.root} was packed without masks; pack it again with --masks for segmentation")
    rows = _rows(pack, spec.cases)
    shapes, spacings = _shared(pack.index.shapes()), _shared(pack.index.spacings())
    sha, masks = pack.index["sha256"].tolist(), pack.index["mask_values"].tolist() if with_masks else None
    out = []
    for case, i in zip(spec.cases, rows):
        mask = PackedArray(pack, i, mask=True, shape=shapes[i]) if masks and masks[i] else None
        digests = tuple(sha[i].split(","))[: len(case.image)] if len(case.image) > 1 else (sha[i].partition(",")[0],)
        out.append(Prepared(case, PackedArray(pack, i, shape=shapes[i]), mask, spacings[i], digests=digests))
    return out


def _shared(values: list[Any], convert: Any = None) -> list[Any]:
    """``values`` (converted) with equal values as one object: a pool of millions of cases holds a few distinct
    shapes, spacings, splits or modalities, not one copy per case."""
    memo: dict[Any, Any] = {}
    if convert is None:
        return [memo.setdefault(v, v) for v in values]
    return [memo[v] if v in memo else memo.setdefault(v, convert(v)) for v in values]


def shard_groups(prepared: Sequence[Prepared]) -> list[int] | None:
    """The shard of each case (numbered over the packs) when every case is packed and they span more shards than a
    reader keeps open, so that the training order can read few shards per batch; None otherwise (a global
    permutation then costs no shard re-opening, and keeps a small pack's order equal to the cache's)."""
    keys = []
    for p in prepared:
        if not isinstance(p.image, PackedArray):
            return None
        keys.append((str(p.image.pack.root), int(p.image.pack.index["shard"][p.image.i])))
    ids = {k: n for n, k in enumerate(sorted(set(keys)))}
    return [ids[k] for k in keys] if len(ids) > OPEN_SHARDS else None


def _rows(pack: Pack, cases: Sequence[Case]) -> list[int]:
    """The index row of each case (matched by its image files and id, which pools' source tags do not change)."""
    ids = pack.index["case_id"].tolist()
    if len(cases) == len(pack) and all(c.case_id == ids[i] for i, c in enumerate(cases)):
        return list(range(len(cases)))
    where = {(image, cid): i for i, (image, cid) in enumerate(zip(pack.index["image"].tolist(), ids))}
    return [where["\n".join(c.image), c.case_id] for c in cases]
