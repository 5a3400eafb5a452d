"""``medmae data prepare`` (medmae.tasks.prepare): the cache and its fingerprint, concurrent preparation, and
virtual paths."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from helpers import subprocess_env
from medmae.data import preprocess
from medmae.data.cache import sha256_file
from medmae.data.check import check_source
from medmae.data.synthetic import write_dataset
from medmae.tasks.prepare import prepare_source


def cache_arrays(cache: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(cache).as_posix(): np.load(p) for p in sorted((cache / "arrays").rglob("*.npy"))}


def test_prepare_fills_the_cache_then_reads_nothing(tmp_path, monkeypatch):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 4, size=32)
    cache = tmp_path / "cache"
    result = prepare_source([manifest], preset="demo-2d", overrides=[f"data.cache_dir={cache}"])
    fp = result.fingerprint
    assert fp["n_cases"] == fp["n_prepared"] == 4 and not result.failed
    first = fp["cases"][0]
    assert first["sha256"] == [sha256_file(first["files"][0])] and first["shape"] == [1, 32, 32]
    assert fp["sources"][0]["recipe"]["intensity"] == {"name": "minmax"}
    assert fp["sources"][0]["intensity"][0]["min"] == 0.0 and fp["sources"][0]["intensity"][0]["max"] == 1.0
    assert result.path.parent == cache / "fingerprints" and json.loads(result.path.read_text()) == fp
    assert len(cache_arrays(cache)) == 4

    reads = []
    real_read = preprocess.read_image
    monkeypatch.setattr(preprocess, "read_image", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    again = prepare_source([manifest], preset="demo-2d", overrides=[f"data.cache_dir={cache}"])
    assert reads == [] and again.fingerprint == fp and again.path == result.path


def test_prepare_with_masks_caches_masks(tmp_path):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 2, size=32)
    result = prepare_source([manifest], preset="demo-2d", overrides=[f"data.cache_dir={tmp_path / 'c'}"], with_masks=True)
    assert [c["mask_shape"] for c in result.fingerprint["cases"]] == [[32, 32], [32, 32]]
    assert all(len(c["sha256"]) == 2 for c in result.fingerprint["cases"])


def test_two_concurrent_prepares_end_with_identical_loadable_caches(tmp_path):
    manifest = write_dataset(tmp_path / "cxr", "cxr", 6, size=32)
    shared, reference = tmp_path / "shared-cache", tmp_path / "reference-cache"
    ref = prepare_source([manifest], preset="demo-2d", overrides=[f"data.cache_dir={reference}"])
    args = [sys.executable, "-m", "medmae.cli", "data", "prepare", str(manifest), "--preset", "demo-2d",
            "--set", f"data.cache_dir={shared}"]
    procs = [subprocess.Popen([*args, "--out", str(tmp_path / f"fp{i}.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=subprocess_env()) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    fp0, fp1 = (json.loads((tmp_path / f"fp{i}.json").read_text()) for i in range(2))
    assert fp0["content_sha256"] == fp1["content_sha256"] == ref.fingerprint["content_sha256"]
    got, want = cache_arrays(shared), cache_arrays(reference)
    assert sorted(got) == sorted(want) and len(got) == 6
    for key, array in want.items():
        np.testing.assert_array_equal(got[key], array)
    assert not list((shared / "arrays").rglob("*.tmp-*"))


def test_lockstep_threads_store_every_case_twice_without_damage(tmp_path, monkeypatch):
    """Both threads miss the cache for each case and store it at the same moment (a barrier in the reader)."""
    manifest = write_dataset(tmp_path / "cxr", "cxr", 3, size=32)
    cache = tmp_path / "cache"
    barrier = threading.Barrier(2, timeout=30)
    real_read = preprocess.read_image

    def read_in_lockstep(*args, **kwargs):
        out = real_read(*args, **kwargs)
        barrier.wait()
        return out

    monkeypatch.setattr(preprocess, "read_image", read_in_lockstep)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(prepare_source, [manifest], preset="demo-2d", overrides=[f"data.cache_dir={cache}"],
                            out=tmp_path / f"fp{i}.json") for i in range(2)]
        results = [r.result(timeout=60) for r in runs]
    assert results[0].fingerprint == results[1].fingerprint and results[0].fingerprint["n_prepared"] == 3
    monkeypatch.setattr(preprocess, "read_image", real_read)
    reference = prepare_source([manifest], preset="demo-2d", overrides=[f"data.cache_dir={tmp_path / 'ref'}"])
    assert reference.fingerprint["content_sha256"] == results[0].fingerprint["content_sha256"]
    got, want = cache_arrays(cache), cache_arrays(tmp_path / "ref")
    assert sorted(got) == sorted(want)
    for key, array in want.items():
        np.testing.assert_array_equal(got[key], array)


def test_prepare_and_check_medmnist_virtual_paths(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=images, train_labels=np.array([[0], [1], [0]]))
    assert check_source(tmp_path / "pneumoniamnist.npz").ok
    result = prepare_source([tmp_path / "pneumoniamnist.npz"], preset="demo-2d",
                            overrides=[f"data.cache_dir={tmp_path / 'c'}"])
    assert result.fingerprint["n_prepared"] == 3 and not result.failed
    digests = [c["sha256"][0] for c in result.fingerprint["cases"]]
    assert len(set(digests)) == 3  # the member name is part of each image's content hash
    cached = sorted(cache_arrays(tmp_path / "c").values(), key=lambda a: float(a.sum()))
    expected = sorted((((x - x.min()) / (x.max() - x.min()))[None].astype(np.float32) for x in images.astype(np.float32)),
                      key=lambda a: float(a.sum()))
    for got, want in zip(cached, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
