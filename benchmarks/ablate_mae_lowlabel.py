#!/usr/bin/env python
"""Why MAE pretraining hurt at low label fractions on MSD Hippocampus: a few short arms at 10 % of the labels.

    python benchmarks/ablate_mae_lowlabel.py                      # 2 folds, ~45 min on 2 quiet CPU cores
    python benchmarks/ablate_mae_lowlabel.py --folds 1 --reduced  # 1 fold, 4 arms, 25 pretraining epochs

Setting: the ``cpu`` profile of ``real_data.py hippocampus`` (ViT 192-d x 6, 8^3 patches, 32x48x32 crops, UNETR
feature size 8), 5-fold CV split of imagesTr, 10 % of the fold's training labels (21 cases), Dice per case averaged
over anterior / posterior. The MAE is pretrained once per mask ratio on imagesTr + imagesTs (unlabelled, as in
SelfMedMAE and real_data.py); every fine-tuning arm of a fold sees the same cases, crops and seeds.

Arms (what the issue suspected: mask ratio, layer decay, fine-tuning length):

- ``scratch``: the fine-tuning recipe from random weights, no layer decay;
- ``mae75_ld0.75``: the old default (75 % masking, layer decay 0.75) -- what the hippocampus sweep used;
- ``mae75_ld0.9``: the same encoder with a milder layer decay;
- ``mae12.5_ld0.9``: SelfMedMAE's 12.5 % mask ratio for segmentation, layer decay 0.9;
- ``mae12.5_ld0.9_long``: the same, twice the fine-tuning steps (and ``scratch_long`` beside it).

Writes ``benchmarks/results/ablate_mae_lowlabel_<tag>.json`` (per fold and arm, the mean Dice and the training
time) and prints the table. Data: ``$MEDMAE_DATA/hippocampus_msd/Task04_Hippocampus`` (or ``--data-root``).
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

REPO = Path(__file__).resolve().parents[1]

MODEL = {"arch": "vit", "spatial_dims": 3, "img_size": [32, 48, 32], "patch_size": 8, "in_channels": 1, "size": None,
         "embed_dim": 192, "depth": 6, "num_heads": 3}


def data_cfg(path: Path) -> dict[str, Any]:
    return {"path": str(path), "intensity": {"name": "mri_zscore_nonzero"}, "orientation": "RAS",
            "flip_axes": [0, 1, 2], "flip_prob": 0.5}


def pretrain_cfg(path: Path, ratio: float, epochs: int) -> dict[str, Any]:
    return {"name": f"hippo-mae{ratio:g}", "data": data_cfg(path),
            "model": {**MODEL, "decoder": {"embed_dim": 128, "depth": 2, "num_heads": 4}},
            "mask": {"ratio": ratio}, "loss": {"norm_pix": True},
            "optim": {"lr": 3e-4, "warmup_epochs": 5, "clip_grad": 3.0},
            "train": {"epochs": epochs, "batch_size": 16, "checkpoint_every": 10**6, "figure_every": 10**6}}


def finetune_cfg(path: Path, fold: int, steps: int, layer_decay: float | None) -> dict[str, Any]:
    return {"task": "seg", "data": {**data_cfg(path), "foreground_prob": 0.5, "splits": ["train"], "label_fraction": 0.1},
            "model": MODEL, "head": {"feature_size": 8}, "loss": {"dice_weight": 1.0, "ce_weight": 1.0},
            "optim": {"lr": 1e-3, "layer_decay": layer_decay, "warmup_epochs": 1, "clip_grad": 3.0},
            "train": {"epochs": 10**6, "max_steps": steps, "batch_size": 4, "checkpoint_every": 10**6},
            "eval": {"folds": 5, "fold": fold, "bootstrap": 200, "sw_overlap": 0.5}}


ARMS = [  # (name, mask ratio of the encoder or None for scratch, layer decay, fine-tuning length factor)
    ("scratch", None, None, 1),
    ("mae75_ld0.75", 0.75, 0.75, 1),
    ("mae75_ld0.9", 0.75, 0.9, 1),
    ("mae12.5_ld0.9", 0.125, 0.9, 1),
    ("scratch_long", None, None, 2),
    ("mae12.5_ld0.9_long", 0.125, 0.9, 2),
]


def mean_dice(summary: dict[str, Any]) -> float:
    return next(float(r["value"]) for r in summary["rows"] if r["metric"] == "dice" and r["region"] == "mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--folds", type=int, default=2, help="folds 0..N-1 of the 5-fold split")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of a normal-length arm")
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--reduced", action="store_true", help="25 pretraining epochs, 150 fine-tuning steps, 4 arms")
    ap.add_argument("--arms", default=",".join(a[0] for a in ARMS))
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "ablate-mae-lowlabel")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    root = Path(args.data_root or os.environ.get("MEDMAE_DATA") or REPO.parent / "shared" / "data")
    path = root / "hippocampus_msd" / "Task04_Hippocampus"
    if not path.is_dir():
        sys.exit(f"{path} not found: give --data-root or set MEDMAE_DATA")
    if args.reduced:  # what fits a loaded 2-core machine: shorter runs, the four arms that answer the question
        args.pretrain_epochs, args.steps = 25, 150
        args.arms = "scratch,mae75_ld0.75,mae75_ld0.9,mae12.5_ld0.9"
    import medmae
    from medmae.tasks.evaluate import evaluate

    wanted = [a for a in ARMS if a[0] in args.arms.split(",")]
    t_start = time.time()
    encoders: dict[float, dict[str, Any]] = {}
    for ratio in sorted({a[1] for a in wanted if a[1] is not None}):
        t0 = time.time()
        run = medmae.pretrain(pretrain_cfg(path, ratio, args.pretrain_epochs), run_dir=args.work / f"mae{ratio:g}",
                              resume="auto")
        summ = json.loads((run / "summary.json").read_text())
        encoders[ratio] = {"run": run, "seconds": round(time.time() - t0, 1), "summary": summ}
    results: list[dict[str, Any]] = []
    for fold in range(args.folds):
        for name, ratio, ld, factor in wanted:
            init = "scratch" if ratio is None else str(encoders[ratio]["run"])
            cell = args.work / f"fold{fold}" / name
            t0 = time.time()
            if not (cell / "eval" / "test" / "summary.json").is_file():
                medmae.finetune(finetune_cfg(path, fold, args.steps * factor, ld), init=init, run_dir=cell, resume="auto")
                evaluate(cell)
            summary = json.loads((cell / "eval" / "test" / "summary.json").read_text())
            results.append({"fold": fold, "arm": name, "dice": mean_dice(summary), "seconds": round(time.time() - t0, 1)})
            print(f"fold {fold} {name:20s} Dice {results[-1]['dice']:.3f}", flush=True)
    table = {name: statistics.mean(r["dice"] for r in results if r["arm"] == name) for name, *_ in wanted}
    out = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "command": "python benchmarks/ablate_mae_lowlabel.py " + " ".join(sys.argv[1:]),
        "setting": {"label_fraction": 0.1, "folds": list(range(args.folds)), "finetune_steps": args.steps,
                    "pretrain_epochs": args.pretrain_epochs, "model": MODEL},
        "pretraining": {f"{k:g}": {"seconds": v["seconds"], "masked_loss": v["summary"].get("figure_cases_masked_loss"),
                                   "baseline": v["summary"].get("figure_cases_patch_mean_baseline")}
                        for k, v in encoders.items()},
        "mean_dice": table, "runs": results, "total_seconds": round(time.time() - t_start, 1),
        "machine": f"{os.cpu_count()} CPUs, loaded by other jobs unless stated",
    }
    dest = REPO / "benchmarks" / "results" / f"ablate_mae_lowlabel_{args.tag}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1).replace(str(root), "$MEDMAE_DATA").replace(str(args.work), "<work>"))
    for name, v in table.items():
        print(f"{name:20s} mean Dice {v:.3f}")


if __name__ == "__main__":
    main()
