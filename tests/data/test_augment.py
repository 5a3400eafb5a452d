"""MONAI augmentation of training crops: a pure function of (seed, epoch, case), masks stay aligned integer label
maps, presets and overrides resolve as documented."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from medmae.config import AUGMENT_PRESETS, AugmentConfig, ConfigError, DataConfig, validate
from medmae.data.augment import CropTransforms, grow_box, make_augment, take_box
from medmae.data.cases import Case
from medmae.data.dataset import Augment, CaseDataset, Prepared


def blob_case(i: int, shape: tuple[int, ...]) -> Prepared:
    """An image whose values are its own label map (0, 1, 2: an off-centre ellipsoid and a bar) plus a ramp < 0.5."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = sum((g / (0.5 + 0.1 * k)) ** 2 for k, g in enumerate(grids))
    mask = np.zeros(shape, np.uint8)
    mask[r < 1] = 1
    mask[(np.abs(grids[0] - 0.1 * (i % 3)) < 0.12) & (r < 1)] = 2
    ramp = 0.4 * (grids[-1] + 1) / 2
    image = (mask.astype(np.float32) * 10 + ramp)[None].astype(np.float32)
    return Prepared(Case(f"c{i}", (f"/d/c{i}.nii.gz",), f"c{i}"), image, mask, (1.0,) * len(shape))


def dataset(shape, crop, preset="nnunet", seed=3, n=4, **keys) -> CaseDataset:
    data = DataConfig(augment={"preset": preset, **keys}, flip_axes=list(range(len(shape))))
    aug = make_augment(data, crop, len(shape))
    return CaseDataset([blob_case(i, shape) for i in range(n)], crop, augment=aug, seed=seed)


@pytest.mark.parametrize(("shape", "crop"), [((48, 40), (32, 32)), ((24, 28, 20), (16, 16, 16))], ids=["2d", "3d"])
def test_an_augmented_item_is_a_pure_function_of_seed_epoch_and_case(shape, crop):
    a, b = dataset(shape, crop), dataset(shape, crop)
    first = a[(2, 1)]
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    _ = [a[(e, i)] for e in range(3) for i in range(4)]  # other items and global RNG use in between
    for again in (a[(2, 1)], b[(2, 1)]):
        assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    differ = sum(not torch.equal(a[(0, i)]["image"], a[(1, i)]["image"]) for i in range(4))
    assert differ == 4, "a new epoch must give new augmentations of every case"
    assert not torch.equal(dataset(shape, crop, seed=4)[(2, 1)]["image"], first["image"]), "the run seed must matter"


@pytest.mark.parametrize(("shape", "crop"), [((48, 40), (32, 32)), ((24, 28, 20), (16, 16, 16))], ids=["2d", "3d"])
def test_masks_stay_integer_label_maps_aligned_with_the_image(shape, crop):
    """Strong rotations and zooms on every item, no intensity change: the bilinear image's label (its value // 10
    rounded) equals the nearest-interpolated mask away from label borders."""
    d = dataset(shape, crop, preset="none", spatial_prob=1.0, rotate_deg=30.0, rotate_deg_2d=90.0, scale=(0.7, 1.4))
    agree, changed = [], 0
    for e in range(6):
        item = d[(e, e % 4)]
        mask, image = item["mask"], item["image"][0]
        assert mask.dtype == torch.int64 and tuple(mask.shape) == crop
        assert set(mask.unique().tolist()) <= {0, 1, 2}
        agree.append(float((torch.round(image / 10) == mask).float().mean()))
        plain = CaseDataset(d.prepared, crop, augment=Augment(crop, flip_axes=d.augment.flip_axes), seed=3)[(e, e % 4)]
        changed += not torch.equal(plain["mask"], mask)
    assert min(agree) > 0.95, f"image and mask disagree on {1 - min(agree):.1%} of a crop"
    assert changed >= 5, "the spatial transform should have changed (almost) every crop"


def test_2d_elastic_deformation_keeps_items_pure_and_masks_aligned():
    d = dataset((48, 40), (32, 32), preset="none", elastic_prob=1.0, spatial_prob=0.5, rotate_deg_2d=20.0)
    first = d[(1, 2)]
    assert torch.equal(first["image"], d[(1, 2)]["image"]) and torch.equal(first["mask"], d[(1, 2)]["mask"])
    for e in range(3):
        item = d[(e, 0)]
        assert tuple(item["mask"].shape) == (32, 32) and set(item["mask"].unique().tolist()) <= {0, 1, 2}
        assert float((torch.round(item["image"][0] / 10) == item["mask"]).float().mean()) > 0.95


