"""Tests for medmae.metrics against scikit-learn, MONAI and hand-computed values."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from medmae.metrics import (
    EMPTY_MASK_POLICY,
    bootstrap_ci,
    bootstrap_metric_ci,
    classification_metrics,
    hd95_mm,
    regions_from_labels,
    segmentation_case_metrics,
    summarize_classification,
    summarize_segmentation,
)

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _softmax_probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _rows_by_key(rows: list[dict], key: str = "region") -> dict[tuple[str, str], dict]:
    return {(r.get(key, ""), r["metric"]): r for r in rows}


# ------------------------------------------------------------------------------------------------
# classification vs sklearn
# ------------------------------------------------------------------------------------------------


def test_multiclass_auroc_auprc_accuracy_match_sklearn():
    rng = np.random.default_rng(0)
    n, k = 80, 4
    targets = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    probs = _softmax_probs(rng, n, k)
    probs[np.arange(n), targets] += 0.3 * rng.random(n)  # some signal
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["a", "b", "c", "d"]

    out = classification_metrics(probs, targets, multilabel=False, class_names=names)

    onehot = np.eye(k, dtype=int)[targets]
    for j, name in enumerate(names):
        assert out["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(onehot[:, j], probs[:, j]))
        assert out["per_class"][name]["auprc"] == pytest.approx(average_precision_score(onehot[:, j], probs[:, j]))
        assert out["per_class"][name]["n_pos"] == int((targets == j).sum())
    assert out["macro_auroc"] == pytest.approx(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    assert out["macro_auprc"] == pytest.approx(average_precision_score(onehot, probs, average="macro"))
    assert out["accuracy"] == pytest.approx(accuracy_score(targets, probs.argmax(axis=1)))
    assert out["task"] == "multiclass"
    assert out["headline_auroc"] == out["macro_auroc"]


def test_multilabel_with_tied_scores_matches_sklearn():
    rng = np.random.default_rng(1)
    n, k = 70, 3
    targets = (rng.random((n, k)) < 0.35).astype(int)
    targets[0], targets[1] = 1, 0
    probs = np.round(np.clip(0.3 * targets + 0.7 * rng.random((n, k)), 0, 1), 1)  # many ties
    names = ["effusion", "edema", "nodule"]

    out = classification_metrics(probs, targets, multilabel=True, class_names=names, threshold=0.5)

    auroc = roc_auc_score(targets, probs, average=None)
    ap = average_precision_score(targets, probs, average=None)
    for j, name in enumerate(names):
        assert out["per_class"][name]["auroc"] == pytest.approx(auroc[j])
        assert out["per_class"][name]["auprc"] == pytest.approx(ap[j])
    assert out["macro_auroc"] == pytest.approx(roc_auc_score(targets, probs, average="macro"))
    assert out["macro_auprc"] == pytest.approx(average_precision_score(targets, probs, average="macro"))
    per_label_acc = [accuracy_score(targets[:, j], probs[:, j] >= 0.5) for j in range(k)]
    assert out["accuracy"] == pytest.approx(np.mean(per_label_acc))


def test_binary_headline_is_positive_class_and_threshold_applies():
    rng = np.random.default_rng(2)
    n = 50
    targets = np.array([0, 1] * (n // 2))
    p1 = np.clip(0.25 * targets + 0.75 * rng.random(n), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)

    out = classification_metrics(probs, targets, multilabel=False, class_names=["normal", "pneumonia"])
    assert out["task"] == "binary"
    assert out["headline"] == "auroc[pneumonia]"
    assert out["headline_auroc"] == pytest.approx(roc_auc_score(targets, p1))
    assert out["headline_auprc"] == pytest.approx(average_precision_score(targets, p1))

    strict = classification_metrics(
        probs, targets, multilabel=False, class_names=["normal", "pneumonia"], threshold=0.8
    )
    expected_sens = ((p1 >= 0.8) & (targets == 1)).sum() / (targets == 1).sum()
    assert strict["per_class"]["pneumonia"]["sensitivity"] == pytest.approx(expected_sens)
    assert strict["per_class"]["pneumonia"]["sensitivity"] < out["per_class"]["pneumonia"]["sensitivity"]
    assert strict["accuracy"] == pytest.approx(np.mean((p1 >= 0.8) == (targets == 1)))


def test_sensitivity_specificity_multilabel_hand_made_confusion():
    # threshold 0.5: TP = 3, FN = 1, FP = 2, TN = 4
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.55, 0.4, 0.3, 0.1, 0.0])
    out = classification_metrics(p[:, None], y[:, None], multilabel=True, class_names=["lesion"])
    c = out["per_class"]["lesion"]
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (3, 1, 2, 4)
    assert c["sensitivity"] == pytest.approx(3 / 4)
    assert c["specificity"] == pytest.approx(4 / 6)
    assert (c["n_pos"], c["n_neg"]) == (4, 6)
    assert out["accuracy"] == pytest.approx(7 / 10)


def test_sensitivity_specificity_multiclass_one_vs_rest_argmax():
    # confusion matrix (rows = true, cols = argmax prediction); N = 17
    confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 1, 4]])
    targets, preds = [], []
    for t in range(3):
        for p in range(3):
            targets += [t] * confusion[t, p]
            preds += [p] * confusion[t, p]
    targets_a, preds_a = np.array(targets), np.array(preds)
    probs = np.full((len(targets), 3), 0.1)
    probs[np.arange(len(targets)), preds_a] = 0.8

    out = classification_metrics(probs, targets_a, multilabel=False, class_names=["x", "y", "z"])
    # class x: TP 5, FN 1, FP 2, TN 9; class y: TP 3, FN 3, FP 2, TN 9; class z: TP 4, FN 1, FP 1, TN 11
    assert out["per_class"]["x"]["sensitivity"] == pytest.approx(5 / 6)
    assert out["per_class"]["x"]["specificity"] == pytest.approx(9 / 11)
    assert out["per_class"]["y"]["sensitivity"] == pytest.approx(3 / 6)
    assert out["per_class"]["y"]["specificity"] == pytest.approx(9 / 11)
    assert out["per_class"]["z"]["sensitivity"] == pytest.approx(4 / 5)
    assert out["per_class"]["z"]["specificity"] == pytest.approx(11 / 12)
    assert out["accuracy"] == pytest.approx(12 / 17)
    assert out["decision_rule"].startswith("argmax")


def test_class_without_positive_case_raises_naming_class_and_counts():
    rng = np.random.default_rng(3)
    targets = np.zeros((20, 2), dtype=int)
    targets[:7, 0] = 1
    with pytest.raises(ValueError, match=r"'edema' has 0 positive and 20 negative"):
        classification_metrics(rng.random((20, 2)), targets, multilabel=True, class_names=["effusion", "edema"])

    probs = _softmax_probs(rng, 12, 3)
    with pytest.raises(ValueError, match=r"'tumor' has 0 positive and 12 negative"):
        classification_metrics(probs, np.array([0, 1] * 6), multilabel=False, class_names=["a", "b", "tumor"])


def test_classification_rejects_logits_unnormalized_rows_and_name_mismatch():
    rng = np.random.default_rng(4)
    targets = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="probabilities"):
        classification_metrics(rng.normal(size=(4, 2)) * 5, targets, multilabel=False, class_names=["a", "b"])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(np.full((4, 2), 0.7), targets, multilabel=False, class_names=["a", "b"])
    with pytest.raises(ValueError, match="3 names but probs has K=2"):
        classification_metrics(np.full((4, 2), 0.5), targets, multilabel=False, class_names=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_estimate_narrows_and_is_reproducible():
    rng = np.random.default_rng(5)
    small, large = rng.normal(0.7, 0.1, 20), rng.normal(0.7, 0.1, 500)
    lo_s, hi_s = bootstrap_ci(small, n_resamples=1000, seed=0)
    lo_l, hi_l = bootstrap_ci(large, n_resamples=1000, seed=0)
    assert lo_s < small.mean() < hi_s
    assert lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    # close to the normal-theory interval mean +- 1.96 sd / sqrt(n) for n = 500
    half_width = 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (hi_l - lo_l) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_ci(small, n_resamples=1000, seed=0) == (lo_s, hi_s)
    assert bootstrap_ci(small, n_resamples=1000, seed=1) != (lo_s, hi_s)


def test_bootstrap_ci_degenerate_inputs():
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([0.8])))
    assert bootstrap_ci(np.full(7, 0.1)) == (pytest.approx(0.1), pytest.approx(0.1))
    with pytest.raises(ValueError, match="1 of 3 values are NaN"):
        bootstrap_ci(np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci(np.array([]))
    lo, hi = bootstrap_ci(np.arange(30.0), statistic=np.median, n_resamples=500)
    assert lo < 14.5 < hi


def test_bootstrap_two_cases_hand_computed():
    # resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95% CI (0, 1)
    values = np.array([0.0, 1.0])
    assert bootstrap_ci(values, n_resamples=400) == (0.0, 1.0)
    res = bootstrap_metric_ci(np.mean, values, n_resamples=400)
    assert (res.value, res.low, res.high, res.n_valid, res.n_skipped) == (0.5, 0.0, 1.0, 400, 0)
    vector = bootstrap_metric_ci(lambda v: np.array([v.min(), v.max()]), values, n_resamples=400)
    assert np.array_equal(vector.low, [0.0, 0.0]) and np.array_equal(vector.high, [1.0, 1.0])
    single = bootstrap_metric_ci(np.mean, np.array([0.3]))
    assert single.value == 0.3 and math.isnan(single.low) and math.isnan(single.high) and single.n_valid == 0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_auc_bootstrap_skips_and_reports_degenerate_resamples():
    # one positive among 6 cases: a resample lacks it with probability (5/6)^6 = 0.335
    # (sklearn raises or, in newer versions, warns and returns NaN: both count as skipped)
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.2, 0.6, 0.4, 0.95, 0.1])
    res = bootstrap_metric_ci(lambda s_, y_: roc_auc_score(y_, s_), s, y, n_resamples=600, seed=0)
    assert res.value == pytest.approx(roc_auc_score(y, s))
    assert res.n_valid + res.n_skipped == 600
    assert 0.26 < res.n_skipped / 600 < 0.41
    assert res.skip_reason
    assert res.low <= res.value <= res.high

    probs = np.stack([1 - s, s], axis=1)
    rows, _ = summarize_classification(probs, y, multilabel=False, class_names=["neg", "pos"], n_resamples=500)
    assert rows[0]["n_resamples_skipped"] > 100
    assert "resamples skipped" in rows[0]["note"]

    with pytest.raises(ValueError, match="original 6 cases"):  # degenerate data: an error, not a skip
        bootstrap_metric_ci(lambda s_, y_: roc_auc_score(y_, s_), s, np.zeros(6), n_resamples=10)


def test_summarize_classification_ci_matches_sklearn_on_the_same_resamples():
    rng = np.random.default_rng(6)
    n = 40
    y = np.array([0, 1] * (n // 2))
    p1 = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    rows, per_case = summarize_classification(
        probs, y, multilabel=False, class_names=["neg", "pos"], n_resamples=300, seed=3
    )
    assert [(r["metric"], r.get("class")) for r in rows] == [("auroc", "pos"), ("auprc", "pos"), ("accuracy", None)]
    # same seed -> same resamples: the fast weighted path must equal sklearn on explicit resamples
    ref_auc = bootstrap_metric_ci(lambda p, t: roc_auc_score(t, p), p1, y, n_resamples=300, seed=3)
    ref_ap = bootstrap_metric_ci(lambda p, t: average_precision_score(t, p), p1, y, n_resamples=300, seed=3)
    assert (rows[0]["value"], rows[0]["ci_low"], rows[0]["ci_high"]) == pytest.approx(tuple(ref_auc[:3]))
    assert (rows[1]["value"], rows[1]["ci_low"], rows[1]["ci_high"]) == pytest.approx(tuple(ref_ap[:3]))
    assert rows[2]["value"] == pytest.approx(np.mean((p1 >= 0.5) == y))
    assert all(r["n"] == n for r in rows)
    assert len(per_case) == n
    assert per_case[5] == {"case": 5, "target": int(y[5]), "pred": int(p1[5] >= 0.5),
                           "prob_neg": pytest.approx(1 - p1[5]), "prob_pos": pytest.approx(p1[5])}


def test_summarize_classification_multilabel_rows():
    rng = np.random.default_rng(7)
    targets = (rng.random((60, 3)) < 0.4).astype(int)
    targets[0], targets[1] = 1, 0
    probs = np.clip(0.3 * targets + 0.7 * rng.random((60, 3)), 0, 1)
    names = ["a", "b", "c"]
    rows, per_case = summarize_classification(probs, targets, multilabel=True, class_names=names, n_resamples=200)
    point = classification_metrics(probs, targets, multilabel=True, class_names=names)
    by = {(r["metric"], r.get("class")): r for r in rows}
    assert by[("macro_auroc", None)]["value"] == pytest.approx(point["macro_auroc"])
    assert by[("macro_auprc", None)]["value"] == pytest.approx(point["macro_auprc"])
    assert by[("accuracy", None)]["value"] == pytest.approx(point["accuracy"])
    for name in names:
        assert by[("auroc", name)]["value"] == pytest.approx(point["per_class"][name]["auroc"])
        r = by[("auprc", name)]
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert len(rows) == 3 + 2 * len(names)
    assert per_case[0]["target_a"] == 1 and per_case[1]["target_c"] == 0
    assert per_case[2]["prob_b"] == pytest.approx(probs[2, 1])
    again, _ = summarize_classification(probs, targets, multilabel=True, class_names=names, n_resamples=200)
    assert again == rows


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
