"""JSON manifests and MONAI datalists (medmae.data.sources.json_manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.data.sources import load_source
from medmae.errors import SourceError

SHAPE = (4, 5, 6)


def nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_json_manifest_list_style(tmp_path):
    nifti(tmp_path / "img" / "a.nii.gz", np.zeros(SHAPE, np.float32))
    nifti(tmp_path / "seg" / "a.nii.gz", np.zeros(SHAPE, np.uint8))
    entries = [
        {"image": "img/a.nii.gz", "label": "seg/a.nii.gz", "subject_id": "s1", "split": "Train"},
        {"image": "img/b.png", "label": "pneumonia", "split": "validation"},
        {"image": ["img/c_t1.nii.gz", "img/c_t2.nii.gz"], "label": 2, "mask": "seg/c.nii.gz", "case_id": "c"},
        {"image": "img/d.png", "label": [1, 0, 1]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(entries))
    spec = load_source(tmp_path / "cases.json")
    a, b, c, d = spec.cases
    assert spec.kind == "json"
    assert a.mask == str((tmp_path / "seg" / "a.nii.gz").resolve()) and a.label is None
    assert (a.subject_id, a.split) == ("s1", "train")
    assert (b.label, b.split, b.mask) == ("pneumonia", "val", None)
    assert c.case_id == "c" and len(c.image) == 2 and c.label == "2" and c.mask.endswith("seg/c.nii.gz")
    assert d.label == "0|2" and spec.multilabel
    assert spec.classes == ["0", "2", "pneumonia"]


def test_json_manifest_monai_datalist(tmp_path):
    datalist = {
        "labels": {"0": "background", "1": "liver"},
        "training": [{"image": "imagesTr/x1.nii.gz", "label": "labelsTr/x1.nii.gz"}],
        "validation": [{"image": "imagesTr/x2.nii.gz", "label": "labelsTr/x2.nii.gz"}],
        "test": ["imagesTs/x3.nii.gz", {"image": "imagesTs/x4.nii.gz"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    spec = load_source(tmp_path / "datalist.json")
    assert [(c.case_id, c.split, c.mask is not None) for c in spec.cases] == [
        ("x1", "train", True), ("x2", "val", True), ("x3", "test", False), ("x4", "test", False)]
    assert spec.label_names == {0: "background", 1: "liver"}
    assert spec.cases[0].mask == str((tmp_path / "labelsTr" / "x1.nii.gz").resolve())


def test_json_manifest_errors_name_the_entry(tmp_path):
    (tmp_path / "dup.json").write_text(json.dumps([{"image": "a/x.png"}, {"image": "b/x.png"}]))
    with pytest.raises(SourceError, match=r"dup\.json: entries\[1\]: duplicate case id 'x'"):
        load_source(tmp_path / "dup.json")
    (tmp_path / "noimg.json").write_text(json.dumps({"training": [{"label": "y.nii.gz"}]}))
    with pytest.raises(SourceError, match=r"noimg\.json: training\[0\]: 'image' must be a path"):
        load_source(tmp_path / "noimg.json")
    (tmp_path / "obj.json").write_text(json.dumps({"cases": []}))
    with pytest.raises(SourceError, match=r"obj\.json: expected a list of cases or a datalist"):
        load_source(tmp_path / "obj.json")
