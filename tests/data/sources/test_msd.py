"""Medical Segmentation Decathlon folders (medmae.data.sources.msd)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.data.preprocess import Preprocessing, load_image, load_mask
from medmae.data.sources import load_source
from medmae.errors import SourceError


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


def test_msd_folder_with_multichannel_images(tmp_path):
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    for i in range(2):
        nifti(tmp_path / "imagesTr" / f"BRATS_{i:03d}.nii.gz", rng.random((*shape, 4)).astype(np.float32) + 1)
        nifti(tmp_path / "labelsTr" / f"BRATS_{i:03d}.nii.gz", rng.integers(0, 4, shape).astype(np.uint8))
    nifti(tmp_path / "imagesTs" / "BRATS_100.nii.gz", rng.random((*shape, 4)).astype(np.float32))
    meta = {
        "name": "BRATS", "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": [{"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"}
                     for i in range(2)],
        "test": ["./imagesTs/BRATS_100.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    spec = load_source(tmp_path)
    assert spec.kind == "msd" and spec.spatial_dims == 3 and spec.modality == "FLAIR"
    assert spec.label_names == {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
    assert [(c.case_id, c.split, c.mask is not None) for c in spec.cases] == [
        ("BRATS_000", "train", True), ("BRATS_001", "train", True), ("BRATS_100", "unlabelled", False)]
    assert all(Path(c.path).is_file() for c in spec.cases) and Path(spec.cases[0].mask).is_file()
    assert load_source(tmp_path / "dataset.json").cases == spec.cases
    prep = Preprocessing(spatial_dims=3, in_channels=4, intensity={"name": "mri_zscore_nonzero"})
    loaded = load_image(spec.cases[0], prep)
    assert loaded.array.shape == (4, *shape)
    mask = load_mask(spec.cases[0], prep, loaded.meta, loaded.array.shape[1:])
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 1, 2, 3}


def test_msd_without_entries(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(SourceError, match=r"dataset\.json: no 'training' or 'test' entries"):
        load_source(tmp_path)


def test_msd_entry_without_a_path(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(SourceError, match=r"dataset\.json: entry without a path"):
        load_source(tmp_path)


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(SourceError, match=r"dataset\.json: cannot read JSON"):
        load_source(tmp_path)


def test_real_msd_hippocampus(shared_data):
    root = shared_data / "hippocampus_msd" / "Task04_Hippocampus"
    spec = load_source(root)
    assert spec.kind == "msd" and spec.spatial_dims == 3
    assert spec.label_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    splits = [c.split for c in spec.cases]
    assert splits.count("train") == 260 and splits.count("unlabelled") == 130
    assert all(c.mask for c in spec.cases if c.split == "train")
