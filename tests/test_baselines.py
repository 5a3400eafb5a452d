"""The trivial accuracy baselines a classification summary carries."""

import numpy as np
import pytest

from medmae.baselines import accuracy_vs_baseline, decision_rule, trivial_accuracy


def test_single_label_baseline_is_the_majority_class():
    b = trivial_accuracy(np.array([0, 1, 1, 1, 2]), multilabel=False, class_names=["a", "b", "c"])
    assert b == {"value": pytest.approx(0.6), "rule": "majority class 'b'"}


def test_multilabel_baseline_is_all_negative_per_label():
    targets = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    b = trivial_accuracy(targets, multilabel=True, class_names=["x", "y", "z"])
    assert b == {"value": pytest.approx(10 / 12), "rule": "all-negative per label"}
    # a model that never fires scores exactly the baseline, and is told so
    assert accuracy_vs_baseline(10 / 12, b)["beaten"] is False
    assert accuracy_vs_baseline(11 / 12, b)["beaten"] is True


def test_decision_rules():
    assert decision_rule(multilabel=True, n_classes=3, threshold=0.3) == "p >= 0.3 per label"
    assert decision_rule(multilabel=False, n_classes=2, threshold=0.7) == "p[positive] >= 0.7"
    assert decision_rule(multilabel=False, n_classes=4, threshold=0.5).startswith("argmax")
