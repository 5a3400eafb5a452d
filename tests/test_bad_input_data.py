"""Bad inputs on the data side: each writes a small bad dataset, runs the CLI, and expects one readable line that
names the file, case or config key, the documented exit code, and no traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from data_factory import dicom_series, nifti, nifti_declaring, noise_png, png
from helpers import TINY_MODEL, flat, invoke, pretrain_args, set_args

TINY_16 = (*TINY_MODEL, "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=2", "data.figure_cases=1")
FT_16 = (*TINY_MODEL, "model.size=null", "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=2")


def pngs(root: Path, n: int = 3) -> Path:
    for i in range(n):
        noise_png(root / f"ok{i}.png", seed=i)
    return root


def pretrain(root: Path, tmp: Path, *overrides: str) -> list[str]:
    return pretrain_args(tmp / "run", "demo-2d", (*TINY_16, *overrides), "--data", str(root), "--max-steps", "1")


def seg_data(root: Path, mask_value: int, labels: dict | None) -> Path:
    """Four noise images with half-`mask_value` masks; ``labels`` (if any) in a dataset.json."""
    lines = ["path,mask,split"]
    for i in range(4):
        noise_png(root / f"img{i}.png", seed=i)
        mask = np.zeros((16, 16), np.uint8)
        mask[:, 8:] = mask_value
        png(root / f"msk{i}.png", mask)
        lines.append(f"img{i}.png,msk{i}.png,{'test' if i == 3 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    return root


def finetune(root: Path, tmp: Path, *overrides: str) -> list[str]:
    return ["finetune", "--task", "seg", "--data", str(root), "--run-dir", str(tmp / "run"), "--max-steps", "1",
            *set_args((*FT_16, *overrides))]


def constant_png(tmp: Path) -> list[str]:
    png(pngs(tmp / "d") / "blank.png", np.full((16, 16), 9, np.uint8))
    return pretrain(tmp / "d", tmp)


def one_pixel_png(tmp: Path) -> list[str]:
    png(pngs(tmp / "d") / "dot.png", np.full((1, 1), 200, np.uint8))
    return ["data", "check", str(tmp / "d")]


def nan_volume(tmp: Path) -> list[str]:
    x = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)
    x[2, 3, 4] = np.nan
    nifti(tmp / "d" / "nan_vol.nii.gz", x)
    nifti(tmp / "d" / "fine.nii.gz", np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32))
    return pretrain(tmp / "d", tmp, "data.slice_axis=2")


def huge_header(tmp: Path) -> list[str]:
    nifti_declaring(tmp / "d" / "huge.nii.gz", (32767, 32767, 32767))
    return ["data", "check", str(tmp / "d")]


def short_nifti(tmp: Path) -> list[str]:
    nifti_declaring(tmp / "d" / "short.nii", (64, 64, 64))
    nifti(tmp / "d" / "fine.nii.gz", np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32))
    return pretrain(tmp / "d", tmp, "data.slice_axis=2")


def truncated_dicom(tmp: Path) -> list[str]:
    dicom_series(tmp / "tree" / "a", 6, patient="A")
    dicom_series(tmp / "tree" / "b", 6, patient="B", seed=1)
    cut = tmp / "tree" / "a" / "s3.dcm"
    cut.write_bytes(cut.read_bytes()[:400])
    return ["data", "check", str(tmp / "tree")]


def junk_dcm_in_series(tmp: Path) -> list[str]:
    dicom_series(tmp / "tree" / "a", 6, patient="A")
    dicom_series(tmp / "tree" / "b", 6, patient="B", seed=1)
    (tmp / "tree" / "b" / "zz_junk.dcm").write_bytes(b"\x00" * 80)
    return pretrain(tmp / "tree", tmp, "data.slice_axis=2")


def filters_leave_nothing(tmp: Path) -> list[str]:
    dicom_series(tmp / "tree" / "a", 6, patient="A")
    dicom_series(tmp / "tree" / "b", 6, patient="B", seed=1)
    return pretrain(tmp / "tree", tmp, "data.slice_axis=2", "data.include.Modality=^MR$")


def unknown_filter_key(tmp: Path) -> list[str]:
    return pretrain(pngs(tmp / "d"), tmp, "data.exclude.Colour=red")


def bad_filter_regex(tmp: Path) -> list[str]:
    return ["data", "check", str(pngs(tmp / "d")), "--set", "data.include.SeriesDescription=(unclosed"]


def masks_0_255_with_declared_labels(tmp: Path) -> list[str]:
    return finetune(seg_data(tmp / "d", 255, {"0": "background", "1": "lesion"}), tmp)


def seg_without_labels(tmp: Path) -> list[str]:
    return finetune(seg_data(tmp / "d", 1, None), tmp)


def labels_with_a_bad_key(tmp: Path) -> list[str]:
    return finetune(seg_data(tmp / "d", 1, None), tmp, "data.labels={one: lesion}")


def mask_value_not_in_data_labels(tmp: Path) -> list[str]:
    return finetune(seg_data(tmp / "d", 2, None), tmp, "data.labels={1: lesion}")


CASES: dict[str, tuple[Callable[[Path], list[str]], int, tuple[str, ...]]] = {
    # name: (writes the data and gives the CLI args, exit code, words the output must hold (whitespace removed))
    "constant image (pretrain)": (constant_png, 1, ("blank.png", "constant")),
    "1x1 image (data check)": (one_pixel_png, 1, ("dot.png", "singlevoxel")),
    "NaN voxel (pretrain)": (nan_volume, 1, ("nan_vol.nii.gz", "NaN/Inf")),
    "NIfTI header declaring 32767^3 (data check)": (huge_header, 1, ("huge.nii.gz", "(32767,32767,32767)")),
    "uncompressed NIfTI shorter than its header (pretrain)": (short_nifti, 1, ("short.nii", "(64,64,64)", "holds")),
    "DICOM slice truncated in its header (data check)": (truncated_dicom, 1, ("a/s3.dcm", "brokenDICOMfile")),
    "junk .dcm among a series (pretrain)": (junk_dcm_in_series, 1, ("zz_junk.dcm", "brokenDICOMfile")),
    "filters leave no case (pretrain)": (filters_leave_nothing, 2, ("data.include", "leavenoneofthe2cases")),
    "unknown filter keyword (pretrain)": (unknown_filter_key, 2, ("data.exclude", "Colour")),
    "filter regex that does not compile (data check)": (bad_filter_regex, 2, ("data.include", "SeriesDescription", "badregex")),
    "0/255 masks with declared labels (finetune)": (masks_0_255_with_declared_labels, 1, ("msk", "[255]", "data.label_map={255:1}")),
    "segmentation without labels (finetune)": (seg_without_labels, 2, ("data.labels",)),
    "data.labels with a non-integer value (finetune)": (labels_with_a_bad_key, 2, ("data.labels", "one")),
    "mask value not in data.labels (finetune)": (mask_value_not_in_data_labels, 1, ("msk", "[2]", "declared:[0,1]")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(tmp_path, name):
    make, code, words = CASES[name]
    result = invoke(make(tmp_path))
    assert result.exit_code == code, f"{name}: exit {result.exit_code}\n{result.output[-2500:]}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    text = flat(result.output)
    missing = [w for w in words if w not in text]
    assert not missing, f"{name}: {missing} not in\n{result.output[-2500:]}"
