"""Datasets over cached, preprocessed cases with stateless augmentation.

An item is a pure function of (seed, epoch, case index): the shuffle order, the crop, the flip and the
MAE mask seed never touch a global RNG. That is what makes resume after a crash bitwise exact and lets a
2-process DDP run see exactly the samples of the single-process run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from medmae.data.cache import ArrayCache, CachedArray, mapped
from medmae.data.cases import Case
from medmae.data.preprocess import Preprocessing, load_image, load_mask
from medmae.errors import CaseError

log = logging.getLogger(__name__)

STREAM_AUGMENT, STREAM_MASK = 0, 1
GROUP_WINDOW = 4  # shards shuffled together by a grouped order (at most the 8 a reader keeps open: pack_store)


def case_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, case index, stream)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, index, stream]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass(frozen=True)
class Augment:
    """Random crop (2D: optionally resized crop of a random area fraction) and flips."""

    crop_size: tuple[int, ...]
    crop_scale: tuple[float, float] | None = None
    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    foreground_prob: float = 0.0
    transforms: Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None = None  # data.augment: medmae.data.augment


@dataclass(slots=True)
class Prepared:
    """A case after preprocessing: its cached arrays (held by path, mapped per access; ``np.asarray`` reads one)
    plus what evaluation needs. Tests may hold in-memory arrays instead."""

    case: Case
    image: CachedArray | np.ndarray
    mask: CachedArray | np.ndarray | None
    spacing: tuple[float, ...]
    digests: tuple[str, ...] | None = None  # sha256 of the raw image files when known (a pack records them)


def prepare_cases(
    cases: Sequence[Case],
    prep: Preprocessing,
    cache: ArrayCache,
    *,
    with_masks: bool = False,
    progress: Callable[[int, int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> list[Prepared]:
    """Preprocess every case once (or find it in the cache); errors name the case and file.

    With a ``skipped`` list, a case that fails is recorded there and left out instead of raising.
    """
    out = []
    for i, case in enumerate(cases):
        try:
            out.append(_prepare_one(case, prep, cache, with_masks))
        except CaseError as e:
            if skipped is None:
                raise
            skipped.append({"case_id": case.case_id, "path": case.path, "error": str(e)})
            log.warning("skipping %s", e)
        if progress:
            progress(i + 1, len(cases))
    return out


def _prepare_one(case: Case, prep: Preprocessing, cache: ArrayCache, with_masks: bool) -> Prepared:
    """Preprocess one case, or load it from the cache (keyed by file content and the recipe)."""
    files = list(case.image) + ([case.mask] if with_masks and case.mask else [])
    try:
        key = cache.key(files, prep.recipe() + ("|mask" if with_masks and case.mask else ""))
    except OSError as e:
        raise CaseError(f"case {case.case_id} ({e.filename or case.path}): {e.strerror or e}") from e
    want_mask = bool(with_masks and case.mask)
    info = cache.load_json(key + "-img") or {}
    image = cache.load(key + "-img", info.get("shape"), info.get("dtype"))
    mask = cache.load(key + "-msk", info.get("mask_shape"), info.get("mask_dtype")) if want_mask else None
    if image is None or "spacing" not in info or (want_mask and mask is None):
        x, meta, spacing, _ = load_image(case, prep)
        if want_mask:
            mask = cache.store(key + "-msk", load_mask(case, prep, meta, x.shape[1:]))
        image = cache.store(key + "-img", x)
        info = {"spacing": list(spacing), "shape": list(image.shape), "dtype": image.dtype}
        if mask is not None:
            info.update(mask_shape=list(mask.shape), mask_dtype=mask.dtype)
        cache.store_json(key + "-img", info)
    return Prepared(case, image, mask, tuple(info["spacing"]))


# ------------------------------------------------------------------------------------------ augmentation


def pad_value(image_cs: np.ndarray) -> np.ndarray | float:
    """What an image is padded with, in training crops and at inference alike: each channel's minimum (the
    background of a normalised image; 0 would read as mean tissue after a z-score)."""
    return np.asarray([float(np.min(c)) for c in image_cs]) if image_cs.size else 0.0


def pad_to(x_cs: np.ndarray, size: Sequence[int], value: float | np.ndarray) -> np.ndarray:
    """Pad spatial dims symmetrically up to ``size`` (no-op where already large enough)."""
    pads = [(0, 0)] + [((max(0, s - d)) // 2, max(0, s - d) - max(0, s - d) // 2) for d, s in zip(x_cs.shape[1:], size)]
    if all(p == (0, 0) for p in pads):
        return x_cs
    if np.ndim(value) == 0:
        return np.pad(x_cs, pads, constant_values=value)
    return np.stack([np.pad(c, pads[1:], constant_values=v) for c, v in zip(x_cs, value)])


def random_crop_box(
    rng: np.random.Generator, shape: Sequence[int], size: Sequence[int], center: Sequence[int] | None = None
) -> tuple[slice, ...]:
    """Crop of ``size`` inside ``shape`` (shape >= size), uniformly placed or containing ``center``."""
    starts = []
    for d, (n, s) in enumerate(zip(shape, size)):
        hi = n - s
        if center is None:
            starts.append(int(rng.integers(0, hi + 1)))
        else:
            starts.append(int(np.clip(center[d] - s // 2 + rng.integers(-(s // 4), s // 4 + 1), 0, hi)))
    return tuple(slice(a, a + s) for a, s in zip(starts, size))


def resized_crop_box(rng: np.random.Generator, shape: Sequence[int], scale: tuple[float, float]) -> tuple[slice, ...]:
    """RandomResizedCrop box for 2D: area fraction in ``scale``, aspect ratio in [3/4, 4/3]."""
    h, w = shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = int(round(math.sqrt(area / ratio))), int(round(math.sqrt(area * ratio)))
        if 0 < ch <= h and 0 < cw <= w:
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return slice(y, y + ch), slice(x, x + cw)
    side = min(h, w)
    return slice((h - side) // 2, (h - side) // 2 + side), slice((w - side) // 2, (w - side) // 2 + side)


def center_crop_box(shape: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, size))


def resize_to(x_cs: np.ndarray, size: Sequence[int], *, label: bool) -> torch.Tensor:
    t = torch.from_numpy(np.array(x_cs, dtype=np.float32))  # a copy: cached arrays are read-only memory maps
    if tuple(t.shape[1:]) == tuple(size):
        return t
    mode = "nearest-exact" if label else ("bilinear" if len(size) == 2 else "trilinear")
    kw = {} if label else {"align_corners": False}
    return F.interpolate(t[None], size=tuple(size), mode=mode, **kw)[0]


def augment_case(
    image_cs: np.ndarray | CachedArray,
    mask_s: np.ndarray | CachedArray | None,
    aug: Augment | None,
    rng: np.random.Generator | None,
    crop_size: Sequence[int],
    fg_coords: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop (random when ``aug``, else centred) and flip one case; returns tensors (C, *crop) and (*crop).

    ``image_cs`` / ``mask_s`` may be arrays read on slicing (a pack's ``PackedArray``, the cache's ``CachedArray``):
    when neither padding nor MONAI transforms need the whole image, only the crop is read (a 96^3 crop of a large
    CT decompresses the blocks under it, not the volume). Same random draws, so the same item either way."""
    transforms = aug is not None and aug.transforms is not None
    whole = transforms or any(d < s for d, s in zip(image_cs.shape[1:], crop_size))
    if whole:  # padding (with the image's minimum) and the transforms take the whole image
        image_cs = mapped(image_cs)  # a cached array is mapped for this access only, a packed one decoded
        mask_s = mapped(mask_s) if mask_s is not None else None
        fill = pad_value(image_cs)
        image = pad_to(image_cs, crop_size, fill)
        mask = pad_to(mask_s[None], crop_size, 0)[0] if mask_s is not None else None
    else:
        image, mask = image_cs, mask_s
    shape = image.shape[1:]
    if aug is None:
        box = center_crop_box(shape, crop_size)
    elif aug.crop_scale is not None and len(shape) == 2:
        box = resized_crop_box(rng, shape, aug.crop_scale)
    else:
        center = None
        if fg_coords is not None and len(fg_coords) and rng.random() < aug.foreground_prob:
            center = fg_coords[int(rng.integers(len(fg_coords)))]
        box = random_crop_box(rng, shape, crop_size, center)
    if transforms:  # MONAI transforms, seeded by a child of this item's rng
        img_t, msk_t = aug.transforms(image, mask, box, fill, int(rng.spawn(1)[0].integers(2**32)))
    else:
        img_t = resize_to(np.asarray(image[(slice(None), *box)]), crop_size, label=False)
        msk_t = resize_to(np.asarray(mask[box])[None], crop_size, label=True)[0].to(torch.int64) if mask is not None else None
    if aug is not None:
        for axis in aug.flip_axes:
            if rng.random() < aug.flip_prob:
                img_t = img_t.flip(axis + 1)
                if msk_t is not None:
                    msk_t = msk_t.flip(axis)
    return img_t.contiguous(), (msk_t.contiguous() if msk_t is not None else None)


