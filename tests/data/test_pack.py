"""Packs: exact round trip of preprocessed cases (2D and 3D), parts + merge equal one pack, resumable parts,
start-up without the raw files, sampling order over a pack, and damaged shards named in the error."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import shutil
import tracemalloc
from dataclasses import replace
from pathlib import Path

import blosc2
import numpy as np
import pytest
import torch

from medmae.data.cases import LazyCases, distinct, tag_cases
from medmae.data.dataset import GROUP_WINDOW, Augment, CaseDataset, EpochBatchSampler
from medmae.data.pack_codec import KIND_F16, KIND_U8, KIND_U16, decode, encode
from medmae.data.pack_merge import verify_pack
from medmae.data.pack_names import PART_FILE, part_dir_name
from medmae.data.pack_store import OPEN_SHARDS
from medmae.data.packed import (Pack, PackedArray, case_list, field_values, load_pack_source, packed_cases,
                                shard_groups)
from medmae.data.preprocess import Preprocessing, load_image, load_mask
from medmae.data.sources import load_source
from medmae.data.synthetic import write_dataset
from medmae.engine.loader_state import digest
from medmae.errors import CaseError, ConfigError, ContractError, SourceError
from medmae.tasks.pack import merge_packs, pack_sources

from helpers import new_file_mode

TINY_2D_DATA = ("model.img_size=[32,32]",)
TINY_3D_DATA = ("model.img_size=[32,32,32]",)


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cxr")
    write_dataset(root / "src", "cxr", 12, seed=3, size=32)
    return root / "src"


@pytest.fixture(scope="module")
def cxr_pack(cxr, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "cxr"
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, shard_cases=5)
    return out


PREP_2D = Preprocessing(2, 1, {"name": "minmax"}, orientation=None)


def test_codec_is_exact_for_few_values_and_fp16_otherwise():
    rng = np.random.default_rng(0)
    few = rng.integers(0, 200, (1, 16, 16)).astype(np.float32) / 7.0
    mid = rng.integers(0, 3000, (1, 128, 128)).astype(np.float32) / 13.0
    many = rng.normal(size=(1, 32, 32)).astype(np.float32)
    for x, kind, dtype in ((few, KIND_U8, np.uint8), (mid, KIND_U16, np.uint16), (many, KIND_F16, np.float16)):
        e = encode(x)
        assert e.kind == kind and e.codes.dtype == dtype
        y = decode(e.codes, e.table)
        assert y.dtype == np.float32
        if kind == KIND_F16:
            np.testing.assert_allclose(y, x, rtol=2**-11, atol=0)
        else:
            assert np.array_equal(y, x), "palette codes must give back the float32 values bit for bit"


def test_2d_pack_round_trip_values_dtype_and_metadata(cxr, cxr_pack):
    spec, pack = load_source(cxr), Pack(cxr_pack)
    assert len(pack) == len(spec.cases) == 12 and len(pack.manifest["shards"]) == 3
    for i, case in enumerate(spec.cases):
        x, _, spacing, _ = load_image(case, PREP_2D)
        got = pack.read_image(i)
        assert got.dtype == np.float32 and np.array_equal(got, x), case.case_id
        assert pack.index["kind"][i] == KIND_U8, "an 8-bit radiograph after minmax stores uint8 codes"
        c = pack.case(i)
        assert (c.case_id, c.subject_id, c.label, c.split, c.image) == (case.case_id, case.subject_id, case.label,
                                                                       case.split, case.image)
        assert c.modality == "XR" and pack.index.spacing(i) == tuple(spacing) and pack.index.shape(i) == x.shape
        assert pack.index["sha256"][i] and pack.index["raw_bytes"][i] == os.path.getsize(case.path)
    store = blosc2.DictStore(str(cxr_pack / pack.manifest["shards"][0]["name"]), mode="r")
    assert store["/img/g0"].dtype == np.uint8 and store["/img/g0"].shape == (5, 1, 32, 32)
    assert pack.manifest["contract"] == PREP_2D.contract() and pack.manifest["classes"] == spec.classes



def test_a_packs_cases_are_lazy_lists_over_the_index_with_the_raw_sources_values(cxr, cxr_pack):
    """Memory of a pool of millions: a pack's cases and prepared cases are built on access from the index (the
    pool holds row numbers, not a Python object per case), a split selection stays lazy, and each case has the
    raw source's values."""
    spec = load_source(cxr_pack)
    tracemalloc.start()
    prepared = packed_cases(spec, PREP_2D)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert isinstance(spec.cases, LazyCases) and len(prepared) == len(spec.cases) == 12
    assert held < 4096, f"{held} bytes held for 12 packed cases: objects built per case?"
    assert prepared[0] is not prepared[0] and prepared[0].case == prepared[0].case, "built on access"
    a = prepared[0]
    assert not hasattr(a.case, "__dict__") and not hasattr(a, "__dict__") and not hasattr(a.image, "__dict__")
    raw = {c.case_id: c for c in load_source(cxr).cases}
    assert all(c.case_id in raw and c.image == raw[c.case_id].image and c.subject_id == raw[c.case_id].subject_id
               and c.label == raw[c.case_id].label for c in spec.cases)
    train = replace(spec, cases=tag_cases(spec.cases, source="pool-a")).select(["train"])
    assert isinstance(train.cases, LazyCases) and [c.case_id for c in train.cases] == \
        [c.case_id for c in spec.cases if (c.split or "train") == "train"]
    assert {c.source for c in train.cases} == {"pool-a"} and distinct(train.cases, "source")[0] == ["pool-a"]
    ids = [c.case_id for c in spec.cases]
    assert spec.cases.pack.index["case_id"].take(np.array([2, 0])) == [ids[2], ids[0]]
    lazy_ids = field_values(case_list(prepared), "case_id")
    assert list(lazy_ids) == ids and lazy_ids[3] == ids[3] and lazy_ids[2:4] == ids[2:4]
    assert digest(lazy_ids, chunk=5) == digest(ids), "a checkpoint's data digest is the same, lazy or not"
    for some in (prepared, packed_cases(replace(spec, cases=list(spec.cases)[3:8]), PREP_2D)):  # lazy, a list
        assert [r for chunk in some.records() for r in chunk] == [
            {"case_id": p.case.case_id, "sha256": list(p.digests), "source": p.case.source,
             "modality": p.case.modality} for p in some], "pretrain_cases.json's records from the index columns"


