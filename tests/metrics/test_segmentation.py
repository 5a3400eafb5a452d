"""medmae.metrics.segmentation against MONAI and hand-computed values, and its empty-mask policy."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest

from medmae.metrics.segmentation import (
    EMPTY_MASK_POLICY,
    hd95_mm,
    regions_from_labels,
    segmentation_case_metrics,
    summarize_segmentation,
)


def _rows_by_key(rows: list[dict], key: str = "region") -> dict[tuple[str, str], dict]:
    return {(r.get(key, ""), r["metric"]): r for r in rows}


# ------------------------------------------------------------------------------------------------
# segmentation, per case
# ------------------------------------------------------------------------------------------------


def test_dice_precision_recall_2d_hand_masks():
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[2:6, 2:6] = 1  # 16 px
    pred = np.zeros_like(ref)
    pred[2:6, 2:4] = 1  # 8 px, all inside ref
    m = segmentation_case_metrics(pred, ref, regions={"organ": [1]}, spacing=(1.0, 1.0))["organ"]
    assert (m["tp"], m["fp"], m["fn"]) == (8, 0, 8)
    assert m["dice"] == pytest.approx(16 / 24)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["status"] == "ok" and not m["ref_empty"] and not m["pred_empty"]


def test_dice_precision_recall_3d_hand_masks():
    ref = np.zeros((6, 6, 8), dtype=np.uint8)
    ref[1:4, 1:4, 1:4] = 1  # 27 voxels
    pred = np.zeros_like(ref)
    pred[1:4, 1:4, 2:6] = 1  # 36 voxels, 18 overlap
    m = segmentation_case_metrics(pred, ref, regions={"organ": [1]}, spacing=(1.0, 1.0, 1.0))["organ"]
    assert (m["tp"], m["fp"], m["fn"]) == (18, 18, 9)
    assert m["dice"] == pytest.approx(36 / 63)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)


def _shifted_cubes(axis: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((10, 10, 10), dtype=np.int64)
    ref[2:6, 2:6, 2:6] = 1
    return np.roll(ref, 1, axis=axis), ref


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [(0, (2.5, 1.0, 0.7), 2.5), (0, (0.5, 3.0, 2.0), 0.5), (2, (2.5, 1.0, 0.7), 0.7)],
)
def test_hd95_shifted_cubes_anisotropic(axis, spacing, expected):
    # 4^3 cubes, one shifted by 1 voxel: of each cube's 56 edge voxels, 36 (side faces) lie on the
    # other's edge (0), 4 (inner part of the leading face) are min(spacing) away and 16 (trailing
    # face) exactly spacing[axis] away -> the 95th percentile (rank 52.25 of 0..55) is spacing[axis].
    pred, ref = _shifted_cubes(axis)
    m = segmentation_case_metrics(pred, ref, regions={"cube": [1]}, spacing=spacing)["cube"]
    assert m["hd95_mm"] == pytest.approx(expected)


def test_hd95_shifted_squares_2d():
    # 4x4 squares shifted by one column: 12 edge pixels -> 6 at 0, 2 at min(spacing), 4 at spacing[1]
    ref = np.zeros((8, 9), dtype=np.int64)
    ref[2:6, 2:6] = 1
    pred = np.roll(ref, 1, axis=1)
    assert hd95_mm(pred > 0, ref > 0, (1.0, 2.0)) == pytest.approx(2.0)
    assert hd95_mm(pred > 0, ref > 0, (1.0, 0.3)) == pytest.approx(0.3)


def test_hd95_is_a_percentile_not_the_maximum():
    ref = np.zeros((12, 12, 40), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[3, 3, 35] = True  # one stray voxel 29 voxels away: the maximum, but < 5% of edge voxels
    assert hd95_mm(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(0.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hd95_matches_monai_on_random_blobs():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    from scipy import ndimage

    rng = np.random.default_rng(8)
    spacing = (1.5, 0.8, 2.0)
    for _ in range(3):
        a = ndimage.gaussian_filter(rng.random((20, 24, 16)), 2) > 0.5
        b = ndimage.gaussian_filter(rng.random((20, 24, 16)), 2) > 0.5
        expected = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(),
            include_background=True, percentile=95, spacing=list(spacing),
        ).item()
        assert hd95_mm(a, b, spacing) == pytest.approx(expected, rel=1e-5)


def test_empty_mask_policy_values():
    shape, spacing = (10, 12, 8), (2.0, 1.0, 0.5)
    diagonal = math.sqrt(20.0**2 + 12.0**2 + 4.0**2)
    present = np.zeros(shape, dtype=np.int64)
    present[2:5, 2:5, 2:5] = 1
    empty = np.zeros(shape, dtype=np.int64)
    regions = {"lesion": [1]}

    both = segmentation_case_metrics(empty, empty, regions=regions, spacing=spacing)["lesion"]
    assert both["status"] == "both_empty" and both["ref_empty"] and both["pred_empty"]
    assert all(math.isnan(both[k]) for k in ("dice", "precision", "recall", "hd95_mm"))
    assert (both["tp"], both["fp"], both["fn"]) == (0, 0, 0)

    missed = segmentation_case_metrics(empty, present, regions=regions, spacing=spacing)["lesion"]
    assert missed["status"] == "missed" and missed["pred_empty"] and not missed["ref_empty"]
    assert (missed["dice"], missed["precision"], missed["recall"]) == (0.0, 0.0, 0.0)
    assert missed["hd95_mm"] == pytest.approx(diagonal)
    assert (missed["tp"], missed["fp"], missed["fn"]) == (0, 0, 27)

    fp = segmentation_case_metrics(present, empty, regions=regions, spacing=spacing)["lesion"]
    assert fp["status"] == "false_positive" and fp["ref_empty"] and not fp["pred_empty"]
    assert (fp["dice"], fp["precision"]) == (0.0, 0.0)
    assert math.isnan(fp["recall"])
    assert fp["hd95_mm"] == pytest.approx(diagonal)
    assert (fp["tp"], fp["fp"], fp["fn"]) == (0, 27, 0)


def test_brats_nested_regions_are_unions():
    ref = np.array([[0, 1, 1, 2, 2, 3, 3, 0, 0, 0]])
    pred = np.array([[0, 0, 1, 1, 2, 3, 3, 3, 0, 0]])
    out = segmentation_case_metrics(pred, ref, regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}, spacing=(1.0, 1.0))
    assert (out["WT"]["tp"], out["WT"]["fp"], out["WT"]["fn"]) == (5, 1, 1)
    assert out["WT"]["dice"] == pytest.approx(10 / 12)
    assert (out["TC"]["tp"], out["TC"]["fp"], out["TC"]["fn"]) == (3, 1, 1)
    assert out["TC"]["dice"] == pytest.approx(6 / 8)
    assert (out["ET"]["tp"], out["ET"]["fp"], out["ET"]["fn"]) == (2, 1, 0)
    assert out["ET"]["dice"] == pytest.approx(4 / 5)
    assert out["ET"]["precision"] == pytest.approx(2 / 3) and out["ET"]["recall"] == pytest.approx(1.0)


def test_regions_from_labels_and_input_errors():
    assert regions_from_labels({0: "background", 2: "spleen", 1: "liver"}) == {"liver": [1], "spleen": [2]}
    with pytest.raises(ValueError, match="'liver'"):
        regions_from_labels({1: "liver", 2: "liver"})
    a = np.zeros((4, 5), dtype=np.int64)
    with pytest.raises(ValueError, match=r"\(4, 5\) != ref shape \(5, 4\)"):
        segmentation_case_metrics(a, a.T, regions={"x": [1]}, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="float64"):
        segmentation_case_metrics(a.astype(float), a, regions={"x": [1]}, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_case_metrics(a, a, regions={"x": [1]}, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="region 'bg'"):
        segmentation_case_metrics(a, a, regions={"bg": [0]}, spacing=(1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# segmentation summary
# ------------------------------------------------------------------------------------------------


def _cases_ok_ok_bothempty_missed() -> list[dict]:
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[2:6, 2:6] = 1
    half = np.zeros_like(ref)
    half[2:6, 2:4] = 1  # dice 2/3, precision 1, recall 0.5
    empty = np.zeros_like(ref)
    pairs = [(half, ref), (ref, ref), (empty, empty), (empty, ref)]
    return [segmentation_case_metrics(p, r, regions={"lesion": [1]}, spacing=(1.0, 1.0)) for p, r in pairs]


def test_summary_excludes_exactly_the_undefined_cases_and_counts_them():
    cases = _cases_ok_ok_bothempty_missed()
    summary = summarize_segmentation(cases, n_resamples=300)
    rows = _rows_by_key(summary["rows"])
    # one region, so the across-regions mean row equals the region row
    assert rows[("mean", "dice")]["value"] == pytest.approx(rows[("lesion", "dice")]["value"])
    assert rows[("mean", "precision")]["n_excluded"] == 1

    dice = rows[("lesion", "dice")]
    assert dice["value"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert (dice["n"], dice["n_excluded"], dice["excluded_reasons"]) == (3, 1, "both_empty=1")
    assert dice["ci_low"] <= dice["value"] <= dice["ci_high"]

    precision = rows[("lesion", "precision")]
    assert precision["value"] == pytest.approx((1.0 + 1.0 + 0.0) / 3), "a missed region counts as precision 0"
    assert (precision["n"], precision["n_excluded"]) == (3, 1)
    assert precision["excluded_reasons"] == "both_empty=1"

    recall = rows[("lesion", "recall")]
    assert recall["value"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert (recall["n"], recall["n_excluded"]) == (3, 1)

    hd95 = rows[("lesion", "hd95_mm")]
    assert hd95["n"] == 3 and hd95["n_excluded"] == 1
    assert hd95["value"] == pytest.approx((cases[0]["lesion"]["hd95_mm"] + 0.0 + math.hypot(8, 8)) / 3)

    assert summary["counts"]["lesion"] == {
        "n_cases": 4, "n_ok": 2, "n_both_empty": 1, "n_missed": 1, "n_false_positive": 0
    }
    assert summary["policy"] == asdict(EMPTY_MASK_POLICY)


def test_summary_mean_row_over_subset_of_regions():
    rng = np.random.default_rng(9)
    shape = (10, 10)
    regions = regions_from_labels({1: "liver", 2: "spleen", 3: "tumor"})
    cases = []
    for _ in range(6):
        ref = np.zeros(shape, dtype=np.int64)
        ref[1:4, 1:4], ref[5:9, 5:9], ref[1:3, 6:9] = 1, 2, 3
        pred = ref.copy()
        pred[rng.random(shape) < 0.15] = 0  # drop some voxels
        cases.append(segmentation_case_metrics(pred, ref, regions=regions, spacing=(1.0, 1.0)))
    both_empty = np.zeros(shape, dtype=np.int64)
    both_empty[5:9, 5:9] = 2  # liver and tumor absent in both
    cases.append(segmentation_case_metrics(both_empty, both_empty, regions=regions, spacing=(1.0, 1.0)))

    summary = summarize_segmentation(cases, mean_over=["liver", "spleen"], n_resamples=300)
    rows = _rows_by_key(summary["rows"])
    mean = rows[("mean", "dice")]
    liver = np.mean([c["liver"]["dice"] for c in cases[:6]])
    spleen = np.mean([c["spleen"]["dice"] for c in cases])
    assert mean["value"] == pytest.approx((liver + spleen) / 2)
    assert mean["regions"] == "liver,spleen"
    assert (mean["n"], mean["n_excluded"], mean["excluded_reasons"]) == (7, 1, "both_empty=1")
    assert mean["ci_low"] <= mean["value"] <= mean["ci_high"]
    assert rows[("liver", "dice")]["n"] == 6 and rows[("spleen", "dice")]["n"] == 7
    assert summary["mean_over"] == ["liver", "spleen"]

    all_regions = _rows_by_key(summarize_segmentation(cases, n_resamples=50)["rows"])[("mean", "dice")]
    tumor = np.mean([c["tumor"]["dice"] for c in cases[:6]])
    assert all_regions["value"] == pytest.approx((liver + spleen + tumor) / 3)
    with pytest.raises(ValueError, match="unknown regions \\['kidney'\\]"):
        summarize_segmentation(cases, mean_over=["kidney"])


def test_summary_rejects_inconsistent_cases():
    cases = _cases_ok_ok_bothempty_missed()
    other = {"organ": cases[0]["lesion"]}
    with pytest.raises(ValueError, match="case 1: regions"):
        summarize_segmentation([cases[0], other])
    broken = {"lesion": dict(cases[0]["lesion"], dice=float("nan"))}
    with pytest.raises(ValueError, match="dice is NaN but status is 'ok'"):
        summarize_segmentation([broken])


def test_hd95_is_named_by_the_unit_of_the_spacing():
    """Images without physical spacing (PNG, .npz) get ``hd95_px``; the summary rows follow the per-case key."""
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[2:6, 2:6] = 1
    pred = np.roll(ref, 1, axis=0)
    px = segmentation_case_metrics(pred, ref, regions={"lesion": [1]}, spacing=(1.0, 1.0), unit="px")["lesion"]
    mm = segmentation_case_metrics(pred, ref, regions={"lesion": [1]}, spacing=(1.0, 1.0))["lesion"]
    assert "hd95_mm" not in px and px["hd95_px"] == mm["hd95_mm"] == pytest.approx(1.0)
    summary = summarize_segmentation([{"lesion": px}, {"lesion": px}], n_resamples=50)
    assert {r["metric"] for r in summary["rows"]} == {"dice", "precision", "recall", "hd95_px"}
    with pytest.raises(ValueError, match="unit"):
        segmentation_case_metrics(pred, ref, regions={"lesion": [1]}, spacing=(1.0, 1.0), unit="cm")


def test_predicting_nothing_cannot_raise_the_mean_precision():
    """A model that predicts nothing on the hard case scores precision 0 there (not a NaN left out of the mean)."""
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[2:6, 2:6] = 1
    empty = np.zeros_like(ref)
    cases = [segmentation_case_metrics(p, ref, regions={"lesion": [1]}, spacing=(1.0, 1.0)) for p in (ref, empty)]
    row = next(r for r in summarize_segmentation(cases, n_resamples=50)["rows"]
               if r["metric"] == "precision" and r["region"] == "lesion")
    assert (row["value"], row["n"], row["n_excluded"]) == (pytest.approx(0.5), 2, 0)
    assert EMPTY_MASK_POLICY.version == "medmae-empty-mask-v2" and "precision 0" in EMPTY_MASK_POLICY.missed