def pick_slice(image_cs: np.ndarray, mask_s: np.ndarray | None, axis: int, rng: np.random.Generator | None,
               tries: int = 8) -> tuple[np.ndarray, np.ndarray | None]:
    """One 2D slice of a (C, X, Y, Z) volume along spatial ``axis``: random (avoiding constant slices) or,
    without ``rng``, the middle one."""
    n = image_cs.shape[1 + axis]
    idx = n // 2
    if rng is not None:
        for _ in range(tries):
            idx = int(rng.integers(n))
            sl = np.take(image_cs, idx, axis=1 + axis)
            if float(sl.max()) > float(sl.min()):
                break
    image = np.take(image_cs, idx, axis=1 + axis)
    return image, (np.take(mask_s, idx, axis=axis) if mask_s is not None else None)


# ----------------------------------------------------------------------------------------------- dataset


class CaseDataset(Dataset):
    """Items ``{"image", "index", "seed"[, "mask"][, "target"]}`` for key ``(epoch, index)``.

    ``augment`` None gives the deterministic centred crop (evaluation, figures).
    """

    def __init__(
        self,
        prepared: Sequence[Prepared],
        crop_size: Sequence[int],
        *,
        augment: Augment | None,
        seed: int,
        targets: np.ndarray | None = None,
        foreground: Sequence[np.ndarray | None] | None = None,
        slice_axis: int | None = None,
    ):
        self.prepared = prepared if isinstance(prepared, Sequence) else list(prepared)  # a pack's stays lazy
        self.crop_size = tuple(int(s) for s in crop_size)
        self.augment = augment
        self.seed = int(seed)
        self.targets = targets
        self.foreground = foreground
        self.slice_axis = slice_axis

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        p = self.prepared[index]
        try:
            rng = np.random.default_rng(case_seed(self.seed, epoch, index, STREAM_AUGMENT))
            fg = self.foreground[index] if self.foreground is not None else None
            image, mask = p.image, p.mask  # held cases keep no file open: read per access, crop only if it can
            if self.slice_axis is not None:
                image, mask = mapped(image), (mapped(mask) if mask is not None else None)
            if self.slice_axis is not None and image.ndim == len(self.crop_size) + 2:
                image, mask = pick_slice(image, mask, self.slice_axis, rng if self.augment else None)
                fg = None
            image, mask = augment_case(image, mask, self.augment, rng, self.crop_size, fg)
        except Exception as e:  # noqa: BLE001 - the worker's error must carry the case id
            raise CaseError(f"case {p.case.case_id} ({p.case.path}): {type(e).__name__}: {e}") from e
        item: dict[str, Any] = {
            "image": image,
            "index": index,
            "seed": torch.tensor(case_seed(self.seed, epoch, index, STREAM_MASK), dtype=torch.int64),
        }
        if mask is not None:
            item["mask"] = mask
        if self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[index])
        return item


