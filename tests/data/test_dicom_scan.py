"""The DICOM tree scan: broken files are named (not skipped), copies of a series in several folders are separate cases."""

from __future__ import annotations

import logging
import shutil

import pytest

from data_factory import dicom_series
from helpers import invoke
from medmae.data.dicom import scan_dicom_tree
from medmae.data.readers import read_image
from medmae.data.sources import load_source
from medmae.errors import ReadError

N = 6


@pytest.mark.parametrize(("name", "cut"), [("s3.dcm", 400), ("s3.dcm", 60), ("slice3", 200)])
def test_a_slice_truncated_in_its_header_is_named_not_its_neighbours(tmp_path, name, cut):
    dicom_series(tmp_path / "ct", N)
    path = tmp_path / "ct" / "s3.dcm"
    data = path.read_bytes()
    path.unlink()
    (tmp_path / "ct" / name).write_bytes(data[:cut])  # "slice3": no suffix, found by its DICM magic
    scan = scan_dicom_tree(tmp_path / "ct")
    assert [b.path for b in scan.broken] == [str(tmp_path / "ct" / name)]
    assert str(tmp_path / "ct" / name) not in scan.non_dicom + scan.no_pixels
    with pytest.raises(ReadError, match="broken DICOM file") as info:
        read_image(tmp_path / "ct")
    assert str(info.value).startswith(str(tmp_path / "ct" / name))
    assert "non-uniform slice spacing" not in str(info.value)


def test_data_check_names_the_truncated_file(tmp_path):
    dicom_series(tmp_path / "tree" / "a", N, patient="A")
    dicom_series(tmp_path / "tree" / "b", N, patient="B", seed=1)
    path = tmp_path / "tree" / "b" / "s2.dcm"
    path.write_bytes(path.read_bytes()[:400])
    result = invoke(["data", "check", str(tmp_path / "tree")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "B_1" in errors[0] and "b/s2.dcm" in errors[0] and "broken DICOM file" in errors[0]


def test_copies_of_a_series_in_two_folders_are_two_cases_with_a_warning(tmp_path, caplog):
    uid, _ = dicom_series(tmp_path / "tree" / "export1", N)
    shutil.copytree(tmp_path / "tree" / "export1", tmp_path / "tree" / "export2")
    with caplog.at_level(logging.WARNING):
        spec = load_source(tmp_path / "tree")
    assert len(spec.cases) == 2 and len({c.case_id for c in spec.cases}) == 2
    for case in spec.cases:
        x, _ = read_image(case.image[0])
        assert x.shape[1:] == (20, 20, N), "each copy reads as one whole series, no slice twice"
    assert any(uid in r.getMessage() and "copied in 2 folders" in r.getMessage() for r in caplog.records)
    result = invoke(["data", "check", str(tmp_path / "tree")])
    assert result.exit_code == 0, result.output[-2000:]


def test_a_series_spread_over_two_folders_without_repeats_stays_one(tmp_path):
    dicom_series(tmp_path / "tree" / "part1", N)
    (tmp_path / "tree" / "part2").mkdir()
    for k in range(3, N):
        shutil.move(tmp_path / "tree" / "part1" / f"s{k}.dcm", tmp_path / "tree" / "part2" / f"s{k}.dcm")
    scan = scan_dicom_tree(tmp_path / "tree")
    assert [len(s.files) for s in scan.series] == [N] and not scan.copies
