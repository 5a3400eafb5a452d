"""nnU-Net v2 raw datasets (medmae.data.sources.nnunet): channel files, labels, regions, errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.data.readers import read_image
from medmae.data.sources import load_source
from medmae.data.sources.nnunet import nnunet_regions
from medmae.errors import SourceError

SHAPE = (4, 5, 6)


def nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def nnunet_folder(root: Path, n_train: int = 3, labels: dict | None = None) -> Path:
    """Two channels (T1 = case index, T2 = 10 x case index) per case, labels 0/1/2, one imagesTs case."""
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": labels or {"background": 0, "anterior": 1, "posterior": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i in range(n_train):
        nifti(root / "imagesTr" / f"hip_{i:03d}_0000.nii.gz", np.full(SHAPE, i, np.float32))
        nifti(root / "imagesTr" / f"hip_{i:03d}_0001.nii.gz", np.full(SHAPE, 10 * i, np.float32))
        nifti(root / "labelsTr" / f"hip_{i:03d}.nii.gz", np.full(SHAPE, i % 3, np.uint8))
    nifti(root / "imagesTs" / "hip_900_0000.nii.gz", np.zeros(SHAPE, np.float32))
    nifti(root / "imagesTs" / "hip_900_0001.nii.gz", np.zeros(SHAPE, np.float32))
    return root


def test_nnunet_cases_have_channel_files_in_order_and_labels(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset004_Hip")
    spec = load_source(root)
    assert spec.kind == "nnunet" and spec.modality == "T1+T2" and spec.spatial_dims == 3
    assert spec.label_names == {0: "background", 1: "anterior", 2: "posterior"}
    by_id = {c.case_id: c for c in spec.cases}
    assert sorted(by_id) == ["hip_000", "hip_001", "hip_002", "hip_900"]
    case = by_id["hip_002"]
    assert [Path(p).name for p in case.image] == ["hip_002_0000.nii.gz", "hip_002_0001.nii.gz"]
    assert Path(case.mask).name == "hip_002.nii.gz" and case.split == "train" and case.subject_id == "hip_002"
    x, _ = read_image(case.image)
    assert x.shape == (2, *SHAPE) and x[0].max() == 2 and x[1].max() == 20
    assert by_id["hip_900"].split == "unlabelled" and by_id["hip_900"].mask is None
    assert [c.case_id for c in load_source(root / "dataset.json").cases] == sorted(by_id)


def test_nnunet_missing_channel_file_is_named(tmp_path):
    root = nnunet_folder(tmp_path / "Dataset004_Hip")
    (root / "imagesTr" / "hip_001_0001.nii.gz").unlink()
    with pytest.raises(SourceError, match=r"hip_001_0001\.nii\.gz: missing channel 1 \(T2\) of case 'hip_001'"):
        load_source(root)


def test_nnunet_missing_label_and_num_training_mismatch(tmp_path):
    root = nnunet_folder(tmp_path / "a")
    (root / "labelsTr" / "hip_002.nii.gz").unlink()
    with pytest.raises(SourceError, match=r"labelsTr/hip_002\.nii\.gz: label file of case 'hip_002' not found"):
        load_source(root)
    root = nnunet_folder(tmp_path / "b")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    with pytest.raises(SourceError, match=r"numTraining is 5, but .*imagesTr holds 3 cases"):
        load_source(root)


def test_nnunet_channel_beyond_declared_and_label_without_images(tmp_path):
    root = nnunet_folder(tmp_path / "a")
    nifti(root / "imagesTr" / "hip_000_0002.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(SourceError, match=r"hip_000_0002\.nii\.gz: channel 0002, but dataset.json declares 2"):
        load_source(root)
    root = nnunet_folder(tmp_path / "b")
    nifti(root / "labelsTr" / "hip_777.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(SourceError, match=r"hip_777\.nii\.gz: label file without images"):
        load_source(root)


def test_nnunet_region_labels(tmp_path):
    labels = {"background": 0, "whole": [1, 2], "core": 2}
    root = nnunet_folder(tmp_path / "Dataset005_Regions", labels=labels)
    spec = load_source(root)
    assert spec.label_names == {0: "background", 1: "label_1", 2: "core"}
    assert nnunet_regions(root) == {"whole": [1, 2], "core": [2]}
    (root / "dataset.json").write_text(json.dumps({**json.loads((root / "dataset.json").read_text()),
                                                   "labels": {"background": 0, "bad": "x"}}))
    with pytest.raises(SourceError, match=r"label 'bad' must be an integer or a list of integers, got 'x'"):
        load_source(root)
