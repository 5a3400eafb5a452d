"""Stateless items, epoch batch sharding, worker errors that name the case, and the preprocessing cache."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medmae.data import dataset as ds_mod
from medmae.data.cache import ArrayCache
from medmae.data.cases import Case
from medmae.data.dataset import Augment, CaseDataset, EpochBatchSampler, Prepared, case_seed, prepare_cases
from medmae.data.preprocess import Preprocessing
from medmae.errors import CaseError

H, W = 32, 40


def ramp_case(i: int) -> Prepared:
    """A (1, 32, 40) image whose value is ``10000 i + 40 y + x``: any crop or flip is recognisable."""
    img = (10000.0 * i + np.arange(H * W, dtype=np.float32).reshape(1, H, W)).astype(np.float32)
    return Prepared(Case(f"case{i:02d}", (f"/data/case{i:02d}.png",), f"case{i:02d}"), img, None, (1.0, 1.0))


def make_dataset(n: int = 6, *, augment: Augment | None = Augment((16, 16), flip_axes=(0, 1)), seed: int = 7) -> CaseDataset:
    return CaseDataset([ramp_case(i) for i in range(n)], (16, 16), augment=augment, seed=seed)


def test_case_seed_depends_on_every_part_of_the_key():
    base = case_seed(1, 2, 3, 0)
    assert base == case_seed(1, 2, 3, 0)
    assert len({base, case_seed(2, 2, 3, 0), case_seed(1, 3, 3, 0), case_seed(1, 2, 4, 0), case_seed(1, 2, 3, 1)}) == 5
    assert 0 <= base < 2**63


def test_an_item_is_a_pure_function_of_seed_epoch_and_index():
    a, b = make_dataset(), make_dataset()
    first = a[(3, 2)]
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    _ = [a[(e, i)] for e in range(3) for i in range(6)]  # other items and global RNG use in between
    again, fresh = a[(3, 2)], b[(3, 2)]
    for other in (again, fresh):
        assert torch.equal(first["image"], other["image"])
        assert int(first["seed"]) == int(other["seed"]) and other["index"] == 2
    assert not torch.equal(make_dataset(seed=8)[(3, 2)]["image"], first["image"]), "the run seed must matter"


def test_a_new_epoch_gives_a_new_crop_of_the_same_case():
    d = make_dataset()
    for i in range(6):
        e0, e1 = d[(0, i)], d[(1, i)]
        assert not torch.equal(e0["image"], e1["image"]), f"case {i}: same crop in epochs 0 and 1"
        assert int(e0["seed"]) != int(e1["seed"]), "the mask seed must change with the epoch"
        for item in (e0, e1):
            x = item["image"][0]
            assert x.shape == (16, 16)
            assert ((x // 10000) == i).all(), "pixels from another case"
            assert torch.all(torch.diff(x, dim=1).abs() == 1) and torch.all(torch.diff(x, dim=0).abs() == W), \
                "not a (possibly flipped) window of the image"


def test_without_augment_the_crop_is_centred_and_epoch_independent():
    d = make_dataset(augment=None)
    x = d[(0, 1)]["image"][0]
    assert torch.equal(x, d[(5, 1)]["image"][0])
    top, left = (H - 16) // 2, (W - 16) // 2
    assert float(x[0, 0]) == 10000 + top * W + left


class BrokenArray:
    """Stands in for a memory-mapped case whose file vanished: any use raises."""

    def __getattr__(self, name):
        raise OSError(5, "Input/output error", "/cache/arrays/ab/abcdef.npy")

    def __array__(self, *a, **kw):
        raise OSError(5, "Input/output error", "/cache/arrays/ab/abcdef.npy")


def test_a_worker_error_reaches_the_main_process_naming_the_case():
    prepared = [ramp_case(i) for i in range(4)]
    broken = Case("broken_case_17", ("/data/broken_case_17.nii.gz",), "s17")
    prepared[2] = Prepared(broken, BrokenArray(), None, (1.0, 1.0))
    loader = DataLoader(CaseDataset(prepared, (16, 16), augment=Augment((16, 16)), seed=0),
                        batch_size=2, num_workers=1)
    batches_seen, it = [], iter(loader)
    try:
        batches_seen.extend(it)
        msg = None
    except CaseError as e:
        msg = str(e)
        e.__traceback__ = None  # its frames hold the iterator: free it (and stop its worker) now, not at a later GC
    del it
    assert msg is not None, f"no error after {len(batches_seen)} batches"
    assert "broken_case_17" in msg and "/data/broken_case_17.nii.gz" in msg and "Input/output error" in msg
    assert "died" not in msg and "exited unexpectedly" not in msg


class SlicedOnly:
    """An array read on slicing (like a pack's ``PackedArray``): records the boxes read; whole reads are counted."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.boxes, self.whole = array, array.shape, [], 0

    def __getitem__(self, box):
        self.boxes.append(box)
        return self.array[box].copy()

    def open(self):
        self.whole += 1
        return self.array


def volume_case(i: int, shape=(20, 18, 16), lazy: bool = False) -> Prepared:
    rng = np.random.default_rng(i)
    img = rng.normal(size=(1, *shape)).astype(np.float32)
    msk = (rng.random(shape) > 0.7).astype(np.int64)
    img_a, msk_a = (SlicedOnly(img), SlicedOnly(msk)) if lazy else (img, msk)
    return Prepared(Case(f"vol{i}", (f"/data/vol{i}.nii.gz",), f"vol{i}"), img_a, msk_a, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("augment", [Augment((8, 8, 8), flip_axes=(0, 1, 2), foreground_prob=0.5), None])
def test_a_crop_reads_only_its_box_and_gives_the_item_of_the_whole_array(augment):
    whole = CaseDataset([volume_case(i) for i in range(3)], (8, 8, 8), augment=augment, seed=5,
                        foreground=[np.argwhere(volume_case(i).mask) for i in range(3)])
    lazy_cases = [volume_case(i, lazy=True) for i in range(3)]
    lazy = CaseDataset(lazy_cases, (8, 8, 8), augment=augment, seed=5,
                       foreground=[np.argwhere(volume_case(i).mask) for i in range(3)])
    for key in [(e, i) for e in range(3) for i in range(3)]:
        a, b = whole[key], lazy[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]), key
    for p in lazy_cases:
        assert p.image.whole == 0 and p.mask.whole == 0, "the whole volume was read for a crop"
        sizes = {tuple(b.stop - b.start for b in box[-3:]) for box in p.image.boxes}
        assert sizes == {(8, 8, 8)}, sizes


def test_a_volume_smaller_than_the_crop_is_read_whole_and_padded():
    p = volume_case(0, shape=(6, 18, 16), lazy=True)
    item = CaseDataset([p], (8, 8, 8), augment=Augment((8, 8, 8)), seed=0)[(0, 0)]
    assert item["image"].shape == (1, 8, 8, 8) and p.image.whole == 1
    assert float(item["image"][0, 0].min()) == float(p.image.array.min()), "padded with the image's minimum"


# ------------------------------------------------------------------------------------------- batch sampler


def batches(n, gb, epoch, *, rank=0, world=1, skip=0, seed=3):
    return list(EpochBatchSampler(n, gb, seed=seed, epoch=epoch, rank=rank, world_size=world, skip_batches=skip))


def test_rank_shards_are_disjoint_and_together_make_the_single_process_batch():
    single = batches(22, 6, epoch=4)
    assert len(single) == 3 and all(len(b) == 6 for b in single)  # 22 // 6 full batches, the rest dropped
    shards = [batches(22, 6, epoch=4, rank=r, world=3) for r in range(3)]
    for step, full in enumerate(single):
        parts = [s[step] for s in shards]
        assert all(len(p) == 2 for p in parts)
        flat = [k for p in parts for k in p]
        assert len(set(flat)) == len(flat), "ranks share a case within one step"
        assert flat == full, "the ranks' shards in rank order must be the single-process batch"
    assert all(e == 4 for b in single for e, _ in b)
    indices = [i for b in single for _, i in b]
    assert len(set(indices)) == len(indices) and set(indices) <= set(range(22))


def test_each_epoch_has_its_own_order_and_the_same_epoch_the_same_order():
    assert batches(20, 4, epoch=0) == batches(20, 4, epoch=0)
    orders = {tuple(i for b in batches(20, 4, epoch=e) for _, i in b) for e in range(5)}
    assert len(orders) == 5
    assert batches(20, 4, epoch=0, seed=1) != batches(20, 4, epoch=0, seed=2)


def test_skip_batches_resumes_mid_epoch():
    full = batches(20, 4, epoch=2)
    assert batches(20, 4, epoch=2, skip=3) == full[3:]
    assert len(EpochBatchSampler(20, 4, seed=3, epoch=2, skip_batches=3)) == 2
    assert batches(20, 4, epoch=2, rank=1, world=2, skip=3) == [b[2:] for b in full[3:]]


def test_a_grouped_order_shuffles_a_few_groups_at_a_time_and_keeps_every_sampler_property():
    groups = [i // 10 for i in range(120)][::-1]  # 12 groups of 10 cases, listed out of order
    window = ds_mod.GROUP_WINDOW
    order = [i for b in EpochBatchSampler(120, 8, seed=1, epoch=0, groups=groups) for _, i in b]
    assert sorted(order) == list(range(120)), "every case once per epoch (120 = 15 batches of 8)"
    for start in range(0, 120, 10 * window):  # each run of `window` groups' cases comes as one shuffled block
        block = order[start: start + 10 * window]
        assert len({groups[i] for i in block}) == window
    assert order[: 10 * window] != sorted(order[: 10 * window], key=lambda i: (groups[i], i)), "shuffled within"
    grouped = lambda **kw: list(EpochBatchSampler(120, 8, seed=1, groups=groups, **kw))  # noqa: E731
    assert grouped(epoch=0) == grouped(epoch=0) != grouped(epoch=1)
    for step, full in enumerate(grouped(epoch=2)):  # DDP: the ranks' slices make the single-process batch
        assert [k for r in range(2) for k in grouped(epoch=2, rank=r, world_size=2)[step]] == full
    assert grouped(epoch=2, skip_batches=4) == grouped(epoch=2)[4:]
    weighted = dict(seed=1, epoch=0, weights=[1.0 + i % 3 for i in range(120)])
    assert list(EpochBatchSampler(120, 8, groups=groups, **weighted)) == list(EpochBatchSampler(120, 8, **weighted)), \
        "a weighted pool keeps its weighted draw"
    with pytest.raises(ValueError, match="3 groups for 120 cases"):
        EpochBatchSampler(120, 8, seed=1, epoch=0, groups=[0, 1, 2])


def test_sampler_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        EpochBatchSampler(20, 4, seed=0, epoch=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than the global batch size 8"):
        EpochBatchSampler(5, 8, seed=0, epoch=0)


# ---------------------------------------------------------------------------------------------- the cache


@pytest.fixture
def png_cases(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(path)
        cases.append(Case(f"img{i}", (str(path),), f"img{i}"))
    return cases


@pytest.fixture
def counted_reads(monkeypatch):
    calls = []
    real = ds_mod.load_image

    def counting(case, prep):
        calls.append(case.case_id)
        return real(case, prep)

    monkeypatch.setattr(ds_mod, "load_image", counting)
    return calls


PREP = Preprocessing(spatial_dims=2, in_channels=1, intensity={"name": "minmax"}, orientation=None)


def test_a_second_prepare_reads_nothing(png_cases, counted_reads, tmp_path):
    cache = ArrayCache(tmp_path / "cache")
    first = prepare_cases(png_cases, PREP, cache)
    assert counted_reads == ["img0", "img1"]
    second = prepare_cases(png_cases, PREP, ArrayCache(tmp_path / "cache"))
    assert counted_reads == ["img0", "img1"], "the cached arrays were not used"
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.image.shape == (1, 20, 24) and a.spacing == b.spacing
    other = Preprocessing(spatial_dims=2, in_channels=1, intensity={"name": "none"}, orientation=None)
    prepare_cases(png_cases, other, cache)
    assert counted_reads == ["img0", "img1"] * 2, "another recipe must not reuse the cached arrays"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_cached_array_is_recomputed(png_cases, counted_reads, tmp_path, damage):
    cache = ArrayCache(tmp_path / "cache")
    expected = np.array(prepare_cases(png_cases, PREP, cache)[1].image)
    npy = cache.path(cache.key(png_cases[1].image, PREP.recipe()) + "-img")
    assert npy.is_file()
    data = npy.read_bytes()
    npy.unlink()  # a new file: the old one may still be memory-mapped
    npy.write_bytes(b"\x00not an npy file" if damage == "garbage" else data[: len(data) - 100])
    again = prepare_cases(png_cases, PREP, cache)
    assert counted_reads == ["img0", "img1", "img1"]
    np.testing.assert_array_equal(again[1].image, expected)
    np.testing.assert_array_equal(np.load(npy), expected)


def test_a_multi_epoch_sampler_equals_consecutive_epoch_samplers():
    """One sampler (one DataLoader, one worker pool) for a whole run gives the same keys as one per epoch."""
    kw = dict(num_cases=10, global_batch=4, seed=3, rank=1, world_size=2)
    joined = list(EpochBatchSampler(**kw, epoch=2, skip_batches=1, epochs=3))
    separate = [b for e in (2, 3, 4) for b in EpochBatchSampler(**kw, epoch=e, skip_batches=1 if e == 2 else 0)]
    assert joined == separate and len(joined) == len(EpochBatchSampler(**kw, epoch=2, skip_batches=1, epochs=3)) == 5
