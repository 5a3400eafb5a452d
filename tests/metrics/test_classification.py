"""medmae.metrics.classification against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from medmae.metrics.bootstrap import bootstrap_metric_ci
from medmae.metrics.classification import classification_metrics, paired_auroc_difference, summarize_classification


def _softmax_probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    logits = rng.normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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
# summaries with bootstrap CIs
# ------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_bootstrap_path_equals_sklearn_on_tied_scores(multilabel):
    """The vectorised weighted-rank code the bootstrap runs (kept: ~100x faster than sklearn per resample,
    benchmarks/metrics_vs_sklearn.py) gives sklearn's values, ties included."""
    rng = np.random.default_rng(11)
    n, k = 90, 3
    if multilabel:
        targets = (rng.random((n, k)) < 0.4).astype(int)
        targets[:2] = [[1, 1, 1], [0, 0, 0]]
        probs = np.round(np.clip(0.3 * targets + 0.7 * rng.random((n, k)), 0, 1), 1)  # one decimal: many ties
    else:
        targets = rng.integers(0, k, n)
        raw = np.round(rng.random((n, k)) + 0.5 * np.eye(k)[targets], 1) + 0.05
        probs = raw / raw.sum(1, keepdims=True)
    names = ["a", "b", "c"]
    rows, _ = summarize_classification(probs, targets, multilabel=multilabel, class_names=names, n_resamples=20)
    y = targets if multilabel else np.eye(k, dtype=int)[targets]
    for j, name in enumerate(names):
        got = {r["metric"]: r["value"] for r in rows if r.get("class") == name}
        assert got["auroc"] == pytest.approx(roc_auc_score(y[:, j], probs[:, j]), abs=1e-12)
        assert got["auprc"] == pytest.approx(average_precision_score(y[:, j], probs[:, j]), abs=1e-12)


# ------------------------------------------------------------------------------------------------
# paired ROC-AUC difference


def test_paired_auroc_difference_is_sklearns_difference_with_a_paired_interval():
    rng = np.random.default_rng(3)
    y_n = rng.integers(0, 2, 300)
    b_n = y_n + rng.normal(0, 1.0, 300)  # scratch
    a_n = b_n + 0.3 * y_n + rng.normal(0, 0.1, 300)  # the arm: the same errors, a little better
    res = paired_auroc_difference(a_n[:, None], b_n[:, None], y_n[:, None].astype(float), n_resamples=1000)
    want = roc_auc_score(y_n, a_n) - roc_auc_score(y_n, b_n)
    assert res.value == pytest.approx(want, abs=1e-12) and want > 0
    assert 0 < res.low < res.value < res.high
    single = bootstrap_metric_ci(lambda y, s: roc_auc_score(y, s), y_n, b_n, n_resamples=1000)
    assert res.high - res.low < 0.5 * (single.high - single.low), "pairing must remove the shared case variance"
    same = paired_auroc_difference(b_n[:, None], b_n[:, None], y_n[:, None].astype(float), n_resamples=200)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_paired_auroc_difference_averages_classes_and_refuses_bad_input():
    rng = np.random.default_rng(4)
    y_nk = np.eye(3)[rng.integers(0, 3, 120)]
    a, b = _softmax_probs(rng, 120, 3), _softmax_probs(rng, 120, 3)
    want = np.mean([roc_auc_score(y_nk[:, j], a[:, j]) - roc_auc_score(y_nk[:, j], b[:, j]) for j in range(3)])
    assert paired_auroc_difference(a, b, y_nk, n_resamples=50).value == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(120, 3\) and \(120, 2\)"):
        paired_auroc_difference(a, b[:, :2], y_nk)
    with pytest.raises(ValueError, match="no positive or no negative"):
        paired_auroc_difference(a, b, np.zeros_like(y_nk))
