"""Layout detection (medmae.data.sources.load_source): what a path that is no dataset gives."""

import pytest

from medmae.data.sources import load_source
from medmae.errors import SourceError


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
