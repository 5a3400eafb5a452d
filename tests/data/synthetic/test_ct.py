"""Synthetic abdominal CT (medmae.data.synthetic.ct): determinism, documented ranges, anatomy and refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medmae.data import synthetic as syn

CT_SMALL = (40, 40, 24)


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Mask eroded away from the blurred organ borders (volume borders count as inside)."""
    return ndimage.binary_erosion(mask, iterations=iterations, border_value=1)


def _world_centroid(mask_xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask_xyz).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


def test_abdomen_ct_deterministic_shapes_and_affine() -> None:
    a, b, c = syn.abdomen_ct(5, CT_SMALL), syn.abdomen_ct(5, CT_SMALL), syn.abdomen_ct(6, CT_SMALL)
    np.testing.assert_array_equal(a.image_cxyz, b.image_cxyz)
    np.testing.assert_array_equal(a.label_xyz, b.label_xyz)
    assert not np.array_equal(a.image_cxyz, c.image_cxyz)
    assert a.image_cxyz.dtype == np.float32 and a.image_cxyz.shape == (1, *CT_SMALL)
    assert a.label_xyz.dtype == np.uint8 and a.label_xyz.shape == CT_SMALL
    assert set(np.unique(a.label_xyz)) == set(syn.ABDOMEN_LABELS)
    assert a.label_names == syn.ABDOMEN_LABELS and a.channel_names == ("CT",)
    assert a.affine.dtype == np.float64 and a.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(a.affine)[:3], (1.5, 1.5, 2.0))
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")
    hu = a.image_cxyz[0]
    assert -1024.0 <= hu.min() and hu.max() <= 3071.0
    assert abs(hu[:3, :3, :].mean() + 1000.0) < 15.0, "air outside the body"
    assert hu.max() > 500.0, "bone present"


@pytest.mark.parametrize("seed", [0, 1])
def test_abdomen_ct_organ_hu_match_documented_ranges(seed: int) -> None:
    case = syn.abdomen_ct(seed)
    hu, label = case.image_cxyz[0], case.label_xyz
    tissue = {"liver": "liver", "spleen": "spleen", "aorta": "aorta"}
    tissue.update(kidney_right="kidney", kidney_left="kidney")
    for lab_id, name in syn.ABDOMEN_LABELS.items():
        if lab_id == 0:
            continue
        core = _core(label == lab_id)
        assert core.sum() > 20, name
        lo, hi = syn.ABDOMEN_HU[tissue[name]]
        assert lo - 8.0 <= hu[core].mean() <= hi + 8.0, (name, float(hu[core].mean()))
    fat_lo, fat_hi = syn.ABDOMEN_HU["subcutaneous_fat"]
    assert hu[(label == 0) & (hu > -300) & (hu < -50)].size > 0
    assert fat_lo - 40 < np.median(hu[(hu > -300) & (hu < -50)]) < fat_hi + 40


@pytest.mark.parametrize("seed", [0, 3])
def test_abdomen_ct_liver_is_on_the_patient_right(seed: int) -> None:
    case = syn.abdomen_ct(seed, CT_SMALL)
    liver = _world_centroid(case.label_xyz == 1, case.affine)
    spleen = _world_centroid(case.label_xyz == 2, case.affine)
    kidney_r = _world_centroid(case.label_xyz == 3, case.affine)
    kidney_l = _world_centroid(case.label_xyz == 4, case.affine)
    body = _world_centroid(case.image_cxyz[0] > -500, case.affine)
    # RAS+: world x grows towards the patient's right.
    assert liver[0] > body[0] > spleen[0]
    assert kidney_r[0] > body[0] > kidney_l[0]
    spine = _world_centroid(case.image_cxyz[0] > 500, case.affine)
    assert spine[1] < body[1], "spine is posterior (smaller y in RAS)"


def test_abdomen_ct_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match=r"shape must be 3 ints >= 16, got \(8, 32, 32\)"):
        syn.abdomen_ct(0, (8, 32, 32))
    with pytest.raises(ValueError, match=r"spacing.*\(1.0, 0.0, 1.0\)"):
        syn.abdomen_ct(0, CT_SMALL, (1.0, 0.0, 1.0))
