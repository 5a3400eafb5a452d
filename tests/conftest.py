"""Shared fixtures: an isolated medmae cache per test session, and the real-data root when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session caches preprocessed arrays and synthetic data in its own temp folder."""
    old = os.environ.get("MEDMAE_CACHE")
    os.environ["MEDMAE_CACHE"] = str(tmp_path_factory.mktemp("medmae-cache"))
    yield
    if old is None:
        os.environ.pop("MEDMAE_CACHE", None)
    else:
        os.environ["MEDMAE_CACHE"] = old


def shared_data_root() -> Path | None:
    """``$MEDMAE_DATA`` or ``../shared/data`` beside the repository, if it exists."""
    env = os.environ.get("MEDMAE_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("real datasets not available (set MEDMAE_DATA or place ../shared/data beside the repo)")
    return root
