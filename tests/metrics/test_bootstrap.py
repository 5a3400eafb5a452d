"""medmae.metrics.bootstrap: percentile intervals, degenerate inputs and resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmae.metrics.bootstrap import bootstrap_ci, bootstrap_metric_ci
from medmae.metrics.classification import summarize_classification


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
