"""An intensity preset that does not fit the cases' modality is one warning line per source, with counts and the fix."""

from __future__ import annotations

import logging

import pytest

from data_factory import dicom_series, noise_png
from helpers import TINY_MODEL, invoke, pretrain_args
from medmae.config import PretrainConfig, load_config
from medmae.data.cases import Case
from medmae.data.modality_fit import intensity_misfit, modality_family
from medmae.data.pipeline import resolve_parts
from medmae.data.synthetic import write_dataset


def test_modality_families():
    assert [modality_family(m, "x.nii.gz") for m in ("CT", "ct", "MR", "MRI", "T1w", "FLAIR", "US", "XR")] == \
        ["CT", "CT", "MR", "MR", "MR", "MR", "other", "other"]
    assert modality_family(None, "/a/b.PNG") == "raster" and modality_family(None, "/a/b.nii.gz") is None


def cases(*tags: str | None, path: str = "/d/x.nii.gz") -> list[Case]:
    return [Case(f"c{i}", (path,), f"c{i}", modality=t) for i, t in enumerate(tags)]


def test_the_warning_line():
    line = intensity_misfit(cases("MR", "MR", "CT"), "ct_window", "/data/tree")
    assert line.startswith("/data/tree: intensity preset ct_window is made for CT images, but 2 of 3 cases are not CT")
    assert "(MR: 2)" in line and "set data.intensity.name=mri_zscore_nonzero" in line
    pngs = intensity_misfit(cases(None, None, path="/d/a.png"), "mri_zscore_nonzero", "/d")
    assert "2 of 2 cases are not MR" in pngs and "set data.intensity.name=minmax" in pngs
    assert intensity_misfit(cases("CT", "CT"), "ct_window", "s") is None
    assert intensity_misfit(cases(None, None), "ct_window", "s") is None, "untagged volumes are not judged"
    assert intensity_misfit(cases("MR"), "minmax", "s") is None


def test_data_check_with_the_ct_demo_preset_on_an_mr_tree_warns_once(tmp_path):
    dicom_series(tmp_path / "mr" / "a", 6, modality="MR", patient="A")
    dicom_series(tmp_path / "mr" / "b", 6, modality="MR", patient="B", seed=1)
    result = invoke(["data", "check", str(tmp_path / "mr"), "--preset", "demo-3d"])
    assert result.exit_code == 0, result.output[-2000:]
    lines = [line for line in result.output.splitlines() if "[intensity_modality]" in line]
    assert len(lines) == 1 and "ct_window" in lines[0] and "2 of 2" in lines[0] and "(MR: 2)" in lines[0]
    assert "data.intensity.name=mri_zscore_nonzero" in lines[0]
    fixed = invoke(["data", "check", str(tmp_path / "mr"), "--preset", "demo-3d", "--set",
                    "data.intensity.name=mri_zscore_nonzero"])
    assert "[intensity_modality]" not in fixed.output


def test_pretraining_zscore_on_pictures_warns_with_the_fix(tmp_path):
    for i in range(4):
        noise_png(tmp_path / "us" / f"u{i}.png", seed=i)
    overrides = (*TINY_MODEL, "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=2", "data.figure_cases=1",
                 "data.intensity.name=mri_zscore_nonzero")
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", overrides, "--data", str(tmp_path / "us"), "--max-steps", "1"))
    assert result.exit_code == 0, result.output[-2000:]
    warnings = [line for line in result.output.splitlines() if "intensity preset" in line]
    assert len(warnings) == 1 and "4 of 4 cases are not MR" in warnings[0] and "data.intensity.name=minmax" in warnings[0]


def test_a_pool_names_the_key_of_the_source_that_does_not_fit(tmp_path, caplog):
    ct = write_dataset(tmp_path / "ct", "abdomen_ct", 2, seed=1, shape=(16, 16, 16))
    mr = write_dataset(tmp_path / "mr", "brain_mr", 2, seed=2, shape=(16, 16, 16))
    raw = {"data": {"sources": [{"path": str(ct), "intensity": {"name": "ct_window"}},
                                {"path": str(mr), "intensity": {"name": "ct_window"}}]},
           "model": {"spatial_dims": 3, "img_size": [16, 16, 16], "patch_size": 16, "size": None, "embed_dim": 32,
                     "depth": 1, "num_heads": 2}}
    cfg = load_config(PretrainConfig, raw)
    with caplog.at_level(logging.WARNING):
        resolve_parts(cfg.data, cfg.model)
    lines = [r.getMessage() for r in caplog.records if "intensity preset" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(str(mr)) and "data.sources[1].intensity.name=mri_zscore_nonzero" in lines[0]


@pytest.mark.parametrize("preset", ["demo-2d", "demo-3d"])
def test_the_demo_presets_fit_their_synthetic_data(preset, caplog):
    cfg = load_config(PretrainConfig, preset=preset, overrides=["data.synthetic.n=2", "data.synthetic.size=null"])
    with caplog.at_level(logging.WARNING):
        resolve_parts(cfg.data, cfg.model)
    assert not [r for r in caplog.records if "intensity preset" in r.getMessage()]
