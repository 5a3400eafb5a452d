"""The sweep report renders: the HTML embeds the plot and the tables, one-pair rows say n/a, the leakage check and
the setup (data, configuration, plan) are in it; the plot names fractions, inits and metrics readably, draws the
chance level for ROC-AUC, and is also written as SVG and PDF. No browser needed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medmae.figures import reconstruction_figure, short_label
from medmae.report import write_report
from medmae.report.plots import plot_label_efficiency

CONFIG = {"task": "cls", "mode": "finetune", "model": {"arch": "vit", "img_size": [32, 32]},
          "train": {"epochs": 7, "batch_size": 4}, "optim": {"lr": 0.001, "layer_decay": 0.75}}
VALUES = {("scratch", 0.1): 0.60, ("mae", 0.1): 0.65, ("scratch", 1.0): 0.80, ("mae", 1.0): 0.82}


def make_sweep(root, *, seen: int) -> tuple:
    """A finished two-init, two-fraction, one-seed sweep written by hand (what `medmae sweep` leaves)."""
    mae = root / "mae"
    (mae / "figures").mkdir(parents=True)
    (mae / "config.yaml").write_text(yaml.safe_dump({"name": "demo-2d", "model": {"arch": "vit"}, "mask": {"ratio": 0.75}}))
    Image.fromarray(np.full((40, 60), 128, np.uint8)).save(mae / "figures" / "recon_step0000002.png")
    out = root / "W"
    meta = {"task": "cls", "preset": "demo-2d", "config": None, "data": "/data/cxr/manifest.csv", "folds": None,
            "seeds": [0], "fractions": [0.1, 1.0], "inits": {"scratch": "scratch", "mae": str(mae)},
            "overrides": ["train.epochs=7"], "max_steps": None, "cells": [f"cls_frac{f:g}_seed0_{i}" for i, f in VALUES]}
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps(meta))
    for (init, frac), v in VALUES.items():
        cell = out / "cells" / f"cls_frac{frac:g}_seed0_{init}"
        (cell / "eval" / "test").mkdir(parents=True)
        leak = {"checked": False, "reason": "no pretraining record (scratch or an external encoder)"} if init == "scratch" \
            else {"checked": True, "n_overlap": seen, "overlap": [f"c{i}" for i in range(seen)]}
        (cell / "eval" / "test" / "summary.json").write_text(json.dumps({"split": "test", "n_cases": 20, "leakage": leak, "rows": [
            {"metric": "auroc", "class": "PNEUMONIA", "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 20},
            {"metric": "accuracy", "value": v - 0.1, "ci_low": v - 0.2, "ci_high": v, "n": 20}]}))
        used = 8 if frac == 0.1 else 80
        (cell / "splits.json").write_text(json.dumps({"train": [f"t{i}" for i in range(80)], "test": [f"x{i}" for i in range(20)],
                                                      "train_used": [f"t{i}" for i in range(used)], "origin": "dataset"}))
        report = None if init == "scratch" else {"loaded": ["a", "b", "c"], "missing": [], "unexpected": [], "reshaped": [],
                                                 "adaptations": ["position table 4x4 -> 8x8"]}
        (cell / "task.json").write_text(json.dumps({"init": meta["inits"][init], "load_report": report}))
        (cell / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return out, meta


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_html_report_embeds_the_plot_tables_leakage_and_setup(tmp_path):
    out, _ = make_sweep(tmp_path, seen=0)
    write_report(out)
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 2  # label-efficiency plot + reconstruction figure
    assert html.count("<table>") == 8  # results, paired, all metrics, leakage, data, inits, plan, configuration
    for heading in ("Results", "Paired comparison with scratch", "Pretraining leakage check", "Setup", "Data",
                    "Initialisations", "Plan", "Fine-tuning configuration"):
        assert re.search(rf"<h[23]>{heading}</h[23]>", html), heading
    # one pair per cell: no zero-width interval, no nan
    assert "| mae | 10 % | +0.0500 | n/a (1 pair) | 1 | 1/0 | n/a (1 pair) |" in md
    assert not re.search(r"\bnan\b", md, re.IGNORECASE) and "0.0500 - 0.0500" not in md
    assert "| mae | 1 of 1 |" not in md and "| mae | 2 of 2 | 0 of 20 | none of the evaluated cases was in the pretraining data |" in md
    assert "| scratch | 0 of 2 | - | not checked: no pretraining record" in md
    assert "| data | `/data/cxr/manifest.csv` |" in md and "| labelled training cases used | 10 %: 8, 100 %: 80 |" in md
    assert "3 tensors loaded; position table 4x4 -> 8x8" in md and "| `train.epochs` | `7` |" in md
    assert "<details><summary>Full <code>config.yaml</code> of the first cell:</summary><pre>" in html
    assert "layer_decay: 0.75" in html and "**Leakage:**" not in md
    summary = strict_json((out / "summary.json").read_text())
    assert summary["paired"][0]["ci_low"] is None and summary["paired"][0]["p_value"] is None
    assert summary["leakage"]["mae"]["seen"] == [0, 0]


def test_a_leaking_pretraining_is_flagged_at_the_top(tmp_path):
    out, _ = make_sweep(tmp_path, seen=20)
    write_report(out)
    md = (out / "report.md").read_text()
    assert md.index("**Leakage:** the pretraining of `mae` saw evaluated") < md.index("## Results")
    assert "every evaluated case was in the pretraining data" in md


def test_the_steps_each_cell_got_are_shown_and_a_budget_measured_on_a_busy_machine_is_flagged(tmp_path):
    out, _ = make_sweep(tmp_path, seen=0)
    steps = {("scratch", 0.1): 500, ("mae", 0.1): 120, ("scratch", 1.0): 480, ("mae", 1.0): 510}
    for (init, frac), n in steps.items():
        path = out / "cells" / f"cls_frac{frac:g}_seed0_{init}" / "task.json"
        busy = n == 120
        task = {**json.loads(path.read_text()), "training": {
            "steps": n, "train_minutes": 9.0, "max_minutes": 10.0, "measured_step_s": 1.0, "budget_steps": n,
            "load_per_cpu": 3.0 if busy else 0.4, "cpu_pressure": 0.7 if busy else 0.02, "busy": busy}}
        path.write_text(json.dumps(task))
    write_report(out)
    md = (out / "report.md").read_text()
    assert md.index("**Busy machine:** the budget of 1 cell(s) (`cls_frac0.1_seed0_mae`)") < md.index("## Results")
    assert "| mae | 10 % | 1 | 120 | 120-120 | 9.0 | 10 | 70% | 3.00 |" in md
    assert "| scratch | 100 % | 1 | 480 | 480-480 | 9.0 | 10 | 2% | 0.40 |" in md
    training = strict_json((out / "summary.json").read_text())["training"]
    assert [(r["init"], r["fraction"], r["steps_mean"], r["busy_cells"]) for r in training] == [
        ("mae", 0.1, 120.0, ["cls_frac0.1_seed0_mae"]), ("mae", 1.0, 510.0, []),
        ("scratch", 0.1, 500.0, []), ("scratch", 1.0, 480.0, [])]
    # idle everywhere: the section stays, the warning goes
    path = out / "cells" / "cls_frac0.1_seed0_mae" / "task.json"
    task = json.loads(path.read_text())
    path.write_text(json.dumps({**task, "training": {**task["training"], "busy": False, "load_per_cpu": 0.5}}))
    write_report(out)
    md = (out / "report.md").read_text()
    assert "**Busy machine:**" not in md and "## Training each cell got" in md


def test_the_plot_names_fractions_inits_and_metric_and_draws_chance(tmp_path):
    out, _ = make_sweep(tmp_path, seen=0)
    write_report(out)
    files = out / "report_files"
    svg = (files / "label_efficiency.svg").read_text()
    for text in ("10 %", "(8)", "100 %", "(80)", "chance (0.5)", "scratch (random init)",
                 'MAE "mae" (ViT, mask 75 %)', "ROC-AUC: PNEUMONIA"):
        assert text in svg, text
    assert (files / "label_efficiency.pdf").read_bytes().startswith(b"%PDF")
    assert (files / "label_efficiency.png").read_bytes().startswith(b"\x89PNG")


def test_no_chance_line_for_dice(tmp_path):
    agg = [{"init": i, "fraction": f, "metric": "dice", "where": "mean", "mean": 0.8, "ci_low": 0.7, "ci_high": 0.9}
           for i in ("scratch", "mae") for f in (0.05, 0.5, 1.0)]
    png, svg, pdf = plot_label_efficiency(agg, "dice", "mean", tmp_path / "p.png", "seg")
    text = svg.read_text()
    assert "Dice: mean" in text and "chance" not in text and "5 %" in text
    assert png.suffix == ".png" and pdf.suffix == ".pdf"


@pytest.mark.parametrize("case_id", ["1.2.840.113619.2.55.3.604688119.969.1268071029.320.1.2.840.113619.2.55.3.60468811",
                                     "patient_000123_study_2019-04-05_series_7_CT_abdomen_portal_venous_phase_axial"])
def test_long_case_ids_fit_their_row_of_the_reconstruction_figure(case_id):
    label = short_label(case_id, 22)
    assert all(len(line) <= 22 for line in label.split("\n")) and label.count("\n") <= 1
    assert label.startswith(case_id[:5]) and label.endswith(case_id[-5:])  # start and distinctive end kept
    x = torch.rand(2, 1, 16, 16)
    fig = reconstruction_figure(x, x, torch.zeros(2, 1, 16, 16), titles=[case_id, case_id + "-b"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for row in range(2):
        ylabel = axes[4 * row].yaxis.label.get_window_extent(renderer)
        image = axes[4 * row].get_window_extent(renderer)
        assert fig.bbox.x0 <= ylabel.x0 and ylabel.height <= image.height + 1  # inside the figure, no taller than its row
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_short_labels_leave_short_text_alone_and_bound_long_text():
    assert short_label("case_0001") == "case_0001"
    assert short_label("a b c d e f g h i j k l m n o p", 10) == "a b c d e\n...m n o p"
    assert short_label("0123456789abcdefghij", 10, lines=1) == "012...ghij"
