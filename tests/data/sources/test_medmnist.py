"""MedMNIST .npz files (medmae.data.sources.medmnist) and the virtual paths the readers resolve for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmae.data.readers import read_image
from medmae.data.sources import load_source
from medmae.errors import ReadError, SourceError


def medmnist_2d(path: Path, *, compressed: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 8, 9), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1).astype(np.uint8)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_medmnist_2d_multiclass_official_splits_and_virtual_paths(tmp_path, compressed):
    arrays = medmnist_2d(tmp_path / "pathmnist.npz", compressed=compressed)
    (tmp_path / "pathmnist.json").write_text(json.dumps({"task": "multi-class", "label": {"0": "adipose", "1": "debris", "2": "mucus"}}))
    spec = load_source(tmp_path / "pathmnist.npz")
    assert spec.kind == "medmnist" and spec.spatial_dims == 2 and not spec.multilabel
    assert spec.classes == ["adipose", "debris", "mucus"]
    assert [sum(c.split == s for c in spec.cases) for s in ("train", "val", "test")] == [5, 2, 3]
    case = next(c for c in spec.cases if c.case_id == "test_2")
    assert case.label == "mucus" and case.subject_id == "test_2"
    assert case.image[0].endswith("pathmnist.npz::test_images::2")
    x, meta = read_image(case.image[0])
    assert x.dtype == np.float32 and x.shape == (1, 8, 9)
    np.testing.assert_array_equal(x[0], arrays["test_images"][2].astype(np.float32))
    assert meta.spatial_dims == 2 and meta.spacing == (1.0, 1.0) and meta.source_dtype == "uint8"


def test_medmnist_rgb_multilabel_without_sidecar(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 6, 7, 3), dtype=np.uint8)
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    np.savez(tmp_path / "chestmnist.npz", train_images=images, train_labels=labels)
    spec = load_source(tmp_path / "chestmnist.npz")
    assert spec.multilabel and spec.classes == ["0", "1", "2"]
    assert [c.label for c in spec.cases] == ["0|2", "", "1", "0|1|2"]
    x, meta = read_image(spec.cases[3].image[0])
    assert x.shape == (3, 6, 7) and meta.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(x, np.moveaxis(images[3], -1, 0).astype(np.float32))


def test_medmnist_3d_volume_is_1dhw_with_identity_geometry(tmp_path):
    vols = np.random.default_rng(2).integers(0, 256, size=(3, 5, 6, 7), dtype=np.uint8)
    np.savez(tmp_path / "organmnist3d.npz", train_images=vols, train_labels=np.array([[0], [1], [1]]))
    spec = load_source(tmp_path / "organmnist3d.npz")
    assert spec.spatial_dims == 3 and [c.label for c in spec.cases] == ["0", "1", "1"]
    x, meta = read_image(spec.cases[1].image[0])
    np.testing.assert_array_equal(x, vols[1][None].astype(np.float32))
    assert meta.spatial_dims == 3 and meta.spacing == (1.0, 1.0, 1.0) and meta.orientation == "RAS"


def test_medmnist_bad_files(tmp_path):
    np.savez(tmp_path / "a.npz", train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.zeros((2, 1)))
    with pytest.raises(SourceError, match=r"a\.npz: train_labels has shape \(2, 1\), expected \(3, K\)"):
        load_source(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(SourceError, match=r"b\.npz: no <split>_images array .*found \['images'\]"):
        load_source(tmp_path / "b.npz")
    with pytest.raises(ReadError, match=r"index 9 out of range, b\.npz:images holds 3 images"):
        read_image(f"{tmp_path / 'b.npz'}::images::9")
