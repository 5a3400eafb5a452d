"""``medmae demo``: the whole pipeline on built-in synthetic chest radiographs, on a laptop CPU.

1. write synthetic radiographs (PNG + CSV manifest with finding labels and anatomy masks);
2. MAE-pretrain the ``demo-2d`` ViT on all images, labels unused;
3. fine-tune classification (3 findings, multi-label) and segmentation (lungs, heart) on a small labelled
   subset, once from the MAE encoder and once from scratch with identical settings;
4. evaluate both on the same held-out split and compare (bootstrap 95 % CIs); classification accuracy is shown
   next to the accuracy of predicting every finding absent, which a model has to beat.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from medmae.data.synthetic import write_dataset
from medmae.run_layout import FIGURES_DIR, SUMMARY_FILE
from medmae.tasks.evaluate import evaluate
from medmae.tasks.finetune import finetune
from medmae.tasks.pretrain import pretrain
from medmae.tasks.run_dir import output_dir

HEADLINE = {"cls": ("macro_auroc", None), "seg": ("dice", "mean")}


def headline(summary: dict[str, Any], task: str, metric: str | None = None) -> dict[str, Any]:
    """One row of an evaluation summary (default: the task's headline metric) in the demo's table shape."""
    metric, region = (metric, None) if metric else HEADLINE[task]
    for row in summary["rows"]:
        if row["metric"] == metric and row.get("region") == region:
            return {"metric": metric if region is None else f"{metric} ({region})", **{k: row[k] for k in ("value", "ci_low", "ci_high", "n")}}
    raise KeyError(f"no {metric} row in the {task} evaluation")


def comparison_rows(summary: dict[str, Any], task: str, arm: str, run_dir: Path) -> list[dict[str, Any]]:
    """The headline row; for classification also accuracy next to the trivial baseline it must beat."""
    base = {"task": task, "init": arm, "run_dir": str(run_dir), "n_test": summary["n_cases"]}
    rows = [{**base, **headline(summary, task), "baseline": None}]
    if task == "cls":
        b = summary["accuracy_baseline"]
        rows.append({**base, **headline(summary, task, "accuracy"), "baseline": b["value"], "baseline_rule": b["rule"],
                     "beats_baseline": b["beaten"]})
    return rows


def demo(run_dir: str | Path = "medmae-demo", *, max_steps: int | None = None, n_images: int = 160,
         label_fraction: float = 0.25) -> dict[str, Any]:
    """Run the demo; returns paths, the pretraining losses and the MAE-vs-scratch comparison."""
    run_dir = output_dir(run_dir, "--run-dir")
    t0 = time.time()
    manifest = write_dataset(run_dir / "data", "cxr", n_images, seed=0, size=64)
    pre_dir = pretrain(preset="demo-2d", data=manifest, run_dir=run_dir / "pretrain", max_steps=max_steps, resume="auto")
    pre = json.loads((pre_dir / SUMMARY_FILE).read_text())
    t_pre = time.time() - t0
    comparison = []
    for task in ("cls", "seg"):
        for arm, init in (("MAE", pre_dir), ("scratch", "scratch")):
            ft_dir = finetune(task=task, init=init, preset="demo-2d", data=manifest, run_dir=run_dir / f"{task}-{arm.lower()}",
                              overrides=[f"data.label_fraction={label_fraction}"], max_steps=max_steps, resume="auto")
            comparison += comparison_rows(evaluate(ft_dir), task, arm, ft_dir)
    figures = sorted((pre_dir / FIGURES_DIR).glob("*.png"))
    result = {
        "data": str(manifest),
        "pretrain_dir": str(pre_dir),
        "encoder": pre["encoder"],
        "figure": str(figures[-1]) if figures else None,
        "pretrain_steps": pre["steps"],
        "masked_patch_loss": pre["figure_cases_masked_loss"],
        "patch_mean_baseline_loss": pre["figure_cases_patch_mean_baseline"],
        "label_fraction": label_fraction,
        "comparison": comparison,
        "pretrain_seconds": round(t_pre, 1),
        "seconds": round(time.time() - t0, 1),
    }
    (run_dir / "demo_summary.json").write_text(json.dumps(result, indent=1))
    return result
