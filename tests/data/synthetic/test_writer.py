"""Synthetic datasets on disk (medmae.data.synthetic.writer): real-reader round trips, byte-identical output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmae.data import synthetic as syn

CT_SMALL = (40, 40, 24)
MR_SMALL = (32, 32, 32)


def _read_manifest(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_write_dataset_cxr_round_trip(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path / "cxr", "cxr", n=6, seed=11, size=64)
    assert manifest == tmp_path / "cxr" / "manifest.csv"
    columns, rows = _read_manifest(manifest)
    assert columns == ["path", "label", "mask", "subject_id"]
    meta = json.loads((manifest.parent / "dataset.json").read_text())
    assert meta["kind"] == "cxr" and meta["spatial_dims"] == 2 and meta["multilabel"] is True
    assert meta["classes"] == list(syn.CXR_FINDINGS)
    assert meta["labels"] == {"0": "background", "1": "lung", "2": "heart"}
    assert meta["intensity"] == "xray_histeq"
    assert len(rows) == len(meta["case_seeds"]) == 6

    for row, case_seed in zip(rows, meta["case_seeds"]):
        assert "\\" not in row["path"] and not Path(row["path"]).is_absolute()
        assert row["path"].startswith("images/") and row["mask"].startswith("masks/")
        case = syn.chest_xray(case_seed, size=64)
        with Image.open(manifest.parent / row["path"]) as im:
            assert im.mode == "L"
            pixels = np.asarray(im)
        np.testing.assert_array_equal(pixels, np.rint(case.image_chw[0] * 255).astype(np.uint8))
        with Image.open(manifest.parent / row["mask"]) as im:
            np.testing.assert_array_equal(np.asarray(im), case.anatomy)
        assert row["label"] == "|".join(f for f, on in zip(syn.CXR_FINDINGS, case.labels) if on)


def test_write_dataset_subject_ids_pair_some_cases(tmp_path: Path) -> None:
    _, rows = _read_manifest(syn.write_dataset(tmp_path, "cxr", n=9, size=32))
    subjects = [row["subject_id"] for row in rows]
    counts = {s: subjects.count(s) for s in subjects}
    assert max(counts.values()) == 2 and min(counts.values()) == 1
    assert 0.25 <= sum(c == 2 for c in counts.values()) / len(counts) <= 0.6
    assert len({row["path"] for row in rows}) == 9


def test_write_dataset_abdomen_ct_round_trip(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path, "abdomen_ct", n=2, seed=1, shape=CT_SMALL)
    _, rows = _read_manifest(manifest)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {str(k): v for k, v in syn.ABDOMEN_LABELS.items()}
    assert meta["intensity"] == {"name": "ct_window", "lo": -175, "hi": 250}
    assert meta["classes"] == [] and meta["multilabel"] is False and meta["spatial_dims"] == 3
    assert "training" not in meta, "no MSD 'training' list: readers must use the manifest's subject ids"
    for row, case_seed in zip(rows, meta["case_seeds"]):
        assert row["label"] == "" and row["path"].startswith("imagesTr/") and row["path"].endswith(".nii.gz")
        case = syn.abdomen_ct(case_seed, shape=CT_SMALL)
        img = nib.load(tmp_path / row["path"])
        assert img.get_data_dtype() == np.int16
        data = np.asanyarray(img.dataobj)
        assert data.dtype == np.int16
        np.testing.assert_allclose(data, case.image_cxyz[0], atol=0.5)
        np.testing.assert_allclose(img.affine, case.affine)
        seg = nib.load(tmp_path / row["mask"])
        assert seg.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(seg.dataobj), case.label_xyz)
        np.testing.assert_allclose(seg.affine, case.affine)


def test_write_dataset_brain_mr_four_channels_as_4d_nifti(tmp_path: Path) -> None:
    manifest = syn.write_dataset(tmp_path, "brain_mr", n=1, seed=2, shape=MR_SMALL, channels=4)
    _, rows = _read_manifest(manifest)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["modality"] == {str(i): c for i, c in enumerate(syn.BRAIN_MR_CHANNELS)}
    assert meta["labels"] == {str(k): v for k, v in syn.BRATS_LABELS.items()}
    assert meta["intensity"] == "mri_zscore_nonzero"
    case = syn.brain_mr(meta["case_seeds"][0], shape=MR_SMALL, channels=4)
    img = nib.load(tmp_path / rows[0]["path"])
    assert img.shape == (*MR_SMALL, 4) and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.moveaxis(case.image_cxyz, 0, -1))
    np.testing.assert_allclose(img.affine, case.affine)


def test_write_dataset_is_byte_identical(tmp_path: Path) -> None:
    for kind, kwargs in (("cxr", {"size": 48}), ("abdomen_ct", {"shape": (24, 24, 16)})):
        first = syn.write_dataset(tmp_path / "a" / kind, kind, n=3, seed=5, **kwargs).parent
        second = syn.write_dataset(tmp_path / "b" / kind, kind, n=3, seed=5, **kwargs).parent
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        assert len(files) == 3 * 2 + 2
        for rel in files:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
            if rel.name.endswith(".gz"):
                header = (first / rel).read_bytes()[:10]
                # Equal bytes within one second could hide a timestamp: check gzip MTIME=0, no FNAME.
                assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08, rel
        other = syn.write_dataset(tmp_path / "c" / kind, kind, n=3, seed=6, **kwargs).parent
        image = next(rel for rel in files if rel.parts[0].startswith("images"))
        assert (other / image).read_bytes() != (first / image).read_bytes()


def test_write_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of.*'mammo'"):
        syn.write_dataset(tmp_path, "mammo", n=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        syn.write_dataset(tmp_path, "cxr", n=0)
