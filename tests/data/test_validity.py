"""One validity rule for `data check` and training; declared image sizes checked before reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_factory import nifti, nifti_declaring, noise_png, png
from helpers import TINY_MODEL, flat, invoke, pretrain_args
from medmae.data.check import check_source
from medmae.data.preprocess import Preprocessing, load_image
from medmae.data.readers import read_image
from medmae.data.sources import load_source
from medmae.data.validity import image_problems
from medmae.errors import CaseError, ReadError

TINY_16 = (*TINY_MODEL, "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=2", "data.figure_cases=1")
PREP_2D = Preprocessing(spatial_dims=2, in_channels=1, intensity={"name": "minmax"}, orientation=None)
PREP_SLICES = Preprocessing(spatial_dims=2, in_channels=1, intensity={"name": "minmax"}, slice_axis=2)


def codes(shape, nonfinite=0, ranges=((0.0, 1.0),), colour=False) -> list[str]:
    return [p.code for p in image_problems(shape, nonfinite, ranges, colour=colour)]


def test_the_rule():
    assert codes((16, 16)) == []
    assert codes((1, 1), ranges=((5.0, 5.0),)) == ["constant_image"]
    assert codes((1, 1, 1), ranges=((0.0, 0.0),)) == ["constant_image"]
    assert codes((8, 8), ranges=((3.0, 3.0),)) == ["constant_image"]
    assert codes((8, 8), nonfinite=2) == ["nonfinite"]
    assert codes((8, 8), ranges=((0.0, 1.0), (2.0, 2.0))) == ["constant_image"], "a constant MR sequence"
    assert codes((8, 8), ranges=((0.0, 9.0), (0.0, 0.0), (0.0, 0.0)), colour=True) == [], "a red picture is fine"
    assert codes((8, 8), ranges=((9.0, 9.0), (0.0, 0.0), (0.0, 0.0)), colour=True) == ["constant_image"]


def _rgb_one_constant_channel() -> np.ndarray:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = np.random.default_rng(1).integers(0, 256, (16, 16))
    return rgb


VOLUME_WITH_BLANK_SLICES = np.pad(np.random.default_rng(2).normal(size=(8, 8, 4)).astype(np.float32), ((0, 0), (0, 0), (3, 3)))
NAN_VOLUME = np.where(np.arange(8 * 8 * 6).reshape(8, 8, 6) == 5, np.nan, 1.0 * np.arange(8 * 8 * 6).reshape(8, 8, 6)).astype(np.float32)

IMAGES = {  # name -> (writer, preprocessing, usable)
    "noise.png": (lambda p: noise_png(p), PREP_2D, True),
    "constant.png": (lambda p: png(p, np.full((16, 16), 7, np.uint8)), PREP_2D, False),
    "one_pixel.png": (lambda p: png(p, np.full((1, 1), 200, np.uint8)), PREP_2D, False),
    "red_only.png": (lambda p: png(p, _rgb_one_constant_channel()), PREP_2D, True),
    "blank_slices.nii.gz": (lambda p: nifti(p, VOLUME_WITH_BLANK_SLICES), PREP_SLICES, True),
    "constant_volume.nii.gz": (lambda p: nifti(p, np.zeros((8, 8, 6), np.float32)), PREP_SLICES, False),
    "nan_voxel.nii.gz": (lambda p: nifti(p, NAN_VOLUME), PREP_SLICES, False),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_check_and_training_agree_on_each_image(tmp_path, name):
    """`data check` errors on an image exactly when training (load_image) refuses it, and both name it."""
    write, prep, usable = IMAGES[name]
    write(tmp_path / "data" / name)
    report = check_source(tmp_path / "data")
    case = load_source(tmp_path / "data").cases[0]
    try:
        load_image(case, prep)
        refused = None
    except CaseError as e:
        refused = str(e)
    assert (not report.errors) == usable, [f.message for f in report.errors]
    assert (refused is None) == usable, refused
    if not usable:
        assert report.errors[0].file.endswith(name) and report.errors[0].code in ("constant_image", "nonfinite")
        assert case.case_id in refused and name in refused


def test_pretraining_refuses_a_constant_image_naming_it_and_skips_it_when_asked(tmp_path):
    data = tmp_path / "pngs"
    for i in range(5):
        noise_png(data / f"img{i}.png", seed=i)
    png(data / "blank.png", np.zeros((16, 16), np.uint8))
    args = pretrain_args(tmp_path / "run", "demo-2d", TINY_16, "--data", str(data), "--max-steps", "1")
    result = invoke(args)
    assert result.exit_code == 1, result.output[-2000:]
    assert "Traceback" not in result.output
    assert "blank" in flat(result.output) and "constant" in result.output

    skip = pretrain_args(tmp_path / "run2", "demo-2d", (*TINY_16, "data.on_bad_case=skip", "data.max_bad_fraction=0.5"),
                         "--data", str(data), "--max-steps", "1")
    result = invoke(skip)
    assert result.exit_code == 0, result.output[-2000:]
    bad = [json.loads(line) for line in (tmp_path / "run2" / "bad_cases.jsonl").read_text().splitlines()]
    assert [b["case_id"] for b in bad] == ["blank"]


def test_a_2d_model_trains_on_volumes_with_constant_slices(tmp_path):
    for i in range(3):
        nifti(tmp_path / "vols" / f"v{i}.nii.gz", np.roll(VOLUME_WITH_BLANK_SLICES, i, axis=0))
    args = pretrain_args(tmp_path / "run", "demo-2d", (*TINY_16, "data.slice_axis=2"), "--data", str(tmp_path / "vols"),
                         "--max-steps", "1")
    result = invoke(args)
    assert result.exit_code == 0, result.output[-2000:]


# ---------------------------------------------------------------------------------------- declared size


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_a_nifti_declaring_32767_cubed_is_named_with_its_shape_before_reading(tmp_path, name):
    path = nifti_declaring(tmp_path / "data" / name, (32767, 32767, 32767))
    with pytest.raises(ReadError, match=r"header declares shape \(32767, 32767, 32767\)") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    result = invoke(["data", "check", str(tmp_path / "data")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = next(li for li in result.output.splitlines() if li.startswith("error"))
    assert name in line and "(32767, 32767, 32767)" in line


def test_an_uncompressed_nifti_shorter_than_its_header_says_is_named(tmp_path):
    path = nifti_declaring(tmp_path / "short.nii", (64, 64, 64))
    with pytest.raises(ReadError, match=r"header declares shape \(64, 64, 64\) int16 .* but the file holds \d+ bytes"):
        read_image(path)


def test_pretraining_on_a_huge_header_is_a_data_error_naming_the_file(tmp_path):
    nifti_declaring(tmp_path / "vol" / "huge.nii", (32767, 32767, 32767))
    args = pretrain_args(tmp_path / "run", "demo-3d", TINY_MODEL, "--data", str(tmp_path / "vol"), "--max-steps", "1")
    result = invoke(args)
    assert result.exit_code == 1, result.output[-2000:]
    assert "huge.nii" in flat(result.output) and "headerdeclaresshape" in flat(result.output)
    assert "out of memory" not in result.output
