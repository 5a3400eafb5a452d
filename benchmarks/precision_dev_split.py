#!/usr/bin/env python
"""Does bf16 autocast on a CPU with native bf16 cost the planned CNN accuracy, and what does its speed buy?

    python benchmarks/precision_dev_split.py                 # 4 minutes per arm, ~15 min in all
    python benchmarks/precision_dev_split.py --minutes 8 --tag cpu-8min

Setting: the plan ``real_data.py hippocampus`` uses (``medmae plan`` of MSD Hippocampus, 8 minutes per run on the
CPU), trained from scratch on a **development split inside fold 0's training cases** (an inner 5-fold split of
those 208 cases: 166 train, 42 validation), so the cross-validation's test folds play no part in the choice.
Three arms: fp32 for ``--minutes``, bf16 for ``--minutes`` (equal time), bf16 for the fp32 arm's step count
(equal steps). Dice (mean of the labels) on the 42 validation cases, differences paired over them.

Writes ``benchmarks/results/precision_dev_split_<tag>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from real_data import data_root, portable

from medmae.report.cases import paired_difference, per_case_values

REPO = Path(__file__).resolve().parents[1]
INNER = ["eval.folds=5", "eval.fold=0",  # the development split inside the manifest of fold 0's training cases
         "data.labels={1: Anterior, 2: Posterior}"]  # dataset.json's labels (a manifest declares none)


def fold0_manifest(medmae: Any, plan: Path, source: Path, work: Path) -> Path:
    """A manifest of fold 0's training cases (read from a one-step run's ``splits.json``; the fold's test cases
    are left out)."""
    probe = medmae.finetune(plan=plan, task="seg", run_dir=work / "fold0-probe", max_steps=1, resume="auto",
                            overrides=["eval.folds=5", "eval.fold=0", "train.max_minutes=null"])
    train_ids = json.loads((probe / "splits.json").read_text())["train"]
    out = work / "fold0_train.csv"
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "path", "mask"])
        for cid in train_ids:
            w.writerow([cid, source / "imagesTr" / f"{cid}.nii.gz", source / "labelsTr" / f"{cid}.nii.gz"])
    return out


def mean_dice(run: Path) -> float:
    """Dice of the run's validation cases: mean over cases of the mean over the labels."""
    return round(float(np.mean([np.mean(list(r.values())) for r in per_case_values(run, "dice").values() if r])), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (default $MEDMAE_DATA or ../shared/data)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "precision-dev-split")
    ap.add_argument("--minutes", type=float, default=4.0, help="training minutes of the equal-time arms")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    import medmae

    root = data_root(args.data_root)
    source = root / "hippocampus_msd" / "Task04_Hippocampus"
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    plan = args.work / "plan.yaml"
    if not plan.is_file():
        medmae.plan(source, task="seg", budget=8, device="cpu", out=plan)
    manifest = fold0_manifest(medmae, plan, source, args.work)
    runs: dict[str, dict[str, Any]] = {}
    for name, precision, equal_time in (("fp32", "fp32", True), ("bf16", "bf16", True),
                                        ("bf16_equal_steps", "bf16", False)):
        length = [f"train.max_minutes={args.minutes}"] if equal_time else \
            ["train.max_minutes=null", f"train.max_steps={runs['fp32']['steps']}"]
        over = [*length, f"train.precision={precision}"]
        t = time.time()
        run = medmae.finetune(plan=plan, task="seg", data=manifest, run_dir=args.work / name, resume="auto",
                              overrides=[*INNER, *over])
        train_s = time.time() - t
        medmae.evaluate(run)
        training = json.loads((run / "task.json").read_text())["training"]
        runs[name] = {"overrides": over, "steps": training["steps"], "train_minutes": round(training["train_minutes"], 2),
                      "wall_s": round(train_s, 1), "dice": mean_dice(run), "run": run}
        print(f"{name}: {runs[name]['steps']} steps, {train_s / 60:.1f} min, Dice {runs[name]['dice']:.4f}", flush=True)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/precision_dev_split.py" + (f" --minutes {args.minutes:g}" if args.minutes != 4 else ""),
        "setting": "planned ResEnc U-Net from scratch, development split of fold 0's training cases (inner fold 0 of 5)",
        "arms": {k: {kk: vv for kk, vv in v.items() if kk != "run"} for k, v in runs.items()},
        "bf16_minus_fp32_equal_time": paired_difference(runs["bf16"]["run"], runs["fp32"]["run"], "dice"),
        "bf16_minus_fp32_equal_steps": paired_difference(runs["bf16_equal_steps"]["run"], runs["fp32"]["run"], "dice"),
        "total_seconds": round(time.time() - t0, 1), "machine": f"{os.cpu_count()} CPUs",
    }
    out = REPO / "benchmarks" / "results" / f"precision_dev_split_{args.tag}.json"
    out.write_text(portable(json.dumps(result, indent=1), root, args.work))
    for k in ("bf16_minus_fp32_equal_time", "bf16_minus_fp32_equal_steps"):
        p = result[k]
        print(f"{k}: {p['mean_diff']:+.4f} ({p['ci_low']:+.4f} to {p['ci_high']:+.4f}), {p['wins']}/{p['n_cases']}")


if __name__ == "__main__":
    main()