def test_3d_pack_round_trip_with_masks_and_crops_decoded_alone(tmp_path):
    write_dataset(tmp_path / "ct", "abdomen_ct", 3, seed=1, shape=(40, 36, 32))
    out = tmp_path / "pack"
    pack_sources([tmp_path / "ct"], preset="demo-3d", overrides=TINY_3D_DATA, out=out, with_masks=True)
    spec, pack = load_source(tmp_path / "ct"), Pack(out)
    prep = Preprocessing.from_config(*_data_model("demo-3d", TINY_3D_DATA))
    for i, case in enumerate(spec.cases):
        x, meta, _, _ = load_image(case, prep)
        y = load_mask(case, prep, meta, x.shape[1:])
        got = pack.read_image(i)
        if pack.index["kind"][i] == KIND_F16:
            np.testing.assert_allclose(got, x, rtol=2**-11, atol=1e-6)
        else:
            assert np.array_equal(got, x)
        mask = pack.read_mask(i)
        assert mask.dtype == np.uint8 and np.array_equal(mask, y)
        box = (slice(None), slice(3, 27), slice(5, 29), slice(0, 24))
        assert np.array_equal(PackedArray(pack, i)[box], got[box]), "a crop decodes to the same values"
        assert np.array_equal(PackedArray(pack, i, mask=True)[box[1:]], mask[box[1:]])
    packed = packed_cases(load_pack_source(out), prep, with_masks=True)
    in_memory = [type(c)(c.case, c.image[()], c.mask[()], c.spacing) for c in packed]
    aug = Augment((16, 16, 16), flip_axes=(0, 1, 2))
    a, b = (CaseDataset(cases, (16, 16, 16), augment=aug, seed=3) for cases in (packed, in_memory))
    for key in [(e, i) for e in range(2) for i in range(len(packed))]:  # crop-only reads: the same items
        assert torch.equal(a[key]["image"], b[key]["image"]) and torch.equal(a[key]["mask"], b[key]["mask"])
        assert pack.index["mask_values"][i] == ",".join(str(v) for v in np.unique(y))


def _data_model(preset: str, overrides):
    from medmae.config import PretrainConfig, load_config

    cfg = load_config(PretrainConfig, preset=preset, overrides=overrides)
    return cfg.data, cfg.model