def order_kind(weights: Sequence[float] | None, groups: Sequence[int] | None) -> str:
    """How :class:`EpochBatchSampler` orders an epoch: ``shard-windows`` (groups and no weights: weights win) or
    ``epoch-permutation`` (a permutation, or a weighted draw of the same length)."""
    return "shard-windows" if groups is not None and weights is None else "epoch-permutation"


def grouped_order(groups_n: Sequence[int], window: int, g: torch.Generator) -> torch.Tensor:
    """A shuffle that keeps reads local: the groups (a pack's shards) in random order, then the cases of each run
    of ``window`` consecutive groups shuffled together (a shuffle buffer of ``window`` shards, as in webdataset /
    nnssl). Every case once; a pure function of ``g``'s state."""
    ids, inverse, counts = torch.unique(torch.as_tensor(groups_n), return_inverse=True, return_counts=True)
    by_group = torch.argsort(inverse, stable=True)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    chosen = torch.randperm(len(ids), generator=g).tolist()
    out = []
    for w in range(0, len(chosen), window):
        members = torch.cat([by_group[starts[c]: starts[c] + int(counts[c])] for c in chosen[w: w + window]])
        out.append(members[torch.randperm(len(members), generator=g)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` keys: this rank's share of each global batch, for ``epochs`` epochs from ``epoch``.

    Each epoch's order is ``randperm`` seeded by (seed, epoch) (with ``weights``: a weighted draw with
    replacement of the same length; with ``groups``, one group per case, :func:`grouped_order`: a large pack's
    shards, so that a batch reads few of them); rank r takes slice r of every global batch, so the union over
    ranks at each step is exactly the single-process batch. Incomplete final batches are dropped.
    ``skip_batches`` resumes mid-epoch. Spanning many epochs lets one DataLoader (one worker pool) serve a whole run.
    """

    def __init__(self, num_cases: int, global_batch: int, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, skip_batches: int = 0, weights: Sequence[float] | None = None,
                 epochs: int = 1, groups: Sequence[int] | None = None):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the {world_size} processes")
        if num_cases < global_batch:
            raise ValueError(f"{num_cases} cases are fewer than the global batch size {global_batch}")
        self.num_cases, self.global_batch = num_cases, global_batch
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.skip_batches = skip_batches
        self.weights = weights
        self.epochs = epochs
        if groups is not None and len(groups) != num_cases:
            raise ValueError(f"{len(groups)} groups for {num_cases} cases")
        self.groups = groups

    @staticmethod
    def steps_per_epoch(num_cases: int, global_batch: int) -> int:
        return num_cases // global_batch

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch(self.num_cases, self.global_batch) - self.skip_batches

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of one epoch (int64; a tensor, not a list: 8 bytes a case for a pool of millions)."""
        g = torch.Generator().manual_seed(case_seed(self.seed, epoch, 0, 2))
        if order_kind(self.weights, self.groups) == "shard-windows":
            return grouped_order(self.groups, GROUP_WINDOW, g)
        if self.weights is None:
            return torch.randperm(self.num_cases, generator=g)
        w = torch.as_tensor(self.weights, dtype=torch.float64)  # pools: weighted draw with replacement
        return torch.multinomial(w, self.num_cases, replacement=True, generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        local = self.global_batch // self.world_size
        for epoch in range(self.epoch, self.epoch + self.epochs):
            perm = self.order(epoch)
            first = self.skip_batches if epoch == self.epoch else 0
            for b in range(first, self.steps_per_epoch(self.num_cases, self.global_batch)):
                start = b * self.global_batch + self.rank * local
                yield [(epoch, i) for i in perm[start: start + local].tolist()]
