import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmae.data.preprocess import Preprocessing, load_image, load_mask
from medmae.data.sources import SourceError, load_source


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_with_relative_paths_multilabel_and_optional_columns(tmp_path):
    for name in ("a", "b", "c", "d_t1", "d_t2"):
        png(tmp_path / "img" / f"{name}.png")
    png(tmp_path / "msk" / "a.png")
    (tmp_path / "data.csv").write_text(
        "path,label,mask,subject_id,split,case_id\n"
        "img/a.png,nodule|effusion,msk/a.png,p1,train,\n"
        "img/b.png,,,p1, Test ,\n"
        "img/c.png,opacity,,,,c_custom\n"
        "img/d_t1.png;img/d_t2.png,nodule,,p3,Validation,\n"
    )
    spec = load_source(tmp_path / "data.csv")
    assert spec.kind == "manifest" and spec.root == tmp_path
    a, b, c, d = spec.cases
    assert [x.case_id for x in spec.cases] == ["a", "b", "c_custom", "d_t1"]
    assert a.image == (str((tmp_path / "img" / "a.png").resolve()),) and Path(a.path).is_file()
    assert a.mask == str((tmp_path / "msk" / "a.png").resolve()) and b.mask is None
    assert a.class_names() == ["nodule", "effusion"] and b.class_names() == [] and b.label == ""
    assert (a.subject_id, b.subject_id, c.subject_id) == ("p1", "p1", "c_custom")  # default: the case id
    assert (a.split, b.split, c.split, d.split) == ("train", "test", None, "val")
    assert len(d.image) == 2 and d.image[1].endswith("d_t2.png")
    assert spec.classes == ["effusion", "nodule", "opacity"] and spec.multilabel
    assert [x.case_id for x in spec.select(["train"]).cases] == ["a", "c_custom"]  # no split counts as train


def test_manifest_only_needs_a_path_column(tmp_path):
    png(tmp_path / "x.png")
    (tmp_path / "manifest.csv").write_text("path\nx.png\n")
    spec = load_source(tmp_path)  # a folder holding manifest.csv uses it
    (case,) = spec.cases
    assert case.label is None and case.mask is None and case.split is None and spec.classes == []
    assert not spec.multilabel


def test_dataset_json_beside_a_manifest_declares_classes(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nx.png,cat\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog"], "labels": {"background": 0}}))
    spec = load_source(tmp_path / "m.csv")
    assert spec.classes == ["cat", "dog"] and not spec.multilabel
    assert spec.label_names == {0: "background"}  # nnU-Net style name -> value


def test_duplicate_case_id_names_file_and_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\nimg/a.png,x\nimg/b.png,y\nother/a.png,z\n")
    with pytest.raises(SourceError, match=rf"{path}: line 4: duplicate case id 'a'"):
        load_source(path)


def test_manifest_without_path_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,label\na.png,x\n")
    with pytest.raises(SourceError, match=rf"{path}: manifest needs a 'path' column \(found \['image', 'label'\]\)"):
        load_source(path)


def test_manifest_with_an_empty_path(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.png,x\n,y\n")
    with pytest.raises(SourceError, match=rf"{path}: line 3: empty path"):
        load_source(path)


# ------------------------------------------------------------------------------------------------ MSD


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


# --------------------------------------------------------------------------------------------- folders


def test_class_per_subfolder_with_train_and_test_folders(tmp_path):
    files = ["train/cat/c1.png", "train/cat/c2.png", "train/dog/d1.png", "Validation/dog/d2.png",
             "test/cat/c3.png", "test/dog/d3.png"]
    for f in files:
        png(tmp_path / f)
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    png(tmp_path / "train" / "cat" / ".hidden.png")
    spec = load_source(tmp_path)
    assert spec.kind == "folder" and spec.classes == ["cat", "dog"]
    got = {c.case_id: (c.label, c.split) for c in spec.cases}
    assert got == {"c1": ("cat", "train"), "c2": ("cat", "train"), "d1": ("dog", "train"), "d2": ("dog", "val"),
                   "c3": ("cat", "test"), "d3": ("dog", "test")}
    assert sorted(c.case_id for c in spec.select(["test"]).cases) == ["c3", "d3"]


def test_flat_folder_has_no_classes(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    spec = load_source(tmp_path)
    assert [c.case_id for c in spec.cases] == ["a", "b"] and spec.classes == []
    assert all(c.label is None and c.split is None for c in spec.cases)


def test_same_name_in_two_class_folders_gets_distinct_ids(tmp_path):
    png(tmp_path / "cat" / "x.png")
    png(tmp_path / "dog" / "x.png")
    ids = [c.case_id for c in load_source(tmp_path).cases]
    assert len(set(ids)) == 2


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(SourceError, match=f"{tmp_path / 'nope'}: no such file or folder"):
        load_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=f"{tmp_path / 'empty'}: no image files found"):
        load_source(tmp_path / "empty")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(SourceError, match=r"x.json: expected a list of cases or a datalist"):
        load_source(tmp_path / "x.json")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SourceError, match=r"x.txt: expected a folder, a .csv / .json manifest"):
        load_source(tmp_path / "x.txt")


# ------------------------------------------------------------------------------------------- real data


def test_real_msd_hippocampus(shared_data):
    root = shared_data / "hippocampus_msd" / "Task04_Hippocampus"
    spec = load_source(root)
    assert spec.kind == "msd" and spec.spatial_dims == 3
    assert spec.label_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    splits = [c.split for c in spec.cases]
    assert splits.count("train") == 260 and splits.count("unlabelled") == 130
    assert all(c.mask for c in spec.cases if c.split == "train")


def test_real_chest_xray_class_folders(shared_data):
    spec = load_source(shared_data / "chestxray_pneumonia_224" / "dataset")
    assert spec.classes == ["NORMAL", "PNEUMONIA"]
    counts = {(s, k): sum(c.split == s and c.label == k for c in spec.cases)
              for s in ("train", "test") for k in spec.classes}
    assert counts == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875,
                      ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