def _records(pack: Pack) -> list[dict]:
    return [{k: v for k, v in pack.index.record(i).items() if k not in ("shard", "group", "row")} for i in range(len(pack))]


def test_parts_then_merge_equal_one_pack_and_a_finished_part_is_not_redone(cxr, cxr_pack, tmp_path):
    out = tmp_path / "parts"
    for i in range(3):
        res = pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, part=f"{i}/3", shard_cases=2)
        assert res.manifest is None and not (out / "medmae-pack.json").exists(), "a part alone is not a pack"
    with pytest.raises(ConfigError, match=r"parts \['1/3'\] are missing"):
        merge_packs([out / part_dir_name(0, 3), out / part_dir_name(2, 3)], tmp_path / "incomplete")
    merge_packs([out], out)
    single, merged = Pack(cxr_pack), Pack(out)
    assert _records(single) == _records(merged)
    for i in range(len(single)):
        assert np.array_equal(single.read_image(i), merged.read_image(i))

    shard = out / part_dir_name(1, 3) / "shard-00000.b2z"
    before = shard.stat().st_mtime_ns
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, part="1/3", shard_cases=2)
    assert shard.stat().st_mtime_ns == before, "a finished part must not be packed again"
    with pytest.raises(ConfigError, match="another contract"):
        pack_sources([cxr], preset="demo-2d", overrides=(*TINY_2D_DATA, "data.intensity.name=xray_histeq"), out=out,
                     part="1/3", shard_cases=2)


def test_a_killed_part_resumes_at_its_first_unfinished_shard(cxr, cxr_pack, tmp_path):
    out = tmp_path / "pack"
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, shard_cases=5)
    part = out / part_dir_name(0, 1)
    # what a kill after shard 0 leaves: no part.json, shard 1 without its case list, a half-written temporary file
    (part / PART_FILE).unlink()
    (part / "shard-00001.json").unlink()
    (part / ".shard-00002.tmp-999.b2z").write_bytes(b"half")
    (out / "medmae-pack.json").unlink()
    kept = (part / "shard-00000.b2z").stat().st_mtime_ns
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, shard_cases=5)
    assert (part / "shard-00000.b2z").stat().st_mtime_ns == kept, "a finished shard is not redone"
    assert not list(part.glob(".shard-*")), "the half-written file is cleaned up"
    assert _records(Pack(out)) == _records(Pack(cxr_pack))
    assert verify_pack(out).ok


def test_reading_a_pack_never_opens_the_raw_files(cxr, cxr_pack, tmp_path, monkeypatch):
    raw = str(cxr)
    opened: list[str] = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    spec = load_pack_source(cxr_pack)
    prepared = packed_cases(spec, PREP_2D)
    ds = CaseDataset(prepared, (32, 32), augment=Augment((32, 32), flip_axes=(1,)), seed=0)
    for i in range(len(ds)):
        assert ds[(0, i)]["image"].shape == (1, 32, 32)
    assert prepared[0].digests == (Pack(cxr_pack).index["sha256"][0],)
    assert not [f for f in opened if f.startswith(raw)], "reading the pack opened raw files"


def test_a_config_with_another_contract_is_refused_naming_the_key(cxr_pack):
    spec = load_pack_source(cxr_pack)
    with pytest.raises(ContractError, match=r"data\.intensity=\{'name': 'minmax'\}.*data\.intensity=\{'name': 'xray_histeq'\}"):
        packed_cases(spec, Preprocessing(2, 1, {"name": "xray_histeq"}, orientation=None))
    with pytest.raises(ContractError, match="model.in_channels"):
        packed_cases(spec, Preprocessing(2, 3, {"name": "minmax"}, orientation=None))
    with pytest.raises(ContractError, match="--masks"):
        packed_cases(spec, PREP_2D, with_masks=True)


