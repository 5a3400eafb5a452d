"""``medmae plan`` on the real datasets (skipped without ``../shared/data`` or ``$MEDMAE_DATA``): MSD Hippocampus,
the chest X-ray training folder and DRIVE. The device speed is fixed here so the test stays quick and its choices
stable; ``benchmarks/plan_real_data.py`` times the whole command, measurement included."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from medmae.planning import network
from medmae.planning.plan_file import plan_configs, read_plan
from medmae.tasks.plan import plan

pytestmark = pytest.mark.realdata


def drive_manifest(root: Path, out: Path) -> Path:
    """DRIVE's 20 training and 20 test images with their first manual annotation (0/255 GIF masks)."""
    base = root / "retina_vessels" / "DRIVE" / "datasets"
    rows = []
    for split, folder, suffix in (("train", "training", "training"), ("test", "testing", "test")):
        for img in sorted((base / folder / "images").glob(f"*_{suffix}.tif")):
            num = img.name.split("_")[0]
            rows.append({"case_id": f"drive{num}", "path": str(img), "split": split,
                         "mask": str(base / folder / "1st_manual" / f"{num}_manual1.gif")})
    path = out / "drive.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["case_id", "path", "mask", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def cpu_speed(monkeypatch):
    monkeypatch.setattr(network, "measure_step_s",  # a device of 50 GFLOP/s: no timing in the tests
                        lambda cfg, n, batch, *a, **k: network.cost(cfg, n).flops * batch / 5e10)


def timed_plan(source, tmp_path, **kw):
    t0 = time.perf_counter()
    path, result = plan(source, out=tmp_path / "plan.yaml", **kw)
    seconds = time.perf_counter() - t0
    configs = plan_configs(read_plan(path))
    return result, configs, seconds


def test_hippocampus_plans_mr_zscore_at_1mm_with_a_crop_covering_the_median_volume(shared_data, tmp_path, cpu_speed):
    src = shared_data / "hippocampus_msd" / "Task04_Hippocampus"
    p, configs, seconds = timed_plan(src, tmp_path, task="seg", budget="30m")
    assert seconds < 120
    assert p["data"]["spacing"] == [1.0, 1.0, 1.0] and p["data"]["intensity"] == {"name": "mri_zscore_nonzero"}
    median = p["plan"]["decisions"]["crop"]["median_shape"]
    assert all(c >= m for c, m in zip(p["model"]["img_size"], median)), "the whole median volume fits in one crop"
    assert p["plan"]["fingerprint"]["labelled_seg"] == 260 and p["plan"]["decisions"]["pretrain_splits"] is None
    assert configs["seg"].model.arch == "resenc"


def test_chest_xray_plans_grey_single_channel_classification(shared_data, tmp_path, cpu_speed):
    src = shared_data / "chestxray_pneumonia_224" / "dataset" / "train"
    p, configs, seconds = timed_plan(src, tmp_path, task="cls", budget="30m")
    assert seconds < 120
    assert p["model"]["in_channels"] == 1, "RGB JPEGs of grey radiographs plan one channel"
    assert p["model"]["img_size"] == [224, 224] and p["data"]["resize"] is None
    assert p["plan"]["fingerprint"]["classes"] == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert configs["cls"].head.pool == "mean"


def test_drive_plans_colour_input_maps_255_masks_and_keeps_test_images_out_of_pretraining(shared_data, tmp_path,
                                                                                          cpu_speed):
    src = drive_manifest(shared_data, tmp_path)
    p, configs, seconds = timed_plan(src, tmp_path, task="seg", budget="30m")
    assert seconds < 120
    assert p["model"]["in_channels"] == 3 and p["data"]["label_map"] == {255: 1}
    assert p["data"]["splits"] == ["train"], "the labelled test split must not be pretrained on"
    assert configs["seg"].data.splits is None and configs["pretrain"].data.splits == ["train"]
