"""medmae report: results.csv from the cells (new and old layouts), aggregation and paired comparison."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmae.metrics import bootstrap_ci
from medmae.report import aggregate, collect, paired_comparison
from medmae.report.cases import paired_difference, paired_over_cases
from medmae.report.sweep_files import finished_cells


def test_aggregate_matches_hand_computed_values():
    rows = [{"init": "a", "fraction": 0.5, "seed": s, "fold": "", "metric": "dice", "region": "mean", "class": "",
             "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 10} for s, v in enumerate([0.6, 0.7, 0.8])]
    rows.append({**rows[0], "init": "b", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6})  # one run: its case-level CI
    agg = {a["init"]: a for a in aggregate(rows)}
    assert agg["a"]["mean"] == pytest.approx(0.7) and agg["a"]["std"] == pytest.approx(0.1)
    assert (agg["a"]["ci_low"], agg["a"]["ci_high"]) == pytest.approx(bootstrap_ci(np.array([0.6, 0.7, 0.8]), seed=0))
    assert agg["a"]["n_runs"] == 3 and agg["a"]["ci_over"] == "seeds/folds"
    assert (agg["b"]["ci_low"], agg["b"]["ci_high"], agg["b"]["ci_over"]) == (pytest.approx(0.4), pytest.approx(0.6), "cases")


def test_paired_comparison_sign_and_interval():
    rows = []
    for seed, (mae, scratch) in enumerate([(0.80, 0.70), (0.75, 0.70), (0.90, 0.70), (0.72, 0.71)]):
        for init, v in (("mae", mae), ("scratch", scratch)):
            rows.append({"init": init, "fraction": 0.1, "seed": seed, "fold": "", "metric": "auroc", "region": "",
                         "class": "", "value": v})
    (p,) = paired_comparison(rows, "auroc", "")
    diffs = np.array([0.10, 0.05, 0.20, 0.01])
    assert p["mean_diff"] == pytest.approx(diffs.mean()) and p["wins"] == 4 and p["losses"] == 0
    assert 0 < p["ci_low"] <= p["mean_diff"] <= p["ci_high"]
    assert p["n_pairs"] == 4 and 0 < p["p_value"] < 0.2
    # reversed roles give the mirrored difference
    (q,) = paired_comparison(rows, "auroc", "", reference="mae")
    assert q["mean_diff"] == pytest.approx(-diffs.mean()) and q["ci_high"] < 0


def test_collect_reads_new_cells_and_old_ones(tmp_path):
    """Cells evaluated into eval/test/ (now) and eval/ (older sweeps) are both collected; a cell's other evaluations
    (eval/<data>_<split>/) are not mistaken for its result."""
    out = tmp_path / "W"
    meta = {"task": "cls", "folds": None, "inits": {"scratch": "scratch", "mae": "/runs/mae"}}
    (out / "cells").mkdir(parents=True)
    (out / "sweep.json").write_text(json.dumps(meta))
    for init, folder, v in (("scratch", "eval", 0.6), ("mae", "eval/test", 0.7)):
        cell = out / "cells" / f"cls_frac0.5_seed0_{init}" / folder
        cell.mkdir(parents=True)
        cell.joinpath("summary.json").write_text(json.dumps({"split": "test", "rows": [
            {"metric": "macro_auroc", "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 20}]}))
    other = out / "cells" / "cls_frac0.5_seed0_mae" / "eval" / "external_test"
    other.mkdir()
    other.joinpath("summary.json").write_text(json.dumps({"split": "x:test", "rows": [
        {"metric": "macro_auroc", "value": 0.1, "ci_low": 0.0, "ci_high": 0.2, "n": 5}]}))
    rows = collect(out)
    assert sorted((r["init"], r["value"]) for r in rows) == [("mae", 0.7), ("scratch", 0.6)]


def _per_case(cell, rows):
    d = cell / "eval" / "test"
    d.mkdir(parents=True)
    lines = ["case,region,dice"] + [f"{c},{r},{'' if v is None else v}" for c, r, v in rows]
    (d / "per_case.csv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text("{}")


def test_paired_over_cases_averages_regions_per_case_and_pairs_cells_by_coordinates(tmp_path):
    meta = {"task": "seg", "folds": None}
    cells = tmp_path / "cells"
    scratch = [(f"c{i}", r, 0.5) for i in range(6) for r in ("lung", "heart")] + [("c0", "mean", 0.9)]
    _per_case(cells / "seg_frac0.1_seed0_scratch", scratch)
    # MAE: +0.1 on c0..c4 (both regions), -0.2 on c5's heart only; an undefined value (empty) is skipped
    mae = [(f"c{i}", r, 0.6) for i in range(5) for r in ("lung", "heart")] + [("c5", "lung", 0.5), ("c5", "heart", 0.3),
                                                                               ("c5", "extra", None)]
    _per_case(cells / "seg_frac0.1_seed0_mae", mae)
    _per_case(cells / "seg_frac1_seed0_mae", mae)  # no scratch cell at 100 %: no row
    cells = finished_cells(tmp_path)
    (row,) = paired_over_cases(cells, meta, "dice")
    diffs = np.array([0.1] * 5 + [-0.1])
    assert (row["init"], row["fraction"], row["n_cases"], row["wins"]) == ("mae", 0.1, 6, 5)
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_ci(diffs, n_resamples=4000))
    assert paired_over_cases(cells, meta, "auroc") == []  # no such per-case column (classification)
    assert paired_over_cases(finished_cells(tmp_path / "nothing"), meta, "dice") == []


def test_paired_difference_of_two_run_dirs_mirrors_when_swapped(tmp_path):
    """Any two evaluated runs (not only a sweep's cells) pair over their common cases; swapping them flips the sign."""
    _per_case(tmp_path / "a", [(f"c{i}", "lung", 0.8) for i in range(4)] + [("only_a", "lung", 0.1)])
    _per_case(tmp_path / "b", [(f"c{i}", "lung", 0.6 + 0.1 * (i == 0)) for i in range(4)])
    ab = paired_difference(tmp_path / "a", tmp_path / "b", "dice")
    ba = paired_difference(tmp_path / "b", tmp_path / "a", "dice")
    assert ab["n_cases"] == 4 and ab["wins"] == 4 and ab["mean_diff"] == pytest.approx((0.1 + 0.2 * 3) / 4)
    assert ba["mean_diff"] == pytest.approx(-ab["mean_diff"]) and ba["wins"] == 0
    assert paired_difference(tmp_path / "a", tmp_path / "missing", "dice") is None


def test_paired_over_cases_pairs_only_regions_both_arms_define(tmp_path):
    """Both-empty regions are NaN in per_case.csv (undefined under the empty-mask policy): a region counts where both
    arms define it, and a case with none is left out and counted, never a NaN in the bootstrap."""
    meta = {"task": "seg", "folds": None}
    cells = tmp_path / "cells"
    nan = float("nan")
    # c0: both define lesion; c1: scratch false positive (0), MAE both-empty (NaN); c2: both NaN; c3: two regions,
    # MAE undefined in one of them
    _per_case(cells / "seg_frac0.1_seed0_scratch", [("c0", "lesion", 0.5), ("c1", "lesion", 0.0), ("c2", "lesion", nan),
                                                    ("c3", "lesion", 0.4), ("c3", "organ", 0.8)])
    _per_case(cells / "seg_frac0.1_seed0_mae", [("c0", "lesion", 0.7), ("c1", "lesion", nan), ("c2", "lesion", nan),
                                                ("c3", "lesion", nan), ("c3", "organ", 0.9)])
    (row,) = paired_over_cases(finished_cells(tmp_path), meta, "dice")
    assert (row["n_cases"], row["n_undefined"], row["wins"]) == (2, 2, 2)  # c0, c3 (organ only); c1, c2 left out
    assert row["mean_diff"] == pytest.approx((0.2 + 0.1) / 2)
    assert np.isfinite([row["ci_low"], row["ci_high"]]).all()

def _cls_per_case(cell: Path, targets, probs) -> None:
    d = cell / "eval" / "test"
    d.mkdir(parents=True)
    lines = ["case,target,pred,prob_NORMAL,prob_PNEUMONIA"] + [
        f"c{i},{t},{int(p > 0.5)},{1 - p},{p}" for i, (t, p) in enumerate(zip(targets, probs))]
    (d / "per_case.csv").write_text("\n".join(lines) + "\n")
    (d / "summary.json").write_text("{}")


def test_paired_over_cases_for_classification_is_the_paired_roc_auc_difference(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    scratch = np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.25, 80), 0, 1)
    mae = np.clip(scratch + 0.1 * (2 * y - 1), 0, 1)  # better on every case (until clipped)
    _cls_per_case(tmp_path / "cells" / "cls_frac0.1_seed0_scratch", y, scratch)
    _cls_per_case(tmp_path / "cells" / "cls_frac0.1_seed0_mae", y, mae)
    (row,) = paired_over_cases(finished_cells(tmp_path), {"task": "cls", "folds": None}, "auroc", "PNEUMONIA")
    want = roc_auc_score(y, mae) - roc_auc_score(y, scratch)
    assert row["mean_diff"] == pytest.approx(want) and row["ci_low"] <= want <= row["ci_high"] and want > 0
    assert row["wins"] == int((((mae - scratch) * (2 * y - 1)) > 0).sum()) > 60 and row["n_cases"] == 80
    one_class = tmp_path / "one"
    for init in ("scratch", "mae"):
        _cls_per_case(one_class / "cells" / f"cls_frac0.1_seed0_{init}", [1] * 5, [0.7] * 5)
    assert paired_over_cases(finished_cells(one_class), {"task": "cls", "folds": None}, "auroc", "PNEUMONIA") == []