def test_intensity_transforms_change_the_image_only():
    d = dataset((48, 40), (32, 32), preset="none", brightness_prob=1.0, gamma_prob=1.0, noise_prob=1.0)
    plain = CaseDataset(d.prepared, (32, 32), augment=Augment((32, 32), flip_axes=(0, 1)), seed=3)
    for e in range(3):
        got, ref = d[(e, 0)], plain[(e, 0)]
        assert torch.equal(got["mask"], ref["mask"]), "intensity transforms must not move the mask"
        assert not torch.allclose(got["image"], ref["image"])


def test_preset_none_keeps_the_plain_crop_and_flip_items():
    data = DataConfig(flip_axes=[0, 1])
    aug = make_augment(data, (32, 32), 2)
    assert aug.transforms is None and not data.augment.active
    prepared = [blob_case(i, (48, 40)) for i in range(3)]
    a = CaseDataset(prepared, (32, 32), augment=aug, seed=1)
    b = CaseDataset(prepared, (32, 32), augment=Augment((32, 32), None, (0, 1), 0.5), seed=1)
    assert all(torch.equal(a[(1, i)]["image"], b[(1, i)]["image"]) for i in range(3))


def test_an_identity_affine_reproduces_the_plain_crop_exactly():
    """The grown box and the crop-sized output line up to the pixel: an affine with no rotation and no zoom gives
    the plain crop bit for bit (also with a resized crop)."""
    for crop_scale in (None, (0.5, 1.0)):
        data = DataConfig(augment={"spatial_prob": 1.0, "rotate_deg_2d": 0.0, "scale": (1.0, 1.0)}, crop_scale=crop_scale)
        prepared = [blob_case(i, (48, 40)) for i in range(3)]
        a = CaseDataset(prepared, (32, 32), augment=make_augment(data, (32, 32), 2), seed=2)
        b = CaseDataset(prepared, (32, 32), augment=Augment((32, 32), crop_scale), seed=2)
        for i in range(3):
            x, y = a[(0, i)], b[(0, i)]
            if crop_scale is None:
                assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
            else:  # the resized crop is resized from a larger region: equal up to interpolation
                assert float((x["image"] - y["image"]).abs().mean()) < 0.5


def test_presets_resolve_and_keys_override_them():
    nn = AugmentConfig(preset="nnunet", noise_prob=0.0).resolved()
    assert nn == {**AUGMENT_PRESETS["nnunet"], "noise_prob": 0.0}
    assert AugmentConfig(preset="light").active and not AugmentConfig().active
    assert AugmentConfig(preset="none", blur_prob=0.5).active
    with pytest.raises(ConfigError, match="augment.scale: \\[1.2, 0.8\\] must be zoom factors"):
        validate(DataConfig, {"augment": {"scale": [1.2, 0.8]}}, "test")
    with pytest.raises(ConfigError, match="augment.noise_prob"):
        validate(DataConfig, {"augment": {"noise_prob": 1.5}}, "test")


def test_take_box_pads_outside_the_array_with_the_channel_value():
    x = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    out = take_box(x, (slice(-1, 3), slice(3, 7)), np.array([-1.0, -2.0]))
    assert out.shape == (2, 4, 4)
    np.testing.assert_array_equal(out[:, 1:, :2], x[:, :3, 3:])
    assert (out[0, 0] == -1).all() and (out[1, :, 2:] == -2).all()
    assert grow_box((slice(10, 42),), (16,), (4,)) == (slice(2, 50),), "a resized box grows in source pixels"


def test_crop_transforms_grow_the_box_by_a_quarter_and_output_the_crop():
    t = CropTransforms(AugmentConfig(preset="light").resolved(), 2, (16, 16))
    assert t.margin == (4, 4)
    image, mask = t(np.zeros((1, 20, 20), np.float32), np.zeros((20, 20), np.uint8), (slice(2, 18), slice(2, 18)), 0.0, 7)
    assert image.shape == (1, 16, 16) and mask.shape == (16, 16)
