"""Synthetic head MR (medmae.data.synthetic.mr): determinism, documented ranges, anatomy and refusals."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medmae.data import synthetic as syn

MR_SMALL = (32, 32, 32)


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Mask eroded away from the blurred organ borders (volume borders count as inside)."""
    return ndimage.binary_erosion(mask, iterations=iterations, border_value=1)


def test_brain_mr_deterministic_shapes_and_background() -> None:
    a, b, c = syn.brain_mr(2, MR_SMALL), syn.brain_mr(2, MR_SMALL), syn.brain_mr(3, MR_SMALL)
    np.testing.assert_array_equal(a.image_cxyz, b.image_cxyz)
    np.testing.assert_array_equal(a.label_xyz, b.label_xyz)
    assert not np.array_equal(a.image_cxyz, c.image_cxyz)
    assert a.image_cxyz.dtype == np.float32 and a.image_cxyz.shape == (1, *MR_SMALL)
    assert a.label_xyz.dtype == np.uint8 and a.label_names == syn.BRATS_LABELS
    assert a.channel_names == ("T1w",)
    image = a.image_cxyz[0]
    assert image.min() == 0.0
    assert image[0, 0, 0] == 0.0 and image[-1, -1, -1] == 0.0, "air is exactly zero"
    head = image > 0
    assert 0.2 < head.mean() < 0.8
    assert np.all(a.label_xyz[~head] == 0)
    assert nib.aff2axcodes(a.affine) == ("R", "A", "S")


def test_brain_mr_four_channels_share_anatomy_and_t1w_channel() -> None:
    one = syn.brain_mr(4, channels=1)
    four = syn.brain_mr(4, channels=4)
    assert four.channel_names == syn.BRAIN_MR_CHANNELS and four.image_cxyz.shape == (4, 64, 64, 64)
    np.testing.assert_array_equal(one.label_xyz, four.label_xyz)
    np.testing.assert_array_equal(one.image_cxyz[0], four.image_cxyz[four.channel_names.index("T1w")])
    head = four.image_cxyz > 0
    assert np.all(head == head[:1]), "every channel has the same head outline"
    assert set(np.unique(four.label_xyz)) == set(syn.BRATS_LABELS)


def test_brain_mr_tumour_contrast_differs_across_channels() -> None:
    seed = 9
    with_tumour = syn.brain_mr(seed, channels=4, tumour=True)
    healthy = syn.brain_mr(seed, channels=4, tumour=False)
    ch = {name: i for i, name in enumerate(with_tumour.channel_names)}
    edema, enhancing, necrotic = (with_tumour.label_xyz == k for k in (1, 3, 2))
    img, ref = with_tumour.image_cxyz, healthy.image_cxyz

    def change(name: str, region: np.ndarray) -> float:
        return float(img[ch[name]][region].mean() / ref[ch[name]][region].mean())

    # Same anatomy and noise without the tumour, so these ratios isolate the tumour's signal.
    assert change("FLAIR", edema) > 1.3 and change("T2w", edema) > 1.3
    assert change("T1w", edema) < 0.9
    t1gd_rim = img[ch["T1gd"]][enhancing].mean() / img[ch["T1gd"]][necrotic].mean()
    t1w_rim = img[ch["T1w"]][enhancing].mean() / img[ch["T1w"]][necrotic].mean()
    assert t1gd_rim > 1.8 and t1gd_rim > 1.4 * t1w_rim
    cube = np.ones((3, 3, 3), bool)
    far = ~ndimage.binary_dilation(with_tumour.label_xyz > 0, structure=cube, iterations=3)
    np.testing.assert_array_equal(img[:, far], ref[:, far])


def test_brain_mr_tissue_labels_and_contrasts_without_tumour() -> None:
    case = syn.brain_mr(1, channels=4, tumour=False)
    assert case.label_names == syn.BRAIN_TISSUE_LABELS
    assert set(np.unique(case.label_xyz)) == {0, 1, 2, 3}
    ch = {name: i for i, name in enumerate(case.channel_names)}
    mean = {
        (name, k): float(case.image_cxyz[ch[name]][_core(case.label_xyz == k, 1)].mean())
        for name in ("T1w", "T2w") for k in (1, 2, 3)
    }
    assert mean["T1w", 3] > mean["T1w", 2] > mean["T1w", 1], "T1: white > grey > CSF"
    assert mean["T2w", 1] > mean["T2w", 2] > mean["T2w", 3], "T2: CSF > grey > white"


def test_brain_mr_rejects_unsupported_channel_count() -> None:
    with pytest.raises(ValueError, match="channels must be 1 .* or 4.*got 3"):
        syn.brain_mr(0, MR_SMALL, channels=3)
