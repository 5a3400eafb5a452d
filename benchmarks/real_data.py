#!/usr/bin/env python
"""Real-data results: the planned model from scratch, with MAE pretraining, and a standard MONAI network, same run.

    python benchmarks/real_data.py hippocampus --profile cpu      # or gpu; --data-root or $MEDMAE_DATA
    python benchmarks/real_data.py chestxray --profile cpu
    python benchmarks/real_data.py drive --profile cpu
    python benchmarks/real_data.py hippocampus --fold 0           # one fold of the 5 now (a later call continues)
    python benchmarks/real_data.py chestxray --fractions 0.05 --seed 0 --seed 1   # a second seed beside the first

Each experiment (1) writes a manifest where the dataset's layout needs one (subject ids, 0/255 masks), (2) runs
``medmae plan`` on it (``--budget`` minutes per training run, for the profile's device), (3) MAE-pretrains with
the plan on the images it may see (never a labelled test split; in the hippocampus cross-validation, as in
SelfMedMAE, the images of every fold, which each evaluation's leakage check records), (4) runs ``medmae sweep``
with the plan and three arms: the planned network from scratch, from the MAE, and the MONAI baseline
(``--init baseline:NAME``), all with the same data, split, augmentation and time budget, and (5) writes
``benchmarks/results/<experiment>_<profile>_plan.json`` (the plan, the headline table, the paired comparisons
with scratch and with the baseline, the time used) plus the sweep's ``report.md``, ``results.csv`` and figures.
Work directories go to ``--work`` (default ``runs/real-data``); a later call with the same ``--work`` reuses its
``plan.yaml`` and MAE (so ``--fold 1`` continues under fold 0's plan; delete the folder to start over).
``--no-baseline`` or ``--no-mae`` leaves that arm out (``--no-mae`` skips the pretraining too). Results of the
earlier ViT-only recipe are the files without ``_plan``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("MEDMAE_DATA") or REPO.parent / "shared" / "data").resolve()
    if not root.is_dir():
        sys.exit(f"data root {root} not found: give --data-root or set MEDMAE_DATA")
    return root


# ------------------------------------------------------------------------------------------- experiments


def chestxray_manifest(root: Path, out: Path) -> Path:
    """Manifest of the pneumonia dataset with patient ids parsed from the file names (personN_..., IM-N-...)."""
    base = root / "chestxray_pneumonia_224" / "dataset"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            for f in sorted((base / split / label).glob("*.jpeg")):
                m = re.match(r"(person\d+|IM-\d+|NORMAL2-IM-\d+)", f.name)
                rows.append({"path": str(f), "label": label, "subject_id": f"{split}-{m.group(1) if m else f.stem}",
                             "split": split, "case_id": f"{split}-{label}-{f.stem}"})
    path = out / "chestxray_manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["case_id", "path", "label", "subject_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def drive_manifest(root: Path, out: Path) -> Path:
    """DRIVE: train (20) and test (20) images with their first manual annotation (0/255 GIF masks)."""
    base = root / "retina_vessels" / "DRIVE" / "datasets"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, folder, suffix in (("train", "training", "training"), ("test", "testing", "test")):
        for img in sorted((base / folder / "images").glob(f"*_{suffix}.tif")):
            num = img.name.split("_")[0]
            rows.append({"case_id": f"drive{num}", "path": str(img), "mask": str(base / folder / "1st_manual" / f"{num}_manual1.gif"),
                         "subject_id": f"drive{num}", "split": split})
    path = out / "drive_manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["case_id", "path", "mask", "subject_id", "split"])
        w.writeheader()
        w.writerows(rows)
    (out / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "vessel"}}))
    return path


@dataclass(frozen=True)
class Experiment:
    """One dataset: where its labelled source is, the task, the MONAI baseline, the grid and the targets."""

    source: Callable[[Path, Path], Path]
    task: str
    baseline: str
    fractions: tuple[float, ...]
    folds: int | None
    budget_minutes: float
    target: str
    reference: str


EXPERIMENTS = {
    "hippocampus": Experiment(
        lambda root, work: root / "hippocampus_msd" / "Task04_Hippocampus", "seg", "dynunet", (0.1, 1.0), 5, 8,
        "mean Dice >= 0.85 at 100 % labels with <= 8 min per fold, >= the MONAI arm; MAE - scratch >= +0.02 at 10 %",
        "nnU-Net 0.90 / 0.89 Dice (anterior / posterior) on the MSD test set; 3D-UCaps 4-fold CV 0.857 / 0.838"),
    "chestxray": Experiment(
        chestxray_manifest, "cls", "densenet121", (0.05, 0.1, 0.25, 1.0), None, 20,
        "ROC-AUC >= 0.95 at 100 % labels (<= 20 min); MAE > scratch at 5 / 10 / 25 %",
        "on this 624-image test set: Kermany et al. AUC 0.968 (Inception-v3, ImageNet); ResNet-50 at 224 px 0.962"),
    "drive": Experiment(
        drive_manifest, "seg", "basicunet", (0.25, 1.0), None, 20,
        "Dice >= 0.78 on the 20 test images (<= 20 min); MAE >= scratch",
        "DRIVE test Dice / F1 of dedicated vessel models is about 0.80-0.83 at full resolution"),
}


# ------------------------------------------------------------------------------------------------- runner


def run(name: str, profile: str, root: Path, work: Path, *, budget: float | None, folds: list[int] | None,
        fractions: list[float] | None, max_steps: int | None, tag: str = "", seeds: list[int] | None = None,
        pretrain_budget: float | None = None, baseline: bool = True, mae: bool = True) -> dict[str, Any]:
    import medmae
    from medmae.report import read_results

    exp = EXPERIMENTS[name]
    base = work / f"{name}-{profile}-plan"
    base.mkdir(parents=True, exist_ok=True)
    source = exp.source(root, base)
    minutes = budget or exp.budget_minutes
    t0 = time.time()
    plan_path = base / "plan.yaml"
    if plan_path.is_file():  # a later call (another --fold) continues under the same plan; delete it to re-plan
        plan = yaml.safe_load(plan_path.read_text())
        if plan["plan"]["budget_minutes"] != minutes:
            sys.exit(f"{plan_path} was planned for {plan['plan']['budget_minutes']:g} min per run, not {minutes:g}: "
                     "delete it (and the runs made with it) to re-plan")
        if pretrain_budget is not None and plan["train"]["max_minutes"] != pretrain_budget:
            sys.exit(f"{plan_path} was planned with a {plan['train']['max_minutes']:g}-min MAE, not {pretrain_budget:g}: "
                     "delete it (and the runs made with it) to re-plan")
    else:
        plan_path, plan = medmae.plan(source, task=exp.task, budget=minutes, pretrain_budget=pretrain_budget,
                                      device="cuda" if profile == "gpu" else "cpu", out=plan_path)
    t_plan = time.time() - t0
    pre_dir = base / "pretrain"
    if mae:
        medmae.pretrain(plan=plan_path, run_dir=pre_dir, max_steps=max_steps, resume="auto")
    t_pre = time.time() - t0 - t_plan
    inits = ["scratch"] + ([str(pre_dir)] if mae else []) + ([f"baseline:{exp.baseline}"] if baseline else [])
    sweep_dir = medmae.sweep(task=exp.task, inits=inits,
                             run_dir=base / "sweep", plan=plan_path, fractions=fractions or list(exp.fractions),
                             seeds=seeds or [0], folds=exp.folds, only_folds=folds, max_steps=max_steps)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    head = summary["headline"]
    rows = read_results(sweep_dir / "results.csv")
    result = {
        "experiment": name, "profile": profile, "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"python benchmarks/real_data.py {name} --profile {profile} --budget {minutes:g}"
                   + (f" --pretrain-budget {pretrain_budget:g}" if pretrain_budget is not None else "")
                   + ("" if baseline else " --no-baseline") + ("" if mae else " --no-mae")
                   + "".join(f" --fold {k}" for k in folds or []) + (f" --max-steps {max_steps}" if max_steps else "")
                   + (f" --fractions {','.join(f'{f:g}' for f in fractions)}" if fractions else "")
                   + "".join(f" --seed {s}" for s in seeds or []) + (f" --tag {tag}" if tag else ""),
        "target": exp.target, "reference": exp.reference, "budget_minutes_per_run": minutes,
        "folds_run": sorted({r["fold"] for r in rows if r.get("fold") not in (None, "")}) if exp.folds else None,
        "plan_seconds": round(t_plan, 1), "plan": plan["plan"]["decisions"] if "plan" in plan else plan,
        "pretrain": {"wall_s": round(t_pre, 1), **pretrain_summary(pre_dir)} if mae else None,
        "headline": head, "table": [a for a in summary["aggregate"] if (a["metric"], a["where"]) == (head["metric"], head["where"])],
        "paired_vs_scratch": summary["paired"], "paired_vs_baseline": summary["paired_baseline"],
        "paired_over_cases": summary["paired_over_cases"] or None,
        "training_minutes": training_minutes(sweep_dir), "total_seconds": round(time.time() - t0, 1),
        "device": _device(), "load_average_at_end": os.getloadavg()[0],
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{profile}_plan{tag}"
    (out / f"{stem}.json").write_text(portable(json.dumps(result, indent=1), root, work))
    (out / f"{stem}.yaml").write_text(portable(plan_path.read_text(), root, work))
    publish_sweep(stem, sweep_dir, out, root, work)
    return result


def pretrain_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, minutes and whether the MAE beat its baseline, from the run's ``summary.json``."""
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: s.get(k) for k in ("training", "learned", "masked_loss", "patch_mean_baseline")}


