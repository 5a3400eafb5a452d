"""Plain image folders (medmae.data.sources.folder): split and class from folder names, distinct case ids."""

from pathlib import Path

import numpy as np
from PIL import Image

from medmae.data.sources import load_source


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


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


def test_real_chest_xray_class_folders(shared_data):
    spec = load_source(shared_data / "chestxray_pneumonia_224" / "dataset")
    assert spec.classes == ["NORMAL", "PNEUMONIA"]
    counts = {(s, k): sum(c.split == s and c.label == k for c in spec.cases)
              for s in ("train", "test") for k in spec.classes}
    assert counts == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875,
                      ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
