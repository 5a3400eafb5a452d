#!/usr/bin/env python
"""How much of its time budget a run uses: the calibration's step count vs the count re-checked on the loop.

    python benchmarks/budget_fidelity.py                           # hippocampus and drive, 4 min each, ~12 min
    python benchmarks/budget_fidelity.py --experiment chestxray --minutes 6

For each experiment of ``real_data.py``: ``medmae plan`` for ``--minutes`` per run, then one fine-tuning run from
scratch with that plan (its time budget). A budgeted run fixes its step count from a calibration of a few steps,
then re-fixes it once from the loop's own step time (``medmae.engine.budget``). From the run's ``metrics.jsonl``
this prints, per run: the calibration's step time and step count, the loop's (re-checked) ones, the median and
mean step time over the whole run, the training minutes used, and the minutes the calibration's count would have
taken at the run's own minutes per step: the share of the budget used with and without the re-check. Writes
``benchmarks/results/budget_fidelity_<tag>.json``; a later call with the same ``--work`` reads the finished runs
again. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from real_data import EXPERIMENTS, data_root, portable

REPO = Path(__file__).resolve().parents[1]


def loop_seconds(rows: list[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive training rows of ``metrics.jsonl`` (one optimizer step each)."""
    t = [r["time_s"] for r in rows if "time_s" in r and r.get("kind") is None]
    return [b - a for a, b in zip(t, t[1:])]


def measure(name: str, root: Path, work: Path, minutes: float) -> dict[str, Any]:
    import medmae

    exp = EXPERIMENTS[name]
    base = work / name
    base.mkdir(parents=True, exist_ok=True)
    plan_path = base / "plan.yaml"  # a later call with the same --work reads the finished runs again
    if not plan_path.is_file():
        medmae.plan(exp.source(root, base), task=exp.task, budget=minutes, device="cpu", out=plan_path)
    run = base / "scratch"
    medmae.finetune(plan=plan_path, task=exp.task, init="scratch", run_dir=run, resume="auto")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    budgets = [r for r in rows if r.get("kind") == "budget"]
    first, last = budgets[0], budgets[-1]
    training = json.loads((run / "task.json").read_text())["training"]
    seconds = loop_seconds(rows)
    used = training["train_minutes"] / minutes
    return {
        "budget_minutes": minutes, "calibrated_step_s": first["step_s"], "calibrated_steps": first["total_steps"],
        "loop_step_s": last["step_s"] if last is not first else None, "steps": training["steps"],
        "checked_at": last.get("checked_at"), "median_step_s": round(statistics.median(seconds), 4),
        "mean_step_s": round(statistics.mean(seconds), 4), "train_minutes": training["train_minutes"],
        "share_used": round(used, 3),  # the calibration's count at the run's own minutes per step:
        "share_calibrated_count_would_use": round(used * first["total_steps"] / training["steps"], 3),
        "cpu_pressure": first.get("cpu_pressure"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", action="append", choices=sorted(EXPERIMENTS), default=None)
    ap.add_argument("--minutes", type=float, default=4.0, help="budget per run")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "budget-fidelity")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    root = data_root(args.data_root)
    t0 = time.time()
    runs = {name: measure(name, root, args.work, args.minutes) for name in args.experiment or ["hippocampus", "drive"]}
    out = {"when": time.strftime("%Y-%m-%d %H:%M"),
           "command": "python benchmarks/budget_fidelity.py " + " ".join(sys.argv[1:]),
           "runs": runs, "total_seconds": round(time.time() - t0, 1), "machine": f"{os.cpu_count()} CPUs"}
    dest = REPO / "benchmarks" / "results" / f"budget_fidelity_{args.tag}.json"
    dest.write_text(portable(json.dumps(out, indent=1), root, args.work))
    for name, r in runs.items():
        print(f"{name}: calibration {r['calibrated_step_s']:.3f} s/step -> {r['calibrated_steps']} steps; loop "
              f"{r['loop_step_s'] or float('nan'):.3f} s/step -> {r['steps']} steps; used {r['share_used']:.0%} of "
              f"the budget (the calibration's count: {r['share_calibrated_count_would_use']:.0%})")


if __name__ == "__main__":
    main()
