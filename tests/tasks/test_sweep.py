"""medmae sweep: grid, resume, and the report it ends with."""

import csv
import itertools
import json
import math
import re

import pytest

import medmae.tasks.sweep as sweep_mod
from medmae.config import ConfigError
from medmae.engine import budget
from medmae.report import parse_cell, write_report
from medmae.report.budgets import cell_training
from medmae.tasks.pretrain import pretrain
from medmae.tasks.sweep import grid, sweep

DATA = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.size=null", "data.synthetic.n=40",
        "data.synthetic.size=[32,32]", "model.img_size=[32,32]", "train.batch_size=4", "train.epochs=1")
TINY = (*DATA, "eval.bootstrap=50")


def test_grid_expansion_and_names():
    cells = grid("cls", ["scratch", "/runs/mae75", "/runs/mae75"], [0.1, 0.5], [0, 1], folds=3)
    assert len(cells) == 3 * 2 * 2 * 3
    assert len({c.name for c in cells}) == len(cells)  # duplicate init names are made unique
    assert {c.init_name for c in cells} == {"scratch", "mae75", "mae75-2"}
    c = cells[0]
    assert parse_cell(c.name, {"folds": 3}) == {"task": "cls", "fold": "0", "fraction": 0.1, "seed": 0, "init": "scratch"}
    with pytest.raises(ConfigError, match=r"\[1.5\]"):
        grid("cls", ["scratch"], [0.5, 1.5], [0], None)
    with pytest.raises(ConfigError, match="--init"):
        grid("cls", [], [0.5], [0], None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("sweep-pre") / "mae"
    pretrain(preset="demo-2d", run_dir=run, max_steps=2,
             overrides=[*DATA, "model.decoder.depth=1", "model.decoder.embed_dim=16", "model.decoder.num_heads=2"])
    return run


class Killed(Exception):
    """Stands in for the sweep process dying during a cell."""


def test_sweep_resumes_only_unfinished_cells_and_reports(tmp_path, pretrained, monkeypatch, caplog):
    calls, armed = [], [True]
    real = sweep_mod.finetune

    def flaky(*args, run_dir, **kw):
        calls.append(run_dir.name)
        if len(calls) == 3 and armed and armed.pop():
            raise Killed  # the first sweep dies during its third cell
        return real(*args, run_dir=run_dir, **kw)

    monkeypatch.setattr(sweep_mod, "finetune", flaky)
    kw = dict(task="cls", inits=["scratch", str(pretrained)], run_dir=tmp_path / "W", preset="demo-2d",
              fractions=[0.5, 1.0], seeds=2, overrides=TINY, max_steps=2)
    with pytest.raises(Killed):
        sweep(**kw)
    done = calls[:2]
    calls.clear()
    sweep(**kw)
    assert len(calls) == 8 - 2 and not set(done) & set(calls)  # finished cells are not rerun
    assert "--step-time-from" not in caplog.text, "without a time budget there is no step time to pass on"
    out = tmp_path / "W"
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["fraction"], r["seed"], r["init"]) for r in rows} == {
        (f, s, i) for f in ("0.5", "1.0") for s in ("0", "1") for i in ("scratch", "mae")}
    assert {"macro_auroc", "macro_auprc", "accuracy"} <= {r["metric"] for r in rows}
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert (out / "report_files" / "label_efficiency.png").stat().st_size > 5000
    assert html.count("data:image/png;base64,") >= 2  # plot + reconstruction figure of the MAE
    assert "Paired comparison with scratch" in md and "| mae | 50 % |" in md
    # the MAE pretrained on the same synthetic images: every evaluation's leakage check says so
    assert "| mae | 4 of 4 | 16 of 16 | every evaluated case was in the pretraining data" in md
    assert "## Setup" in md and "| cells finished | 8 of 8 |" in md and "<details>" in html
    assert {p.suffix for p in (out / "report_files").glob("label_efficiency.*")} == {".png", ".svg", ".pdf"}
    # every secondary metric carries its CI over the two seeds
    assert re.search(r"\| accuracy \| mae \| [\d.]+ \([\d.]+-[\d.]+\) \| [\d.]+ \([\d.]+-[\d.]+\) \|", md)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["headline"] == {"metric": "macro_auroc", "where": ""}
    assert {p["init"] for p in summary["paired"]} == {"mae"} and all(p["n_pairs"] == 2 for p in summary["paired"])
    # a sweep dir is not reused for a different grid
    with pytest.raises(ConfigError, match="different"):
        sweep(**{**kw, "task": "seg"})


