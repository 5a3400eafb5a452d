"""The array cache: cases held by path, mapped only while one access reads them, so open files stay bounded."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from medmae.data.cache import ArrayCache, CachedArray, atomic_write_chunks, mapped

from helpers import TINY_MODEL, new_file_mode, pretrain_args, subprocess_env


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_stored_array_is_held_by_path_with_shape_and_dtype(tmp_path):
    cache = ArrayCache(tmp_path)
    x = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    held = cache.store("k1-img", x)
    assert isinstance(held, CachedArray)
    assert (held.shape, held.dtype, held.ndim) == ((1, 4, 6), "float32", 3)
    np.testing.assert_array_equal(np.asarray(held), x)
    np.testing.assert_array_equal(held[0, 1:3], x[0, 1:3])
    again = cache.load("k1-img")
    assert again == held, "a second load must describe the same file"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_get_the_mode_open_gives_not_a_private_one(tmp_path):
    """A cache, pack or run folder shared with a group stays readable to it: ``mkstemp`` makes files 0600, which
    left a shared ``MEDMAE_CACHE`` (and a pack's ``pack.json``, an export's contract) unreadable to colleagues."""
    with open(tmp_path / "plain", "wb"):
        pass
    expected = new_file_mode()
    assert (os.stat(tmp_path / "plain").st_mode & 0o777) == expected
    held = ArrayCache(tmp_path / "cache").store("k-img", np.zeros((1, 2, 2), np.float32))
    atomic_write_chunks(tmp_path / "a.json", [b"{}"])
    for path in (held.path, tmp_path / "a.json"):
        assert (os.stat(path).st_mode & 0o777) == expected, path


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_holding_many_cached_arrays_keeps_no_file_open(tmp_path):
    cache = ArrayCache(tmp_path)
    before = open_fds()
    held = [cache.store(f"k{i}-img", np.full((1, 4, 4), i, np.float32)) for i in range(50)]
    held += [cache.load(f"k{i}-img") for i in range(50)]
    reads = [float(np.asarray(mapped(h)).sum()) for h in held]
    assert open_fds() <= before + 1, f"{open_fds() - before} files left open by 100 held arrays"
    assert reads[3] == 3 * 16


def test_a_truncated_file_or_a_wrong_recorded_shape_is_a_cache_miss(tmp_path):
    cache = ArrayCache(tmp_path)
    cache.store("a-img", np.zeros((1, 8, 8), np.float32))
    p = cache.path("a-img")
    data = p.read_bytes()
    p.write_bytes(data[:-10])
    assert cache.load("a-img") is None and not p.exists()
    cache.store("b-img", np.zeros((1, 8, 8), np.float32))
    assert cache.load("b-img", shape=(1, 8, 9)) is None


def test_a_plain_array_passes_through_mapped():
    x = np.ones((1, 2, 2), np.float32)
    assert mapped(x) is x


# ------------------------------------------------------------------------------------- open-file limit

LIMITED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    sys.argv = ["medmae", *sys.argv[1:]]
    from medmae.cli import main
    main()
""")


def test_pretraining_on_300_images_works_under_an_open_file_limit_of_256(tmp_path):
    """Each held case used to keep a memory map (and its file descriptor) for the whole run."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(320):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    overrides = (*TINY_MODEL, "model.img_size=[16,16]", "model.patch_size=8", "train.batch_size=4",
                 "data.figure_cases=1", "train.log_every=1")
    args = pretrain_args(tmp_path / "run", "demo-2d", overrides, "--data", str(folder), "--max-steps", "2")
    env = subprocess_env(MEDMAE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", LIMITED, *args], capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Too many open files" not in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("step") == 2 for r in rows)


def test_a_file_written_in_chunks_is_whole_or_absent_also_on_a_full_disk(tmp_path):
    def chunks():
        yield b'{"cases": ['
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_chunks(tmp_path / "pretrain_cases.json", chunks())
    assert list(tmp_path.iterdir()) == [], "no partial file and no temporary left behind"
    atomic_write_chunks(tmp_path / "pretrain_cases.json", iter([b"[1, ", b"2]"]))
    assert json.loads((tmp_path / "pretrain_cases.json").read_text()) == [1, 2]
