"""nnU-Net's planning rules as pure functions (medmae.planning.rules) and the candidate search."""

from __future__ import annotations

import numpy as np
import pytest

from medmae.planning import rules
from medmae.planning.network import Cost, Network, speed_model
from medmae.planning.search import Device, Problem, batch_options, choose


def test_isotropic_data_takes_the_median_spacing():
    spacing, why = rules.target_spacing([[1.0, 1.0, 1.2], [0.8, 0.8, 1.0], [1.0, 1.0, 1.0]])
    assert spacing == [1.0, 1.0, 1.0] and why == "median spacing"


def test_anisotropic_data_gives_the_low_resolution_axis_its_10th_percentile():
    z = [3.0, 5.0, 5.0, 5.0, 5.0]  # median 5 mm slices under 1 mm pixels: 5:1 > 3:1
    spacing, why = rules.target_spacing([[1.0, 1.0, s] for s in z])
    assert spacing == [1.0, 1.0, pytest.approx(np.percentile(z, 10))] and spacing[2] == pytest.approx(3.8)
    assert "axis 2" in why and "10th percentile" in why


def test_the_low_resolution_axis_is_never_made_finer_than_the_in_plane_spacing():
    spacing, _ = rules.target_spacing([[2.0, 2.0, s] for s in (0.5, 0.5, 8.0, 8.0, 8.0)])
    assert spacing[2] == 2.0


def test_crop_is_capped_along_its_largest_axis_and_rounded_to_the_stride():
    assert np.prod(rules.cap_voxels([512, 512, 40], 128**3)) <= 128**3
    capped = rules.cap_voxels([512, 512, 40], 128**3)
    assert capped[2] == 40 and capped[0] < 512, "the short axis is kept while the long ones shrink"
    assert rules.round_to([36, 50, 37], 8) == [40, 56, 40]
    assert rules.stride_multiple([473, 509], 64) == [448, 512]
    assert rules.num_stages([40, 56, 40], 3) == 4  # 40 -> 20 -> 10 -> 5: three halvings keep >= 4 voxels
    assert rules.num_stages([1024, 1024], 2) == 7 and rules.num_stages([8, 8, 8], 3) == 2
    assert rules.shrink_once([64, 32], 16) == [48, 32] and rules.shrink_once([16, 16], 16) is None


@pytest.mark.parametrize("modality,channels,want", [
    ("MR", 1, {"name": "mri_zscore_nonzero"}),
    ("XR", 1, {"name": "xray_histeq"}),
    ("raster", 1, {"name": "minmax", "percentiles": [0.5, 99.5]}),
    ("raster", 3, {"name": "minmax", "percentiles": [0.5, 99.5]}),
    (None, 1, {"name": "minmax", "percentiles": [0.5, 99.5]}),
])
def test_intensity_preset_by_modality(modality, channels, want):
    assert rules.intensity_preset(modality, None, channels)[0] == want


def test_ct_windows_on_the_foreground_percentiles():
    preset, why = rules.intensity_preset("CT", (-57.25, 311.9), 1)
    assert preset == {"name": "ct_window", "lo": -57.2, "hi": 311.9} and "foreground" in why
    assert rules.intensity_preset("CT", None, 1)[0]["name"] == "ct_window"


def test_label_map_splits_and_flips():
    assert rules.label_map([0, 255], {}) == {255: 1}
    assert rules.label_map([0, 255], {"0": "bg", "255": "vessel"}) is None
    assert rules.label_map([0, 255], {"0": "bg", "1": "vessel"}) == {255: 1}
    assert rules.label_map([0, 1], {}) is None
    assert rules.seg_classes([0, 1, 2], {"0": "b", "1": "a", "2": "p"}, None) == 3
    assert rules.seg_classes([0, 255], {}, {255: 1}) == 2
    assert rules.pretraining_splits({"train": {"labelled": 5}, "test": {"labelled": 3}}) == ["train"]
    assert rules.pretraining_splits({"none": {"labelled": 5}, "test": {"labelled": 3}}) == ["train"]
    assert rules.pretraining_splits({"train": {"labelled": 5}, "test": {"labelled": 0, "unlabelled": 9}}) is None
    assert rules.flip_axes("seg", 3) == [0, 1, 2] and rules.flip_axes("cls", 2) == [0]


def nets_of(n: int) -> list[Network]:
    return [Network("toy", f"net{i}", {"i": i}) for i in range(n)]


