import math
import warnings
from collections import Counter

import numpy as np
import pytest

from medmae.data.cases import Case
from medmae.data.splits import kfold, label_fraction, save_json, stratum, train_test_split

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


def one_case_per_subject() -> list[Case]:
    """41 subjects, one image each: 20 'a', 12 'b', 6 'a|b', 3 without finding."""
    labels = ["a"] * 20 + ["b"] * 12 + ["a|b"] * 6 + [""] * 3
    return [Case(f"c{i:03d}", (f"c{i:03d}.png",), f"s{i:03d}", label=lab) for i, lab in enumerate(labels)]


def several_cases_per_subject() -> list[Case]:
    """30 subjects with 1-3 images each; a subject's images may carry different labels."""
    cases = []
    for s in range(30):
        for j in range(1 + s % 3):
            lab = ["a", "b", ""][(s + j) % 3]
            cases.append(Case(f"s{s:02d}_{j}", (f"s{s:02d}_{j}.png",), f"s{s:02d}", label=lab))
    return cases


def subjects_of(cases: list[Case], ids: list[str]) -> set[str]:
    by_id = {c.case_id: c for c in cases}
    return {by_id[i].subject_id for i in ids}


def strata_of(cases: list[Case], ids: list[str]) -> Counter:
    by_id = {c.case_id: c for c in cases}
    return Counter(stratum(by_id[i]) for i in ids)


def test_stratum_names():
    assert stratum(Case("x", ("x",), "x", label="b|a")) == "a|b"
    assert stratum(Case("x", ("x",), "x", label="")) == stratum(Case("x", ("x",), "x")) == ""


@pytest.mark.parametrize("test_fraction,val_fraction", [(0.2, 0.0), (0.3, 0.2)])
def test_train_test_split_is_stratified_and_complete(test_fraction, val_fraction):
    cases = one_case_per_subject()
    split = train_test_split(cases, test_fraction=test_fraction, val_fraction=val_fraction, seed=3)
    parts = [split["train"], split["val"], split["test"]]
    assert sorted(i for p in parts for i in p) == sorted(c.case_id for c in cases)
    assert all(p == sorted(set(p)) for p in parts)
    total = strata_of(cases, [c.case_id for c in cases])
    for name, frac in (("test", test_fraction), ("val", val_fraction)):
        got = strata_of(cases, split[name])
        for key, n in total.items():
            assert abs(got[key] - n * frac) <= 1, (name, key, got[key], n * frac)
    assert bool(split["val"]) == (val_fraction > 0)


def test_train_test_split_keeps_subjects_together():
    cases = several_cases_per_subject()
    split = train_test_split(cases, test_fraction=0.25, val_fraction=0.25, seed=0)
    s = {k: subjects_of(cases, v) for k, v in split.items()}
    assert not (s["train"] & s["test"]) and not (s["train"] & s["val"]) and not (s["val"] & s["test"])
    assert sum(len(v) for v in split.values()) == len(cases)
    assert s["train"] | s["val"] | s["test"] == {c.subject_id for c in cases}


def test_split_json_is_reproducible(tmp_path):
    cases = several_cases_per_subject()
    save_json(tmp_path / "a.json", train_test_split(cases, test_fraction=0.2, seed=7))
    save_json(tmp_path / "b.json", train_test_split(list(reversed(cases)), test_fraction=0.2, seed=7))
    save_json(tmp_path / "c.json", train_test_split(cases, test_fraction=0.2, seed=8))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()
    save_json(tmp_path / "k1.json", kfold(cases, 5, seed=1))
    save_json(tmp_path / "k2.json", kfold(cases, 5, seed=1))
    save_json(tmp_path / "k3.json", kfold(cases, 5, seed=2))
    assert (tmp_path / "k1.json").read_bytes() == (tmp_path / "k2.json").read_bytes()
    assert (tmp_path / "k1.json").read_bytes() != (tmp_path / "k3.json").read_bytes()


def test_bad_split_fractions():
    with pytest.raises(ValueError, match="bad split fractions: test 0.6, val 0.4"):
        train_test_split(one_case_per_subject(), test_fraction=0.6, val_fraction=0.4)