def training_minutes(sweep_dir: Path) -> dict[str, float]:
    """Training-loop minutes of every finished cell (``task.json`` ``training``), to check the budget was kept."""
    from medmae.report.budgets import cell_training  # medmae is imported when a run starts, as in run()

    records = {cell.name: cell_training(cell) for cell in sorted(sweep_dir.glob("cells/*"))}
    return {name: round(float(t["train_minutes"]), 2) for name, t in records.items()
            if t.get("train_minutes") is not None}


def publish_sweep(stem: str, sweep_dir: Path, out: Path, root: Path, work: Path) -> None:
    """The sweep's results.csv, report.md and figures, renamed ``<stem>_*`` under ``out``."""
    (out / f"{stem}_results.csv").write_text(portable((sweep_dir / "results.csv").read_text(), root, work))
    report = portable((sweep_dir / "report.md").read_text(), root, work)
    (out / "figures").mkdir(exist_ok=True)
    for png in sorted((sweep_dir / "report_files").glob("*.png")):
        shutil.copyfile(png, out / "figures" / f"{stem}_{png.name}")
        report = report.replace(f"report_files/{png.name}", f"figures/{stem}_{png.name}")
    (out / f"{stem}_report.md").write_text(report)


def portable(text: str, root: Path, work: Path) -> str:
    """Machine paths replaced by ``$MEDMAE_DATA`` and ``<work>``, so results read the same everywhere."""
    return text.replace(str(work.resolve()), "<work>").replace(str(work), "<work>").replace(str(root), "$MEDMAE_DATA")