def costs(net: Network, crop: list[int]) -> Cost:
    """Net i costs (i + 1) GFLOP and (i + 1) MiB of activations per sample at 32^3, scaling with the voxels."""
    k = (net.model["i"] + 1) * np.prod(crop) / 32**3
    return Cost(1e9 * k, 2**20 * k, 1000)


def test_a_bigger_budget_buys_a_bigger_network_and_the_search_shrinks_the_crop_only_for_memory():
    problem = Problem("seg", 3, train_cases=100, image_voxels=32**3, budget_s=3600)
    fast = Device("cpu", 2**34, 1e11, "test", "test")
    big = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, fast)
    small = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8,
                   Problem("seg", 3, 100, 32**3, budget_s=60), fast)
    assert big.network.model["i"] > small.network.model["i"] or big.batch > small.batch
    assert big.fits and big.crop == [32, 32, 32]
    tight = Device("cpu", 1.3 * (2 * 2**20 * 0.4 + 16000) + 1, 1e15, "test", "test")  # net0 at 40 % voxels, batch 2
    shrunk = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, tight)
    assert np.prod(shrunk.crop) < 32**3, "nothing fits in memory at the full crop: the crop must shrink"
    slow = Device("cpu", 2**34, 1e8, "test", "test")  # time, not memory, is short: the crop stays
    kept = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, slow)
    assert kept.crop == [32, 32, 32] and kept.network.model["i"] == 0 and not kept.fits
    assert any("budget buys only" in w for w in kept.warnings)
    quick = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, slow,
                   timer=lambda choice: choice.step_s / 1000)  # predicted too slow, measured 1000x faster
    assert (quick.network.model["i"], quick.crop) == (0, [32, 32, 32]) and quick.fits and not quick.warnings, \
        "a candidate that fits by its measured step takes no 'budget buys only' warning"
    stays = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, slow, timer=lambda choice: choice.step_s)
    assert not stays.fits and any("budget buys only" in w for w in stays.warnings)


def test_segmentation_batches_cover_at_most_5_percent_of_the_data():
    # MSD Hippocampus: 5 % of 260 cases x 63k voxels = 9.1 crops of 40 x 56 x 40 (nnU-Net's batch: 9)
    assert batch_options(Problem("seg", 3, 208, 63000.0, 60, dataset_cases=260), [40, 56, 40]) == [9, 8, 4, 2]
    assert batch_options(Problem("seg", 2, 16, 330000.0, 60), [512, 512]) == [2]
    assert batch_options(Problem("cls", 2, 5000, 50176.0, 60), [224, 224]) == [64, 32, 16, 8]


def test_the_speed_model_separates_throughput_from_a_fixed_per_step_cost():
    # 1 GFLOP per sample; 0.3 s at batch 1 and 0.6 s at batch 4: 10 GFLOP/s plus 0.2 s no batch amortises
    rate, overhead = speed_model(1e9, (1, 0.3), (4, 0.6))
    assert rate == pytest.approx(1e10) and overhead == pytest.approx(0.2)
    assert Device("cpu", 2**34, rate, "t", "t", overhead_s=overhead).step_s(8e9) == pytest.approx(1.0)
    assert speed_model(1e9, (1, 0.5), (4, 0.4)) == (pytest.approx(1e10), 0.0), "noise: pure throughput"


def test_a_candidate_predicted_to_fit_is_timed_and_a_slower_one_is_passed_over():
    problem = Problem("seg", 3, train_cases=100, image_voxels=32**3, budget_s=3600)
    fast = Device("cpu", 2**34, 1e11, "test", "measured")
    predicted = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, fast)
    timed_calls = []

    def timer(choice):  # the device is 1000x slower than predicted for the predicted network
        timed_calls.append((choice.network.model["i"], choice.batch))
        return choice.step_s * (1000.0 if choice.network.model["i"] == predicted.network.model["i"] else 1.0)

    got = choose(lambda c: nets_of(4), costs, [32, 32, 32], lambda c: 8, problem, fast, timer=timer)
    assert timed_calls[0] == (predicted.network.model["i"], predicted.batch)
    assert got.measured_step_s is not None and got.fits
    assert (got.network.model["i"], got.batch) != (predicted.network.model["i"], predicted.batch)
    assert "measured_step_s" in got.as_dict()
