"""write_like (medmae.data.writers): results written back in the geometry of the image they came from."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmae.data.readers import read_image
from medmae.data.writers import write_like

# Voxel axes -> world: LAS flips x; "PLS"-like permutes the first two axes (as in test_readers.py).
AFFINES = {
    "LAS": np.array([[-1.5, 0, 0, 10.0], [0, 2.0, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]]),
    "PLS": np.array([[0, -2.0, 0, 4.0], [-1.5, 0, 0, 9.0], [0, 0, 2.5, -1.0], [0, 0, 0, 1]]),
}


def _phantom(shape=(5, 6, 7), seed=0) -> np.ndarray:
    """Distinct values per voxel so any flip/permutation error shows."""
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape).astype(np.float32)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_write_like_2d_png_round_trip_and_refusals(tmp_path):
    grey16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    Image.fromarray(grey16).save(tmp_path / "in.png")
    x, meta = read_image(tmp_path / "in.png")
    out = write_like(x[0].astype(np.uint16), meta, tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(out)), grey16)
    with pytest.raises(ValueError, match="cannot store 1 channel\\(s\\) of float32"):
        write_like(x, meta, tmp_path / "float.png")
    with pytest.raises(ValueError, match="cannot write 2-D data"):
        write_like(x[0], meta, tmp_path / "out.jpg")
    with pytest.raises(ValueError, match="does not match"):
        write_like(x[0, :2], meta, tmp_path / "small.png")


def test_write_like_rejects_wrong_3d_shape(tmp_path):
    path = _save_nifti(tmp_path / "a.nii.gz", _phantom(), AFFINES["PLS"])
    x, meta = read_image(path)
    with pytest.raises(ValueError, match="does not match") as info:
        write_like(x[0, :-1], meta, tmp_path / "out.nii.gz")
    assert str(info.value).startswith(str(tmp_path / "out.nii.gz"))


def test_write_like_multichannel_nifti(tmp_path):
    data = np.stack([_phantom(seed=s) for s in range(2)], axis=-1)
    path = _save_nifti(tmp_path / "two.nii.gz", data, AFFINES["LAS"])
    x, meta = read_image(path)
    out = write_like(x, meta, tmp_path / "probs.nii.gz")
    written = nib.load(out)
    assert written.shape == data.shape
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), data)
