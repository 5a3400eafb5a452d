"""The arms of a comparison: MONAI baselines (``--init baseline:NAME``) train and evaluate through the same
finetune / evaluate path; scratch and baseline arms never get layer decay; a pretraining that learned nothing
says so in ``summary.json``, the export, ``task.json`` and the sweep report."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

import medmae.tasks.finetune as ft
from helpers import invoke
from medmae.errors import ConfigError
from medmae.models.contract import read_contract
from medmae.tasks.evaluate import evaluate
from medmae.tasks.finetune import finetune
from medmae.tasks.inference import load_task_run
from medmae.tasks.pretrain import pretrain
from medmae.tasks.sweep import sweep

MODEL = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.size=null", "model.img_size=[32,32]")
IMAGES = ("data.synthetic.n=40", "data.synthetic.size=[32,32]", "train.batch_size=4")
DATA = (*IMAGES, "eval.bootstrap=20")
# one step at a vanishing lr without norm_pix: the decoder's output stays random, far worse than patch means
UNLEARNED = (*MODEL, *IMAGES, "model.decoder.depth=1", "model.decoder.embed_dim=16", "model.decoder.num_heads=2",
             "data.figure_cases=2", "optim.lr=1e-9", "loss.norm_pix=false")


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory) -> tuple[Path, list[str]]:
    run = tmp_path_factory.mktemp("unlearned") / "mae"
    logger = logging.getLogger("medmae.tasks.pretrain")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        pretrain(preset="demo-2d", run_dir=run, overrides=UNLEARNED, max_steps=1)
    finally:
        logger.removeHandler(handler)
    return run, records


def test_a_pretraining_that_learned_nothing_says_so_with_both_numbers(unlearned):
    run, messages = unlearned
    s = json.loads((run / "summary.json").read_text())
    assert s["learned"] is False
    assert s["masked_loss"] >= s["patch_mean_baseline"] > 0
    assert any("did not learn" in m and f"{s['masked_loss']:.4g}" in m for m in messages)
    contract = read_contract(run / "export" / "encoder.safetensors")
    assert contract["pretraining"]["learned"] is False
    assert contract["pretraining"]["masked_loss"] == pytest.approx(s["masked_loss"])


@pytest.mark.parametrize("task,name", [("cls", "densenet121"), ("seg", "basicunet"), ("seg", "dynunet")])
def test_each_baseline_trains_two_steps_and_evaluates_through_the_same_path(tmp_path, task, name):
    """(resnet18 trains and evaluates in the sweep below.)"""
    run = finetune(task=task, preset="demo-2d", init=f"baseline:{name}", run_dir=tmp_path / "run",
                   overrides=DATA, max_steps=2)
    info = json.loads((run / "task.json").read_text())
    assert info["init"] == f"baseline:{name}" and info["arm"] == "baseline" and name in info["baseline"]
    assert info["layer_decay"] == {"configured": 0.75, "applied": False,
                                   "why": "baseline arm: layer-wise lr decay is for pretrained encoders only"}
    assert info["training"]["steps"] == 2
    _, _, model, _ = load_task_run(run)
    assert type(model).__module__.startswith("medmae.models.monai_nets") or "monai" in type(model).__module__
    summary = evaluate(run)
    metrics = {r["metric"] for r in summary["rows"]}
    assert ("auroc" in metrics) if task == "cls" else ("dice" in metrics)
    assert summary["n_cases"] == 16  # demo-2d holds out 40 % of the 40 cases


def test_an_unknown_baseline_is_a_config_error_listing_the_known_ones(tmp_path):
    r = invoke(["finetune", "--task", "seg", "--preset", "demo-2d", "--init", "baseline:vnet9", "--run-dir",
                tmp_path / "run", "--max-steps", "1"])
    assert r.exit_code == 2
    assert "baseline:vnet9" in r.output and "baseline:basicunet" in r.output and "baseline:dynunet" in r.output
    with pytest.raises(ConfigError, match="baseline:densenet121"):
        sweep(task="cls", inits=["scratch", "baseline:vnet9"], run_dir=tmp_path / "W", preset="demo-2d",
              fractions=[1.0], seeds=1)
    assert not (tmp_path / "W" / "cells").exists(), "an unknown baseline must fail before any cell runs"


def test_sweep_shows_baseline_arm_paired_with_mae_flags_unlearned_init_and_no_layer_decay_for_scratch(
        tmp_path, unlearned, monkeypatch):
    scales: dict[str, list[float]] = {}
    real = ft.Trainer

    def spy(**kw):
        scales[kw["run_dir"].name] = sorted({g["lr_scale"] for g in kw["param_groups"]})
        return real(**kw)

    monkeypatch.setattr(ft, "Trainer", spy)
    mae, _ = unlearned
    w = sweep(task="cls", inits=["scratch", "baseline:resnet18", str(mae)], run_dir=tmp_path / "W", preset="demo-2d",
              fractions=[1.0], seeds=1, overrides=(*MODEL, *DATA), max_steps=2)
    cells = {p.name: json.loads((p / "task.json").read_text()) for p in (w / "cells").iterdir()}
    by_arm = {c["arm"]: (name, c) for name, c in cells.items()}
    assert set(by_arm) == {"scratch", "baseline", "pretrained"}
    assert scales[by_arm["scratch"][0]] == [1.0], "scratch must not get the MAE recipe's layer decay"
    assert by_arm["scratch"][1]["layer_decay"]["applied"] is False
    assert len(scales[by_arm["pretrained"][0]]) > 1 and by_arm["pretrained"][1]["layer_decay"]["applied"] is True
    assert by_arm["pretrained"][1]["init_pretraining"]["learned"] is False
    assert all(c["training"]["steps"] == 2 for c in cells.values())

    with (w / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    learned = {r["init"]: r["init_learned"] for r in rows}
    assert learned == {"scratch": "", "baseline-resnet18": "", "mae": "false"}
    report = (w / "report.md").read_text()
    assert "## Paired comparison with the baseline baseline-resnet18" in report
    section = report.split("## Paired comparison with the baseline baseline-resnet18")[1]
    assert "| mae | 100 % |" in section and "| scratch | 100 % |" in section
    assert "## Paired comparison with scratch" in report and "| baseline-resnet18 | 100 % |" in report
    assert "Warning: the pretraining of `mae` did not learn" in report
    table = report.split("## Results")[1]
    assert "| MAE learned |" in table and "| **no** |" in table
    summary = json.loads((w / "summary.json").read_text())
    assert summary["not_learned"] == {"mae": 1} and summary["paired_baseline"]