def test_order_is_a_function_of_seed_and_epoch_and_ddp_shards_are_disjoint_and_covering(cxr_pack):
    prepared = packed_cases(load_pack_source(cxr_pack), PREP_2D)
    n, gb = len(prepared), 4

    def keys(rank: int, world: int, seed: int = 5, epoch: int = 2, skip: int = 0):
        return list(EpochBatchSampler(n, gb, seed=seed, epoch=epoch, rank=rank, world_size=world, skip_batches=skip))

    single = keys(0, 1)
    assert single == keys(0, 1) and single != keys(0, 1, epoch=3) and single != keys(0, 1, seed=6)
    r0, r1 = keys(0, 2), keys(1, 2)
    for s, a, b in zip(single, r0, r1):
        assert sorted(a + b) == sorted(s) and not set(a) & set(b)
    flat = [k for batch in r0 + r1 for k in batch]
    assert len(flat) == len(set(flat)) == n - n % gb, "ranks cover each epoch's samples once"
    assert keys(0, 1, skip=1) == single[1:], "mid-epoch resume skips the batches already seen"
    ds_a = CaseDataset(prepared, (24, 24), augment=Augment((24, 24), flip_axes=(0, 1)), seed=5)
    ds_b = CaseDataset(packed_cases(load_pack_source(cxr_pack), PREP_2D), (24, 24),
                       augment=Augment((24, 24), flip_axes=(0, 1)), seed=5)
    for key in single[0]:
        assert torch.equal(ds_a[key]["image"], ds_b[key]["image"])


def test_cases_over_more_shards_than_a_reader_keeps_open_get_their_shards_as_groups(cxr, cxr_pack, tmp_path):
    assert shard_groups(packed_cases(load_pack_source(cxr_pack), PREP_2D)) is None, "3 shards: global order"
    out = tmp_path / "many"
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, shard_cases=1)
    prepared = packed_cases(load_pack_source(out), PREP_2D)
    groups = shard_groups(prepared)
    assert groups is not None and len(set(groups)) == len(prepared) == 12 > OPEN_SHARDS >= GROUP_WINDOW
    assert [p.image.pack.index["shard"][p.image.i] for p in prepared] == groups.tolist()
    assert shard_groups([*prepared[:-1], type(prepared[0])(prepared[-1].case, np.zeros((1, 4, 4)), None, (1.0, 1.0))]) \
        is None, "a case from the cache: global order"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_every_file_of_a_pack_is_readable_as_any_file_the_user_writes(cxr_pack):
    """A pack written for a group (a shared pool on a cluster) is readable by it: no file is left private."""
    files = [p for p in cxr_pack.rglob("*") if p.is_file()]
    assert {"medmae-pack.json", "index.npz"} <= {p.name for p in files} and any(p.suffix == ".b2z" for p in files)
    assert {p.name: os.stat(p).st_mode & 0o777 for p in files} == {p.name: new_file_mode() for p in files}


def test_the_index_is_a_read_only_memory_map_and_a_damaged_index_is_named(cxr_pack, tmp_path):
    """The index of a pool of millions is page cache, not process memory: every column is a view of one memory map
    of ``index.npz`` with np.load's values; a compressed index still opens; a cut one is named."""
    pack, ref = Pack(cxr_pack), np.load(cxr_pack / "index.npz")
    columns = [pack.index[n] for n in ("shard", "group", "row", "kind", "shape", "spacing")]
    columns += [c for n in ("case_id", "label") for c in (pack.index[n].blob, pack.index[n].offsets)]
    owners = set()
    for a in columns:
        while isinstance(a, np.ndarray) and a.base is not None:
            a = a.base
        a = a.obj if isinstance(a, memoryview) else a
        owners.add(id(a))
        assert isinstance(a, mmap.mmap), f"a column owned by {type(a).__name__}, not the index's memory map"
    assert len(owners) == 1, "one map (one descriptor) per pack"
    assert not pack.index["row"].flags.writeable
    assert np.array_equal(pack.index["spacing"], ref["spacing"], equal_nan=True)
    assert pack.index["case_id"].tolist() == [pack.case(i).case_id for i in range(len(pack))]
    copy = tmp_path / "pack"
    shutil.copytree(cxr_pack, copy)
    index = Pack(copy).index
    blob = pickle.dumps(index)  # what a spawned loader worker receives: the path, not the columns
    assert len(blob) < 1000 and b"case_id" not in blob
    again = pickle.loads(blob)
    assert again["case_id"].tolist() == index["case_id"].tolist() and not again["row"].flags.writeable
    np.savez_compressed(copy / "index.npz", **{k: ref[k] for k in ref.files})
    with pytest.raises(SourceError, match="the pack index changed since this run opened it"):
        pickle.loads(blob)
    assert [Pack(copy).case(i) for i in range(len(pack))] == [pack.case(i) for i in range(len(pack))]
    shutil.copy(cxr_pack / "index.npz", copy / "index.npz")

    def cannot_map(*args, **kwargs):
        raise OSError(19, "No such device")

    with pytest.MonkeyPatch.context() as mp:  # a file system that cannot map files: the index is read instead
        mp.setattr(mmap, "mmap", cannot_map)
        unmapped = Pack(copy)
    assert [unmapped.case(i) for i in range(len(pack))] == [pack.case(i) for i in range(len(pack))]
    (copy / "index.npz").write_bytes((cxr_pack / "index.npz").read_bytes()[:300])
    with pytest.raises(SourceError, match=f"{copy / 'index.npz'}: cannot read the pack index"):
        Pack(copy)


