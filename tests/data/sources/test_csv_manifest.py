"""CSV manifests (medmae.data.sources.csv_manifest): relative paths, optional columns, declarations, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmae.data.sources import load_source
from medmae.errors import SourceError


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


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
    path.write_text("file,label\na.png,x\n")
    with pytest.raises(SourceError, match=rf"{path}: manifest needs a 'path' \(or 'image'\) column "
                                          r"\(found \['file', 'label'\]\)"):
        load_source(path)


def test_an_image_column_is_read_as_path_monai_style(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("image,label\nimg/a.png,x\nimg/b.png,y\n")
    spec = load_source(path)
    assert [c.image for c in spec.cases] == [(str((tmp_path / "img/a.png").resolve()),),
                                             (str((tmp_path / "img/b.png").resolve()),)]


def test_manifest_with_an_empty_path(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.png,x\n,y\n")
    with pytest.raises(SourceError, match=rf"{path}: line 3: empty path"):
        load_source(path)