def _device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (default $MEDMAE_DATA or ../shared/data)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "real-data")
    ap.add_argument("--budget", type=float, default=None, help="minutes per training run (default: the experiment's)")
    ap.add_argument("--pretrain-budget", type=float, default=None,
                    help="minutes of the MAE pretraining (default: the plan's, twice --budget)")
    ap.add_argument("--no-baseline", action="store_true", help="leave out the MONAI baseline arm (scratch and MAE only)")
    ap.add_argument("--no-mae", action="store_true",
                    help="no MAE pretraining and no MAE arm (scratch and the baseline only: the supervised comparison)")
    ap.add_argument("--fold", type=int, action="append", default=None, help="run only this fold now (repeatable)")
    ap.add_argument("--fractions", default=None, help="comma-separated label fractions (default: the experiment's)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke test)")
    ap.add_argument("--seed", type=int, action="append", default=None,
                    help="training seeds of the sweep's cells (repeatable; default 0; a seed's cells also draw their own "
                         "label subset)")
    ap.add_argument("--tag", default="", help="suffix of the result files' names (keeps an earlier result beside)")
    args = ap.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else None
    result = run(args.experiment, args.profile, data_root(args.data_root), args.work, budget=args.budget,
                 folds=args.fold, fractions=fractions, max_steps=args.max_steps, tag=args.tag, seeds=args.seed,
                 pretrain_budget=args.pretrain_budget, baseline=not args.no_baseline, mae=not args.no_mae)
    print(json.dumps({k: result[k] for k in ("experiment", "headline", "table", "paired_vs_scratch",
                                             "paired_vs_baseline", "total_seconds")}, indent=1))


if __name__ == "__main__":
    main()