def test_report_mask_ratio_ablation(tmp_path, pretrained):
    out = tmp_path / "W"
    (out / "cells").mkdir(parents=True)
    meta = {"task": "cls", "preset": "demo-2d", "data": None, "folds": None, "seeds": [0], "fractions": [0.5],
            "inits": {"scratch": "scratch", "mae": str(pretrained)}}
    (out / "sweep.json").write_text(json.dumps(meta))
    for init, v in (("scratch", 0.6), ("mae", 0.7)):
        cell = out / "cells" / f"cls_frac0.5_seed0_{init}" / "eval"
        cell.mkdir(parents=True)
        cell.joinpath("summary.json").write_text(json.dumps({"rows": [
            {"metric": "macro_auroc", "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 20}]}))
    write_report(out)
    md = (out / "report.md").read_text()
    assert "| mae | 50 % | 0.700 |" in md and "| scratch | 50 % | 0.600 |" in md
    assert "0.1000" in md  # paired difference
    assert "Mask-ratio ablation" not in md  # one pretrained model, one ratio
    assert math.isclose(json.loads((out / "summary.json").read_text())["paired"][0]["mean_diff"], 0.1)


def test_a_folds_sweep_begun_with_the_old_round_robin_folds_is_not_continued(tmp_path):
    """Folds are made by StratifiedGroupKFold now: new cells of an older --folds sweep would get other folds."""
    out = tmp_path / "W"
    cell = out / "cells" / "cls_frac0.5_seed0_scratch_fold0" / "eval" / "test"
    cell.mkdir(parents=True)
    cell.joinpath("summary.json").write_text(json.dumps({"split": "test", "rows": []}))
    kw = dict(task="cls", inits=["scratch"], run_dir=out, preset="demo-2d", fractions=[0.5], seeds=1, folds=2,
              overrides=TINY, max_steps=1)
    old = {"task": "cls", "preset": "demo-2d", "data": None, "overrides": list(TINY), "max_steps": 1, "folds": 2}
    (out / "sweep.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="older medmae .*round-robin"):
        sweep(**kw)
    assert json.loads((out / "sweep.json").read_text()) == old  # refused before anything was rewritten


def test_only_folds_runs_those_folds_cells_and_a_later_call_the_rest(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(sweep_mod, "finetune", lambda *a, run_dir, **kw: ran.append(run_dir.name))
    monkeypatch.setattr(sweep_mod, "evaluate", lambda cell_dir: None)
    monkeypatch.setattr(sweep_mod, "collect", lambda run_dir: [])
    kw = dict(task="cls", inits=["scratch", "baseline:densenet121"], run_dir=tmp_path / "W", preset="demo-2d",
              fractions=[0.5, 1.0], seeds=1, folds=3, overrides=TINY, max_steps=1, report=False)
    sweep(**kw, only_folds=[1])
    assert len(ran) == 4 and all(name.endswith("_fold1") for name in ran)
    meta = json.loads((tmp_path / "W" / "sweep.json").read_text())
    assert len(meta["cells"]) == 12  # the grid is still the whole grid
    with pytest.raises(ConfigError, match=r"--fold 3: folds are 0..2"):
        sweep(**kw, only_folds=[3])
    with pytest.raises(ConfigError, match="--fold needs --folds"):
        sweep(**{**kw, "folds": None}, only_folds=[0])


def test_under_a_time_budget_the_arms_of_one_network_get_the_same_steps(tmp_path, pretrained, monkeypatch):
    """Timings of one network differ between runs (±15 %): the MAE arm takes the step time the scratch arm of its
    cell measured, so both train the same steps (another network measures its own: tests/engine/test_budget.py)."""
    tick = [0.5]
    calls = itertools.count()
    monkeypatch.setattr(budget, "CLOCK", lambda: next(calls) * tick[0])  # each timed step takes tick[0] s
    real = sweep_mod.finetune

    def timed(*args, run_dir, **kw):
        tick[0] = 0.5 if run_dir.name.endswith("_scratch") else 0.25  # measured, the MAE arm would get twice the steps
        return real(*args, run_dir=run_dir, **kw)

    monkeypatch.setattr(sweep_mod, "finetune", timed)
    out = sweep(task="cls", inits=["scratch", str(pretrained)], run_dir=tmp_path / "W", preset="demo-2d",
                fractions=[1.0], seeds=1, overrides=[*TINY, "train.epochs=50", "train.max_minutes=0.1"], report=False)
    scratch, mae = (cell_training(out / "cells" / f"cls_frac1_seed0_{name}") for name in ("scratch", "mae"))
    assert scratch["steps"] == 10 and "step_s_from" not in scratch  # 6 s x 0.9 / 0.5 s
    assert mae["steps"] == 10 and mae["step_s_from"] == str(out / "cells" / "cls_frac1_seed0_scratch")