def test_a_damaged_shard_is_named(cxr, tmp_path):
    out = tmp_path / "pack"
    pack_sources([cxr], preset="demo-2d", overrides=TINY_2D_DATA, out=out, shard_cases=5)
    manifest = json.loads((out / "medmae-pack.json").read_text())
    shard = out / manifest["shards"][1]["name"]
    data = bytearray(shard.read_bytes())
    for k in range(200, len(data) - 200, 7):  # same size, scrambled content
        data[k] ^= 0x5A
    shard.write_bytes(bytes(data))
    report = verify_pack(out)
    assert report.bad_shards == [str(shard)] and not report.ok
    prepared = packed_cases(load_pack_source(out), PREP_2D)
    with pytest.raises(CaseError, match=str(shard)):
        for p in prepared:
            np.asarray(p.image)
    shard.write_bytes(bytes(data[:1000]))  # cut short: refused when the pack is opened
    with pytest.raises(SourceError, match=f"{shard}: shard has 1000 bytes"):
        Pack(out)


def test_verify_reports_raw_files_changed_since_packing(cxr, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(cxr, src)
    out = tmp_path / "pack"
    pack_sources([src], preset="demo-2d", overrides=TINY_2D_DATA, out=out)
    assert verify_pack(out).ok
    first = Pack(out).case(0).path
    with open(first, "ab") as f:
        f.write(b"\0")
    report = verify_pack(out)
    assert report.changed == [first] and not report.ok and report.raw_checked == 12


def test_a_pack_in_a_pool_keeps_source_weights_and_modalities(cxr, cxr_pack):
    from medmae.config import PretrainConfig, load_config
    from medmae.data.pipeline import prepare_pool, resolve_parts

    sources = f"data.sources=[{{path: '{cxr_pack}', weight: 3.0}}, {{path: '{cxr}', weight: 1.0}}]"
    cfg = load_config(PretrainConfig, preset="demo-2d", overrides=[*TINY_2D_DATA, sources, "data.sampling=source"])
    pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data, show_progress=False)
    w = np.asarray(pool.weights)
    assert len(w) == 24 and w[:12].sum() / w[12:].sum() == pytest.approx(3.0)
    assert pool.composition == {"sources": {str(cxr_pack): 12, str(cxr): 12}, "modalities": {"XR": 24},
                                "sampling": "source", "skipped": 0}
    assert [type(p.image).__name__ for p in (pool.prepared[0], pool.prepared[12])] == ["PackedArray", "CachedArray"]
    assert np.array_equal(np.asarray(pool.prepared[5].image), np.asarray(pool.prepared[17].image))


def test_loader_workers_forked_after_the_parent_read_the_pack_do_not_hang(cxr_pack):
    """The budget calibration reads batches in the main process before the DataLoader forks its workers; a blosc2
    thread pool started by those reads does not exist in the forked workers, which then waited forever (seen with
    224 px packs). Reading keeps blosc2 single-threaded; the workers must deliver what one process reads."""
    prepared = packed_cases(load_pack_source(cxr_pack), PREP_2D)
    ds = CaseDataset(prepared, (24, 24), augment=Augment((24, 24), flip_axes=(0, 1)), seed=5)
    blosc2.set_nthreads(2)  # as blosc2 starts in a fresh process on a 2-core machine
    want = [ds[(0, i)]["image"] for i in range(len(ds))]  # the parent reads first
    assert blosc2.nthreads == 1, "a pack reader must decompress in the calling thread"
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(0, i) for i in range(len(ds))]], num_workers=2,
                                         multiprocessing_context="fork", timeout=60)
    (batch,) = list(loader)
    assert torch.equal(batch["image"], torch.stack(want))
