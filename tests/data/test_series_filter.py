"""data.include / data.exclude on DICOM attributes: defaults leave out non-image objects and mask series, with a warning."""

from __future__ import annotations

import json
import logging

import pytest

from data_factory import dicom_series
from helpers import TINY_MODEL, flat, invoke, pretrain_args
from medmae.config import PretrainConfig, load_config
from medmae.data.pipeline import resolve_parts
from medmae.data.series_filter import DEFAULT_EXCLUDE, SeriesFilter
from medmae.errors import ConfigError

SLICES_16 = (*TINY_MODEL, "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=2", "data.figure_cases=1",
             "data.slice_axis=2")


def test_the_filter_rules():
    f = SeriesFilter(include={"Modality": "^MR$"}, exclude={**DEFAULT_EXCLUDE, "SeriesDescription": None})
    assert f.reason_to_drop({"Modality": "MR", "SeriesDescription": "lesion mask"}) is None, "null switches a default off"
    assert "data.include.Modality" in f.reason_to_drop({"Modality": "CT"})
    assert "data.include.Modality" in f.reason_to_drop({}), "a missing attribute does not match an include"
    d = SeriesFilter()
    assert "data.exclude.Modality" in d.reason_to_drop({"Modality": "SEG"})
    assert d.reason_to_drop({"Modality": "RTDOSE"}) and d.reason_to_drop({"Modality": "SR"})
    for description in ("Liver_mask", "LABELS", "seg 2", "Segmentation", "ROI-1", "masks"):
        assert d.reason_to_drop({"Modality": "CT", "SeriesDescription": description}), description
    for description in ("Ax T1 MPRAGE", "segmental arteries", "labelled contrast", "Thorax 1.0 B31f"):
        assert d.reason_to_drop({"Modality": "CT", "SeriesDescription": description}) is None, description
    assert d.reason_to_drop({}) is None, "a case without attributes (a PNG) is kept"


@pytest.fixture
def tree(tmp_path):
    """A CT image series, a CT 'liver mask' image series, and a SEG object with pixels."""
    root = tmp_path / "tree"
    dicom_series(root / "ct", 6, patient="P1", series_number=1, description="abdomen 2mm")
    dicom_series(root / "mask", 6, patient="P1", series_number=2, description="liver mask")
    dicom_series(root / "seg", 6, patient="P1", series_number=3, modality="SEG", description="AI result")
    return root


def parts_of(root, *overrides):
    cfg = load_config(PretrainConfig, preset="demo-2d", overrides=[f"data.path={root}", "data.slice_axis=2", *overrides])
    return resolve_parts(cfg.data, cfg.model)


def test_mask_series_and_non_image_objects_are_left_out_by_default_with_a_warning(tree, caplog):
    with caplog.at_level(logging.WARNING):
        parts = parts_of(tree)
    assert [c.case_id for c in parts[0].spec.cases] == ["P1_1"]
    line = next(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert "2 of 3 series" in line and "P1_2" in line and "'liver mask'" in line and "P1_3" in line and "'SEG'" in line
    assert "data.exclude.SeriesDescription=null" in line


def test_a_default_can_be_switched_off_and_include_keeps_only_matches(tree):
    assert [c.case_id for c in parts_of(tree, "data.exclude.SeriesDescription=null")[0].spec.cases] == ["P1_1", "P1_2"]
    kept = parts_of(tree, "data.include={SeriesDescription: '(?i)abdomen'}")[0].spec.cases
    assert [c.case_id for c in kept] == ["P1_1"]


def test_a_number_is_a_regex_too(tree):
    kept = parts_of(tree, "data.include.SeriesNumber=^2$", "data.exclude.SeriesDescription=null")[0].spec.cases
    assert [c.case_id for c in kept] == ["P1_2"]
    assert load_config(PretrainConfig, {}, overrides=["data.include.SeriesNumber=3"]).data.include == {"SeriesNumber": "3"}


def test_filters_that_leave_nothing_are_a_config_error_naming_the_keys(tree):
    expected = r"data.include / data.exclude leave none of the 3 cases of .*tree \(e.g. P1_1: data.include.Modality"
    with pytest.raises(ConfigError, match=expected):
        parts_of(tree, "data.include.Modality=MR")


@pytest.mark.parametrize(("override", "words"), [
    ("data.include.Colour=red", ["data.include", "Colour", "notafilterableDICOMattribute"]),
    ("data.exclude.Modality=(CT", ["data.exclude", "Modality", "badregex"]),
])
def test_a_bad_filter_exits_2_naming_the_key(tmp_path, override, words):
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", (override,)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert all(w in flat(result.output) for w in words), result.output


def test_pretraining_on_a_tree_with_a_mask_series_trains_on_the_images_only(tree, tmp_path):
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", SLICES_16, "--data", str(tree), "--max-steps", "1"))
    assert result.exit_code == 0, result.output[-2000:]
    assert "liver mask" in result.output and "left out" in result.output
    seen = json.loads((tmp_path / "run" / "pretrain_cases.json").read_text())["cases"]
    assert [c["case_id"] for c in seen] == ["P1_1"]


def test_data_check_applies_the_filters_and_says_what_it_left_out(tree):
    result = invoke(["data", "check", str(tree)])
    assert result.exit_code == 0, result.output[-2000:]
    warning = next(line for line in result.output.splitlines() if "[excluded_series]" in line)
    assert "P1_2" in warning and "P1_3" in warning
    kept = invoke(["data", "check", str(tree), "--set", "data.exclude.SeriesDescription=null", "--json",
                   str(tree.parent / "r.json")])
    assert kept.exit_code == 0
    assert json.loads((tree.parent / "r.json").read_text())["summary"]["cases"]["total"] == 2
