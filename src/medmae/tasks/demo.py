"""``medmae demo``: the whole pipeline a user runs on their own data, on built-in synthetic chest radiographs, on a
laptop CPU in a few minutes.

1. write synthetic radiographs (PNG + CSV manifest with anatomy masks and finding labels);
2. ``medmae plan`` them for segmentation (lungs, heart) within a per-run time budget: a ResEnc U-Net;
3. MAE-pretrain the planned encoder on all images, labels unused;
4. ``medmae sweep``: fine-tune on a few labels (5 % and 25 % of the training cases) from the MAE, from scratch and
   as MONAI's BasicUNet from scratch (same split, augmentation and budget), evaluate all on the same held-out
   images, and compare every arm with scratch case by case (paired bootstrap CIs).

Classification is not part of it: the synthetic findings are a few pixels at 64 px, and with ~90 training images
no arm learns them (ROC-AUC at chance at 100 % labels for the planned CNN, its MAE and MONAI's DenseNet121 alike).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmae.config import ConfigError
from medmae.data.synthetic import write_dataset
from medmae.planning.plan import parse_budget
from medmae.planning.plan_file import read_plan
from medmae.run_layout import FIGURES_DIR, SUMMARY_FILE
from medmae.tasks.plan import plan
from medmae.tasks.pretrain import pretrain
from medmae.tasks.run_dir import output_dir
from medmae.tasks.sweep import sweep

BASELINE = "baseline:basicunet"
ARM_NAMES = {"scratch": "scratch", "pretrain": "MAE", "baseline-basicunet": "MONAI BasicUNet"}


def results_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (arm, label fraction) of a sweep's ``summary.json``: the headline metric with its CI over test
    cases, and for the arms other than scratch the paired difference with scratch over the same cases."""
    head = summary["headline"]
    by_case = {(r["init"], float(r["fraction"])): r for r in summary.get("paired_over_cases", [])}
    rows = []
    for a in summary["aggregate"]:
        if (a["metric"], a["where"]) != (head["metric"], head["where"]):
            continue
        d = by_case.get((a["init"], float(a["fraction"])))
        rows.append({"arm": ARM_NAMES.get(a["init"], a["init"]), "fraction": float(a["fraction"]),
                     "metric": f"{head['metric']} ({head['where']})" if head["where"] else head["metric"],
                     "value": a["mean"], "ci_low": a["ci_low"], "ci_high": a["ci_high"],
                     "vs_scratch": None if d is None else {k: d[k] for k in ("mean_diff", "ci_low", "ci_high", "wins", "n_cases")}})
    order = list(ARM_NAMES.values())
    return sorted(rows, key=lambda r: (r["fraction"], order.index(r["arm"]) if r["arm"] in order else len(order)))


def demo(run_dir: str | Path = "medmae-demo", *, max_steps: int | None = None, n_images: int = 160,
         budget: str = "25s", fractions: Sequence[float] = (0.05, 0.25)) -> dict[str, Any]:
    """Run the demo; returns paths, the plan, the pretraining losses and the comparison of the three arms."""
    run_dir = output_dir(run_dir, "--run-dir")
    t0 = time.time()
    manifest = write_dataset(run_dir / "data", "cxr", n_images, seed=0, size=64)
    plan_path = run_dir / "plan.yaml"
    if plan_path.is_file():  # a second `medmae demo` continues under the first one's plan (its runs resume)
        planned = read_plan(plan_path).raw
        if planned["plan"]["budget_minutes"] != parse_budget(budget):
            raise ConfigError(f"--run-dir {run_dir} holds a demo planned for {planned['plan']['budget_minutes'] * 60:g}s "
                              f"per run, not --budget {budget}: give another --run-dir (or delete this one)")
    else:
        plan_path, planned = plan(manifest, task="seg", budget=budget, out=plan_path)
    pre_dir = pretrain(plan=plan_path, data=manifest, run_dir=run_dir / "pretrain", max_steps=max_steps, resume="auto")
    pre = json.loads((pre_dir / SUMMARY_FILE).read_text())
    t_pre = time.time() - t0
    sweep_dir = sweep(task="seg", inits=["scratch", str(pre_dir), BASELINE], run_dir=run_dir / "sweep", plan=plan_path,
                      data=manifest, fractions=list(fractions), seeds=1, max_steps=max_steps)
    figures = sorted((pre_dir / FIGURES_DIR).glob("*.png"))
    result = {
        "data": str(manifest),
        "plan": str(plan_path),
        "network": planned["plan"]["decisions"]["network"],
        "budget": budget,
        "pretrain_budget_s": 60.0 * planned["train"]["max_minutes"],
        "pretrain_dir": str(pre_dir),
        "encoder": pre["encoder"],
        "figure": str(figures[-1]) if figures else None,
        "pretrain_steps": pre["steps"],
        "masked_loss": pre["masked_loss"],
        "patch_mean_baseline_loss": pre["patch_mean_baseline"],
        "sweep_dir": str(sweep_dir),
        "comparison": results_table(json.loads((sweep_dir / SUMMARY_FILE).read_text())),
        "pretrain_seconds": round(t_pre, 1),
        "seconds": round(time.time() - t0, 1),
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(result, indent=1))
    return result
