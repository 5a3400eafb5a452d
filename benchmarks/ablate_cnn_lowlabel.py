#!/usr/bin/env python
"""How much does the planned ResEnc U-Net gain from MAE at 10 % of the labels on MSD Hippocampus, and does the
pretraining length decide it?

    python benchmarks/ablate_cnn_lowlabel.py                  # fold 0, seeds 0-1, MAE of 900 / 1800 steps, ~80 min
    python benchmarks/ablate_cnn_lowlabel.py --pretrain 900,900@0.5 --tag ratio   # mask ratio 0.75 vs 0.5

Setting: the plan ``real_data.py hippocampus`` uses (``medmae plan``, 8 minutes per run on 2 CPU cores: a ResEnc
U-Net, DiceCE + deep supervision, ``nnunet`` augmentation, AdamW), but every run has a fixed step count in place of
the time budget (``train.max_minutes=null``), so the arms differ only in their initialisation, and the result
does not depend on the machine's speed or load. One MAE per ``--pretrain STEPS[@MASK_RATIO]`` is pretrained with
the plan on imagesTr + imagesTs (unlabelled, as in ``real_data.py``); then a ``medmae sweep`` fine-tunes scratch
and every MAE for ``--finetune-steps`` steps on the same 10 % label subset per seed, and evaluates them on the
fold's 52 held-out cases (Dice averaged over anterior / posterior, differences paired over the cases).

Writes ``benchmarks/results/ablate_cnn_lowlabel_<tag>.json`` (the pretraining runs' masked loss vs their baseline,
the table, the paired differences) and the sweep's report and results as ``ablate_cnn_lowlabel_<tag>_*``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from real_data import data_root, portable, pretrain_summary, publish_sweep

REPO = Path(__file__).resolve().parents[1]
FIXED = ["train.max_minutes=null"]  # a step count, not a time budget: equal steps whatever the machine's load


def arm(spec: str, default_ratio: float) -> tuple[str, int, float]:
    """``"1800"`` or ``"900@0.5"`` -> (run name, steps, mask ratio)."""
    steps, _, ratio = spec.partition("@")
    r = float(ratio) if ratio else default_ratio
    return (f"mae{int(steps)}" + (f"_r{r:g}" if ratio else ""), int(steps), r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (default $MEDMAE_DATA or ../shared/data)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ablate-cnn-lowlabel")
    ap.add_argument("--plan", type=Path, default=None, help="an existing plan (default: plan the data, 8 min per run)")
    ap.add_argument("--pretrain", default="900,1800", help="comma-separated MAE arms STEPS[@MASK_RATIO]")
    ap.add_argument("--finetune-steps", type=int, default=733, help="steps of every fine-tuning run")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--fold", type=int, action="append", default=None, help="fold of the 5-fold split (default 0)")
    ap.add_argument("--seed", type=int, action="append", default=None, help="label subset and training seed (default 0, 1)")
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args()
    import medmae

    root = data_root(args.data_root)
    source = root / "hippocampus_msd" / "Task04_Hippocampus"
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    plan_path = args.plan or args.work / "plan.yaml"
    if not plan_path.is_file():
        medmae.plan(source, task="seg", budget=8, device="cpu", out=plan_path)
    plan = yaml.safe_load(plan_path.read_text())
    arms = [arm(s, float(plan["mask"]["ratio"])) for s in args.pretrain.split(",")]
    pretraining: dict[str, Any] = {}
    for name, steps, ratio in arms:
        t = time.time()
        run = medmae.pretrain(plan=plan_path, run_dir=args.work / name, resume="auto",
                              overrides=[*FIXED, f"train.max_steps={steps}", f"mask.ratio={ratio}"])
        pretraining[name] = {"steps": steps, "mask_ratio": ratio, "wall_s": round(time.time() - t, 1),
                             **pretrain_summary(run)}
        print(f"{name}: masked loss {pretraining[name]['masked_loss']} vs baseline "
              f"{pretraining[name]['patch_mean_baseline']}", flush=True)
    sweep_dir = medmae.sweep(task="seg", inits=["scratch", *(str(args.work / n) for n, _, _ in arms)],
                             run_dir=args.work / "sweep", plan=plan_path, fractions=[args.fraction],
                             seeds=args.seed or [0, 1], folds=5, only_folds=args.fold or [0],
                             overrides=[*FIXED, f"train.max_steps={args.finetune_steps}"])
    summary = json.loads((sweep_dir / "summary.json").read_text())
    head = summary["headline"]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/ablate_cnn_lowlabel.py " + " ".join(sys.argv[1:]),
        "setting": {"fraction": args.fraction, "folds": args.fold or [0], "seeds": args.seed or [0, 1],
                    "finetune_steps": args.finetune_steps, "network": plan["plan"]["decisions"]["network"]},
        "pretraining": pretraining, "headline": head,
        "table": [a for a in summary["aggregate"] if (a["metric"], a["where"]) == (head["metric"], head["where"])],
        "paired_over_cases": summary["paired_over_cases"], "paired_over_seeds": summary["paired"],
        "total_seconds": round(time.time() - t0, 1), "machine": f"{os.cpu_count()} CPUs",
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ablate_cnn_lowlabel_{args.tag}"
    (out / f"{stem}.json").write_text(portable(json.dumps(result, indent=1), root, args.work))
    publish_sweep(stem, sweep_dir, out, root, args.work)
    for p in summary["paired_over_cases"]:
        print(f"seed {p['seed']} {p['init']:>12s} - scratch {p['mean_diff']:+.4f} ({p['ci_low']:+.4f} to "
              f"{p['ci_high']:+.4f}), {p['wins']}/{p['n_cases']} cases")


if __name__ == "__main__":
    main()
