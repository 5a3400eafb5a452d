"""Spatial and intensity augmentation of training crops: MONAI transforms, built once, seeded per item.

The transforms are built once per dataset from ``data.augment`` (:class:`medmae.config.augment.AugmentConfig`) and
re-seeded for every item from that item's own generator (a pure function of (seed, epoch, case index)), so an item
stays a pure function of its key: resume is bitwise exact and DDP ranks see the single-process samples.

Spatial transforms (rotation, scaling, 2D elastic) would pull padding into the crop's corners; instead the crop
box is grown by a margin of context on every side, the transform samples from that larger region and outputs the
crop size (nnU-Net samples its rotated patch from the whole image for the same reason). Masks follow with nearest
interpolation, so they stay integer label maps aligned with the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)

from medmae.config.augment import AugmentConfig
from medmae.config.data import DataConfig
from medmae.data.dataset import Augment, resize_to

IMAGE, MASK = "image", "mask"
CONTEXT = 0.25  # margin of context on each side, as a share of the crop side, sampled by rotations and zooms


def take_box(x_cs: np.ndarray, box: Sequence[slice], pad_value: float | np.ndarray) -> np.ndarray:
    """``x_cs[:, box]`` where the box may reach outside the array: the outside is ``pad_value`` (per channel)."""
    inner, pads = [], []
    for s, n in zip(box, x_cs.shape[1:]):
        lo, hi = max(s.start, 0), min(s.stop, n)
        inner.append(slice(lo, hi))
        pads.append((lo - s.start, s.stop - hi))
    region = np.asarray(x_cs[(slice(None), *inner)], dtype=np.float32)
    if not any(a or b for a, b in pads):
        return region
    values = np.broadcast_to(np.asarray(pad_value, dtype=np.float32), (region.shape[0],))
    return np.stack([np.pad(c, pads, constant_values=v) for c, v in zip(region, values)])


def grow_box(box: Sequence[slice], crop_size: Sequence[int], margin: Sequence[int]) -> tuple[slice, ...]:
    """The crop box grown by ``margin`` crop pixels per side, in source pixels (a resized crop's box is scaled)."""
    out = []
    for s, c, m in zip(box, crop_size, margin):
        src = int(round(m * (s.stop - s.start) / c))
        out.append(slice(s.start - src, s.stop + src))
    return tuple(out)


def _radians(deg: float) -> tuple[float, float]:
    return (-math.radians(deg), math.radians(deg))


def spatial_transforms(p: dict[str, Any], spatial_dims: int, crop_size: Sequence[int]) -> dict[str, Any]:
    """The spatial transforms that can fire, each applied with certainty once chosen: ``affine`` (rotation + zoom)
    to the crop size, ``affine_keep`` (the same, keeping the grown size, when the 2D ``elastic`` deformation follows
    and samples the crop). Whether each fires is drawn per item (see :class:`CropTransforms`)."""
    rot = [_radians(p["rotate_deg_2d"])] if spatial_dims == 2 else [_radians(p["rotate_deg"])] * 3
    zoom = [(p["scale"][0] - 1.0, p["scale"][1] - 1.0)] * spatial_dims  # MONAI adds 1 to the drawn value
    common = {"keys": [IMAGE, MASK], "mode": ("bilinear", "nearest"), "padding_mode": ("border", "zeros"),
              "allow_missing_keys": True}
    out: dict[str, Any] = {}
    if p["spatial_prob"] > 0:
        out["affine"] = RandAffined(prob=1.0, rotate_range=rot, scale_range=zoom, spatial_size=tuple(crop_size), **common)
        out["affine_keep"] = RandAffined(prob=1.0, rotate_range=rot, scale_range=zoom, **common)
    if spatial_dims == 2 and p["elastic_prob"] > 0:
        spacing = max(4, min(crop_size) // 6)
        out["elastic"] = Rand2DElasticd(spacing=(spacing, spacing), magnitude_range=(0.0, 1.5), prob=1.0,
                                        spatial_size=tuple(crop_size), **common)
    return out


def intensity_transforms(p: dict[str, Any], spatial_dims: int) -> list:
    """nnU-Net's intensity set as MONAI transforms on the image only (those with probability 0 left out)."""
    k = {"keys": [IMAGE]}
    sigma = {"sigma_x": (0.5, 1.0), "sigma_y": (0.5, 1.0), "sigma_z": (0.5, 1.0)}
    upsample = "bilinear" if spatial_dims == 2 else "trilinear"
    gamma = p["gamma_prob"]
    candidates = [
        (p["noise_prob"], lambda q: RandGaussianNoised(prob=q, mean=0.0, std=0.1, **k)),
        (p["blur_prob"], lambda q: RandGaussianSmoothd(prob=q, **sigma, **k)),
        (p["brightness_prob"], lambda q: RandScaleIntensityd(factors=0.25, prob=q, **k)),
        (p["contrast_prob"], lambda q: RandScaleIntensityFixedMeand(factors=0.25, fixed_mean=True, preserve_range=True,
                                                                    prob=q, **k)),
        (p["low_res_prob"], lambda q: RandSimulateLowResolutiond(prob=q, zoom_range=(0.5, 1.0), upsample_mode=upsample,
                                                                 **k)),
        (gamma / 3, lambda q: RandAdjustContrastd(prob=q, gamma=(0.7, 1.5), invert_image=True, retain_stats=True, **k)),
        (gamma, lambda q: RandAdjustContrastd(prob=q, gamma=(0.7, 1.5), retain_stats=True, **k)),
    ]
    return [make(q) for q, make in candidates if q > 0]


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class CropTransforms:
    """The MONAI part of a training item: ``(image, mask, box, pad value, seed) -> (image (C, *crop), mask (*crop))``.

    The item's seed draws whether the affine (``spatial_prob``) and the 2D elastic deformation (``elastic_prob``)
    fire and seeds the transforms. Only an item that is rotated or zoomed pays for the grown box and the
    resampling; the others are cut exactly as without augmentation (a resampling that does nothing cost ~0.2 s
    per 96^3 item)."""

    def __init__(self, params: dict[str, Any], spatial_dims: int, crop_size: Sequence[int]):
        self.crop_size = tuple(int(c) for c in crop_size)
        self.p_affine, self.p_elastic = params["spatial_prob"], params["elastic_prob"] if spatial_dims == 2 else 0.0
        self.spatial = spatial_transforms(params, spatial_dims, self.crop_size)
        self.margin = tuple(int(math.ceil(CONTEXT * c)) for c in self.crop_size)
        self.intensity = Compose(intensity_transforms(params, spatial_dims))

    def chosen(self, rng: np.random.Generator) -> list:
        """The spatial transforms this item gets, in order."""
        affine, elastic = rng.random() < self.p_affine, rng.random() < self.p_elastic
        if affine and elastic:
            return [self.spatial["affine_keep"], self.spatial["elastic"]]
        return [self.spatial["affine"]] if affine else ([self.spatial["elastic"]] if elastic else [])

    def __call__(self, image_cs: np.ndarray, mask_s: np.ndarray | None, box: Sequence[slice], pad_value: Any,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rng = np.random.default_rng(seed)
        spatial_seed, intensity_seed = (int(v) for v in rng.integers(2**32, size=2))
        spatial = self.chosen(rng)
        if spatial:  # sample from a grown box so that rotations and zooms find context, not padding
            box = grow_box(box, self.crop_size, self.margin)
            size = tuple(c + 2 * m for c, m in zip(self.crop_size, self.margin))
        else:
            size = self.crop_size
        data = {IMAGE: resize_to(take_box(image_cs, box, pad_value), size, label=False)}
        if mask_s is not None:
            data[MASK] = resize_to(take_box(mask_s[None], box, 0.0), size, label=True)
        if spatial:
            data = Compose(spatial).set_random_state(seed=spatial_seed)(data)
        out = self.intensity.set_random_state(seed=intensity_seed)(data)
        image = _plain(out[IMAGE]).float()
        if tuple(image.shape[1:]) != self.crop_size:
            raise ValueError(f"augmented crop {tuple(image.shape[1:])} is not the crop size {self.crop_size}")
        mask = _plain(out[MASK])[0].round().to(torch.int64) if mask_s is not None else None
        return image.contiguous(), (mask.contiguous() if mask is not None else None)


def make_augment(data: DataConfig, crop_size: Sequence[int], spatial_dims: int, *, foreground_prob: float = 0.0) -> Augment:
    """The training augmentation of a run's ``data`` section: crop (resized crop in 2D), flips and, when
    ``data.augment`` can fire, the MONAI transforms."""
    cfg: AugmentConfig = data.augment
    transforms = CropTransforms(cfg.resolved(), spatial_dims, crop_size) if cfg.active else None
    return Augment(tuple(crop_size), data.crop_scale, tuple(data.flip_axes), data.flip_prob, foreground_prob, transforms)
