"""``medmae data check``: findings per case and file, summaries, pools, and the Hippocampus acceptance check on
real data (``data prepare`` is tested in tests/tasks/test_prepare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import invoke
from medmae.data.check import check_source
from medmae.data.synthetic import write_dataset

SHAPE = (4, 5, 6)


def nifti(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def defect_dataset(root: Path) -> Path:
    """A manifest with one clean case and one case per defect; labels 0/1 declared in dataset.json."""
    rng = np.random.default_rng(0)
    rows = ["path,mask"]
    defects = {
        "clean": ({}, {}),
        "undeclared": ({}, {"value": 3}),
        "nan": ({"nan": True}, {}),
        "spacing": ({}, {"zooms": (2.0, 2.0, 2.0)}),
        "shape": ({}, {"shape": (4, 5, 7)}),
    }
    for name, (img, lab) in defects.items():
        x = rng.normal(size=SHAPE).astype(np.float32)
        if img.get("nan"):
            x[1, 2, 3] = np.nan
        y = np.zeros(lab.get("shape", SHAPE), np.uint8)
        y[1:3, 1:3, 1:3] = lab.get("value", 1)
        nifti(root / "img" / f"{name}.nii.gz", x)
        nifti(root / "seg" / f"{name}.nii.gz", y, lab.get("zooms", (1.0, 1.0, 1.0)))
        rows.append(f"img/{name}.nii.gz,seg/{name}.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))
    return root / "manifest.csv"


def test_each_defect_is_an_error_of_its_case_and_file(tmp_path):
    report = check_source(defect_dataset(tmp_path), workers=2)
    got = {(f.case_id, f.code, Path(f.file).relative_to(tmp_path).as_posix()) for f in report.errors}
    assert got == {
        ("undeclared", "undeclared_label", "seg/undeclared.nii.gz"),
        ("nan", "nonfinite", "img/nan.nii.gz"),
        ("spacing", "spacing_mismatch", "seg/spacing.nii.gz"),
        ("shape", "shape_mismatch", "seg/shape.nii.gz"),
    }
    messages = {f.case_id: f.message for f in report.errors}
    assert "label values [3] not declared (declared: [0, 1])" in messages["undeclared"]
    assert "1 NaN/Inf voxels" in messages["nan"]
    assert "(2, 2, 2) differs from image spacing (1, 1, 1)" in messages["spacing"]
    assert "(4, 5, 7) differs from image shape (4, 5, 6)" in messages["shape"]
    assert report.summary["labels"]["found"] == [0, 1, 3] and report.summary["labels"]["undeclared"] == [3]
    assert report.summary["cases"] == {"total": 5, "labelled": 5, "unlabelled": 0, "read": 5, "unreadable": 0}
    assert not report.ok and json.loads(report.to_json())["errors"][0]["code"]


def test_clean_synthetic_dataset_passes_and_cli_exits_0(tmp_path):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 4, size=32)
    report = check_source(manifest)
    assert report.ok, report.errors
    s = report.summary
    assert s["cases"]["labelled"] == 4 and s["spatial_dims"] == {"2": 4} and s["shape"]["2"]["max"] == [32, 32]
    assert set(s["labels"]["found"]) <= set(map(int, s["labels"]["declared"]))
    assert sum(s["classes"]["counts"].values()) + s["classes"]["no_class"] >= 4
    result = invoke(["data", "check", manifest, "--json", tmp_path / "report.json"])
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.output
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ok"] and len(saved["cases"]) == 4


def test_truncated_nifti_in_a_folder_is_named_and_exits_1(tmp_path, monkeypatch):
    for i in range(2):
        nifti(tmp_path / "scans" / f"ok_{i}.nii.gz", np.random.default_rng(i).normal(size=SHAPE).astype(np.float32))
    good = nifti(tmp_path / "broken.nii.gz", np.random.default_rng(9).normal(size=(20, 20, 20)).astype(np.float32))
    bad = tmp_path / "scans" / "cut_scan.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    report = check_source(tmp_path / "scans")
    assert [(f.case_id, f.code, f.file) for f in report.errors] == [("cut_scan", "unreadable", str(bad.resolve()))]
    monkeypatch.setenv("COLUMNS", "300")  # rich folds long paths in narrow consoles
    result = invoke(["data", "check", tmp_path / "scans"])
    assert result.exit_code == 1
    assert str(bad.resolve()) in result.output and "truncated or corrupt NIfTI" in result.output
    assert "1 error(s)" in result.output


def test_pool_composition_per_source_and_modality(tmp_path):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 3, size=32)
    np.savez(tmp_path / "derma.npz", train_images=np.random.default_rng(0).integers(0, 255, (2, 28, 28, 3), np.uint8),
             train_labels=np.array([[0], [1]]), test_images=np.random.default_rng(1).integers(0, 255, (1, 28, 28, 3), np.uint8),
             test_labels=np.array([[1]]))
    (tmp_path / "derma.json").write_text(json.dumps({"label": {"0": "nevus", "1": "melanoma"}, "modality": "dermatoscopy"}))
    report = check_source([manifest, tmp_path / "derma.npz"])
    assert report.ok, report.errors
    pool = report.summary["pool"]
    assert pool["per_source"] == {str(manifest): 3, str(tmp_path / "derma.npz"): 3}
    assert pool["per_modality"] == {"XR": 3, "dermatoscopy": 3}
    assert report.summary["channels"] == {"1": 3, "3": 3}
    assert report.summary["classes"]["counts"]["melanoma"] == 2


def test_quick_check_reads_a_sample_but_finds_missing_files(tmp_path):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 6, size=32)
    (tmp_path / "cxr" / "images" / "case_0003.png").unlink()
    report = check_source(manifest, full=False, sample=2)
    assert report.summary["mode"] == "quick" and report.summary["cases"]["read"] == 2
    assert [(f.case_id, f.code) for f in report.errors] == [("case_0003", "missing_file")]


def test_unloadable_source_is_an_error_not_an_exception(tmp_path):
    report = check_source([tmp_path / "nope"])
    assert [f.code for f in report.errors] == ["source"] and "no such file or folder" in report.errors[0].message


@pytest.mark.realdata
def test_hippocampus_acceptance(shared_data, tmp_path):
    root = shared_data / "hippocampus_msd" / "Task04_Hippocampus"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    result = invoke(["data", "check", root, "--json", tmp_path / "hippo.json"])
    assert result.exit_code == 0, result.output[-3000:]
    s = json.loads((tmp_path / "hippo.json").read_text())["summary"]
    assert (s["cases"]["labelled"], s["cases"]["unlabelled"], s["cases"]["unreadable"]) == (260, 130, 0)
    assert s["labels"]["found"] == [0, 1, 2] and s["labels"]["masks_read"] == 260
    assert s["seconds"] < 60
