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


def per_case_dice(run: Path) -> dict[str, float]:
    """Mean Dice over the labels of each validation case, from the evaluation's ``per_case.csv``."""
    rows = list(csv.DictReader((run / "eval" / "test" / "per_case.csv").open()))
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(float(r["dice"]))
    return {c: float(np.mean(v)) for c, v in by_case.items()}


def paired(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Mean of b - a over the common cases with a 95 % bootstrap CI."""
    d = np.array([b[c] - a[c] for c in sorted(a)])
    boots = np.random.default_rng(seed).choice(d, (10_000, len(d))).mean(1)
    return {"mean_diff": round(float(d.mean()), 4), "ci_low": round(float(np.percentile(boots, 2.5)), 4),
            "ci_high": round(float(np.percentile(boots, 97.5)), 4), "wins": int((d > 0).sum()), "n_cases": len(d)}


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
    budget = [f"train.max_minutes={args.minutes}"]
    arms: dict[str, list[str]] = {"fp32": [*budget, "train.precision=fp32"], "bf16": [*budget, "train.precision=bf16"]}
    runs: dict[str, dict[str, Any]] = {}
    for name in ("fp32", "bf16", "bf16_equal_steps"):
        if name == "bf16_equal_steps":
            over = ["train.max_minutes=null", f"train.max_steps={runs['fp32']['steps']}", "train.precision=bf16"]
        else:
            over = arms[name]
        t = time.time()
        run = medmae.finetune(plan=plan, task="seg", data=manifest, run_dir=args.work / name, resume="auto",
                              overrides=[*INNER, *over])
        train_s = time.time() - t
        medmae.evaluate(run)
        training = json.loads((run / "task.json").read_text())["training"]
        dice = per_case_dice(run)
        runs[name] = {"overrides": over, "steps": training["steps"], "train_minutes": round(training["train_minutes"], 2),
                      "wall_s": round(train_s, 1),
                      "dice": round(float(np.mean(list(dice.values()))), 4), "per_case": dice}
        print(f"{name}: {runs[name]['steps']} steps, {train_s / 60:.1f} min, Dice {runs[name]['dice']:.4f}", flush=True)
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/precision_dev_split.py" + (f" --minutes {args.minutes:g}" if args.minutes != 4 else ""),
        "setting": "planned ResEnc U-Net from scratch, development split of fold 0's training cases (inner fold 0 of 5)",
        "arms": {k: {kk: vv for kk, vv in v.items() if kk != "per_case"} for k, v in runs.items()},
        "bf16_minus_fp32_equal_time": paired(runs["fp32"]["per_case"], runs["bf16"]["per_case"]),
        "bf16_minus_fp32_equal_steps": paired(runs["fp32"]["per_case"], runs["bf16_equal_steps"]["per_case"]),
        "total_seconds": round(time.time() - t0, 1), "machine": f"{os.cpu_count()} CPUs",
    }
    out = REPO / "benchmarks" / "results" / f"precision_dev_split_{args.tag}.json"
    out.write_text(portable(json.dumps(result, indent=1), root, args.work))
    for k in ("bf16_minus_fp32_equal_time", "bf16_minus_fp32_equal_steps"):
        p = result[k]
        print(f"{k}: {p['mean_diff']:+.4f} ({p['ci_low']:+.4f} to {p['ci_high']:+.4f}), {p['wins']}/{p['n_cases']}")


if __name__ == "__main__":
    main()
