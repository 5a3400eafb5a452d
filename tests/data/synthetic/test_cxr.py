"""Synthetic chest radiographs (medmae.data.synthetic.cxr): determinism, documented ranges, anatomy and refusals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medmae.data import synthetic as syn


def test_cxr_same_seed_is_identical_and_other_seed_differs() -> None:
    a, b, c = syn.chest_xray(3, 128), syn.chest_xray(3, 128), syn.chest_xray(4, 128)
    for field in ("image_chw", "labels", "anatomy", "findings_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.image_chw, c.image_chw)
    assert not np.array_equal(a.anatomy, c.anatomy)


def test_cxr_dtypes_shapes_and_ranges() -> None:
    case = syn.chest_xray(7, 96)
    assert case.image_chw.dtype == np.float32 and case.image_chw.shape == (1, 96, 96)
    assert 0.0 <= case.image_chw.min() and case.image_chw.max() <= 1.0
    assert case.image_chw.std() > 0.05
    assert case.labels.dtype == np.float32 and case.labels.shape == (len(syn.CXR_FINDINGS),)
    assert set(np.unique(case.labels)) <= {0.0, 1.0}
    assert case.anatomy.dtype == np.uint8 and case.anatomy.shape == (96, 96)
    assert set(np.unique(case.anatomy)) == {0, 1, 2}
    assert case.findings_mask.dtype == np.uint8 and case.findings_mask.shape == (96, 96)
    present_codes = {j + 1 for j, on in enumerate(case.labels) if on}
    assert set(np.unique(case.findings_mask)) - {0} <= present_codes
    assert case.spacing[0] == case.spacing[1] > 0
    assert syn.chest_xray(7, 192).spacing[0] == pytest.approx(case.spacing[0] / 2)
    assert case.seed == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("code, finding", list(enumerate(syn.CXR_FINDINGS, start=1)))
def test_cxr_forced_finding_brightens_only_its_region(seed: int, code: int, finding: str) -> None:
    base = syn.chest_xray(seed, 128, findings=[])
    case = syn.chest_xray(seed, 128, findings=[finding])
    expected = np.zeros(len(syn.CXR_FINDINGS), np.float32)
    expected[code - 1] = 1.0
    np.testing.assert_array_equal(case.labels, expected)
    np.testing.assert_array_equal(base.labels, np.zeros_like(expected))
    np.testing.assert_array_equal(case.anatomy, base.anatomy)
    assert not base.findings_mask.any()

    region = case.findings_mask == code
    assert region.any() and set(np.unique(case.findings_mask)) == {0, code}
    assert np.all(case.anatomy[region] == 1), "findings lie inside the lungs"
    diff = (case.image_chw - base.image_chw)[0]
    lung_sd = base.image_chw[0][base.anatomy == 1].std()
    assert diff[region].mean() > max(0.05, 1.0 * lung_sd)
    far = ~ndimage.binary_dilation(region, iterations=6)
    assert np.abs(diff[far]).max() < 0.3 * diff[region].mean()


def test_cxr_drawn_findings_equal_forcing_the_same_findings() -> None:
    for seed in range(12):
        drawn = syn.chest_xray(seed, 64)
        names = [f for f, on in zip(syn.CXR_FINDINGS, drawn.labels) if on]
        forced = syn.chest_xray(seed, 64, findings=names)
        np.testing.assert_array_equal(drawn.image_chw, forced.image_chw)
        np.testing.assert_array_equal(drawn.findings_mask, forced.findings_mask)


def test_cxr_prevalence_is_about_a_third_per_finding() -> None:
    labels = np.stack([syn.chest_xray(seed, 32).labels for seed in range(200)])
    prevalence = labels.mean(axis=0)
    assert np.all((prevalence > 0.22) & (prevalence < 0.48)), prevalence
    assert (labels.sum(axis=1) == 0).any() and (labels.sum(axis=1) >= 2).any()


def test_cxr_anatomy_fractions_and_layout() -> None:
    for seed in range(5):
        case = syn.chest_xray(seed, 128, findings=[])
        lung, heart = case.anatomy == 1, case.anatomy == 2
        assert 0.15 <= lung.mean() <= 0.45
        assert 0.03 <= heart.mean() <= 0.12
        half = case.anatomy.shape[1] // 2
        assert lung[:, :half].sum() > 0.3 * lung.sum() and lung[:, half:].sum() > 0.3 * lung.sum()
        # Radiological view: the heart bulges to the patient's left, i.e. the image's right.
        assert np.argwhere(heart)[:, 1].mean() > half
        image = case.image_chw[0]
        assert image[lung].mean() + 0.1 < image[heart].mean()


def test_cxr_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown findings.*pneumothorax"):
        syn.chest_xray(0, 64, findings=["nodule", "pneumothorax"])
    with pytest.raises(ValueError, match="sequence of names"):
        syn.chest_xray(0, 64, findings="nodule")
    with pytest.raises(ValueError, match="size must be an int >= 32.*16"):
        syn.chest_xray(0, 16)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        syn.chest_xray(-1)