@pytest.mark.parametrize("k", [3, 5])
def test_kfold_is_patient_disjoint_stratified_and_complete(k):
    cases = one_case_per_subject()
    folds = kfold(cases, k, seed=0)
    assert len(folds) == k
    all_ids = sorted(c.case_id for c in cases)
    assert sorted(i for f in folds for i in f["val"]) == all_ids  # every case validated exactly once
    total = strata_of(cases, all_ids)
    for f in folds:
        assert sorted(f["train"] + f["val"]) == all_ids and not set(f["train"]) & set(f["val"])
        got = strata_of(cases, f["val"])
        for key, n in total.items():
            assert abs(got[key] - n / k) <= 1, (key, got[key], n / k)
    sizes = [len(f["val"]) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_keeps_subjects_together():
    cases = several_cases_per_subject()
    for f in kfold(cases, 4, seed=5):
        assert not subjects_of(cases, f["train"]) & subjects_of(cases, f["val"])


def test_kfold_needs_enough_subjects():
    cases = several_cases_per_subject()[:5]  # 3 subjects
    with pytest.raises(ValueError, match="3 subjects cannot make 4 folds"):
        kfold(cases, 4)
    with pytest.raises(ValueError, match="k >= 2"):
        kfold(cases, 1)


def test_label_fractions_are_nested_stratified_subsets_of_train():
    cases = one_case_per_subject()
    split = train_test_split(cases, test_fraction=0.2, seed=0)
    by_id = {c.case_id: c for c in cases}
    train = [by_id[i] for i in split["train"]]
    per_stratum = strata_of(cases, split["train"])
    subsets = [label_fraction(train, f, seed=0) for f in FRACTIONS]
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) < set(big)
    assert subsets[-1] == sorted(split["train"])
    for f, subset in zip(FRACTIONS, subsets):
        assert set(subset) <= set(split["train"])
        got = strata_of(cases, subset)
        assert set(got) == set(per_stratum)  # every stratum keeps at least one subject
        for key, n in per_stratum.items():
            assert got[key] == max(1, math.ceil(f * n - 1e-9)), (f, key)
    assert label_fraction(train, 0.25, seed=0) == subsets[2]
    assert label_fraction(train, 0.25, seed=1) != subsets[2]


def test_label_fraction_takes_whole_subjects():
    cases = several_cases_per_subject()
    ids = label_fraction(cases, 0.3, seed=0)
    chosen = subjects_of(cases, ids)
    assert sorted(ids) == sorted(c.case_id for c in cases if c.subject_id in chosen)


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_label_fraction_range(bad):
    with pytest.raises(ValueError, match=f"label fraction must be in \\(0, 1\\], got {bad}"):
        label_fraction(one_case_per_subject(), bad)


def test_kfold_balances_cases_when_subjects_have_several_images():
    """Subjects with 1-4 images: each fold gets its share of every stratum's images, not only of its subjects
    (the round-robin dealing of subjects used before was off by 15 images of 150 per fold here)."""
    rng = np.random.default_rng(1)
    cases = []
    for s in range(120):
        lab = str(rng.choice(["normal", "pneumonia"], p=[0.26, 0.74]))
        cases += [Case(f"p{s:03d}_{j}", (f"p{s:03d}_{j}.png",), f"p{s:03d}", label=lab) for j in range(1 + s % 4)]
    folds = kfold(cases, 5, seed=0)
    total = strata_of(cases, [c.case_id for c in cases])
    sizes = [len(f["val"]) for f in folds]
    assert max(sizes) - min(sizes) <= 2, sizes
    for f in folds:
        got = strata_of(cases, f["val"])
        assert all(abs(got[key] - n / 5) <= 2 for key, n in total.items()), (got, total)
        assert not subjects_of(cases, f["train"]) & subjects_of(cases, f["val"])
    assert kfold(cases, 5, seed=0) == folds and kfold(cases, 5, seed=1) != folds


def test_kfold_says_in_one_line_when_a_stratum_is_too_small(caplog):
    cases = one_case_per_subject()[:35] + one_case_per_subject()[38:]  # 3 subjects without finding, 0 'a|b'
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning escapes
        kfold(cases, 5, seed=0)
    assert any("k-fold: The least populated class in y has only 3 members" in r.getMessage() for r in caplog.records)
