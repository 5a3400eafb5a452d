#!/usr/bin/env python
"""Real-data results: MAE self-pretraining vs scratch at several label fractions, through medmae's own API.

    python benchmarks/real_data.py hippocampus --profile cpu      # or gpu; --data-root or $MEDMAE_DATA
    python benchmarks/real_data.py chestxray --profile cpu
    python benchmarks/real_data.py drive --profile cpu

Each experiment (1) writes a manifest for the dataset where its layout needs one (subject ids, 0/255 masks),
(2) MAE-pretrains on the unlabelled images it is allowed to see (never a held-out test split; in the
hippocampus cross-validation, as in SelfMedMAE, the images of every fold, which each evaluation's leakage
check records), (3) runs ``medmae sweep`` (scratch vs MAE, label fractions, seeds / folds) and (4) writes
``benchmarks/results/<experiment>_<profile>.json`` with the exact configs, the headline table and the paired
comparison, plus the sweep's ``report.md``, ``results.csv`` and figures. Work directories go to ``--work``
(default ``runs/real-data``).
The ``cpu`` profile is sized for 2 CPU cores (small models and images, about an hour or two each); ``gpu``
uses larger models and more epochs.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def data_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("MEDMAE_DATA") or REPO.parent / "shared" / "data").resolve()
    if not root.is_dir():
        sys.exit(f"data root {root} not found: give --data-root or set MEDMAE_DATA")
    return root


# ------------------------------------------------------------------------------------------- experiments


def hippocampus(root: Path, work: Path, profile: str) -> dict[str, Any]:
    """MSD Task04 Hippocampus: 3D segmentation (anterior, posterior), 5-fold CV on imagesTr."""
    data = root / "hippocampus_msd" / "Task04_Hippocampus"
    big = profile == "gpu"
    model = {"arch": "vit", "spatial_dims": 3, "img_size": [32, 48, 32], "patch_size": 8, "in_channels": 1,
             "size": None, "embed_dim": 384 if big else 192, "depth": 12 if big else 6, "num_heads": 6 if big else 3,
             "decoder": {"embed_dim": 256 if big else 128, "depth": 4 if big else 2, "num_heads": 8 if big else 4}}
    data_cfg = {"path": str(data), "intensity": {"name": "mri_zscore_nonzero"}, "orientation": "RAS",
                "flip_axes": [0, 1, 2], "flip_prob": 0.5, "num_workers": 4 if big else 0}
    pretrain = {"name": "hippocampus-mae", "data": data_cfg, "model": model, "mask": {"ratio": 0.75},
                "loss": {"norm_pix": True},
                "optim": {"lr": 1.5e-4 if big else 3e-4, "warmup_epochs": 10, "clip_grad": 3.0},
                "train": {"epochs": 200 if big else 100, "batch_size": 64 if big else 16, "checkpoint_every": 500,
                          "figure_every": 50, "precision": "bf16" if big else "fp32"}}
    finetune = {"task": "seg", "data": {**data_cfg, "foreground_prob": 0.5, "splits": ["train"]},
                "model": {k: v for k, v in model.items() if k != "decoder"},
                # UNETR's full-resolution 3D convolutions dominate a CPU step (8.5 s at batch 16, feature size 16
                # on 2 cores), so the cpu profile halves the decoder width and trains ~200 steps of batch 4.
                "head": {"feature_size": 16 if big else 8}, "loss": {"dice_weight": 1.0, "ce_weight": 1.0},
                "optim": {"lr": 1e-3, "layer_decay": 0.75, "warmup_epochs": 5 if big else 1, "clip_grad": 3.0},
                "train": {"epochs": 25 if big else 6, "min_steps": 250 if big else 200, "batch_size": 16 if big else 4,
                          "checkpoint_every": 10**6, "precision": "bf16" if big else "fp32"},
                "eval": {"sw_overlap": 0.5, "bootstrap": 1000}}
    sweep = {"fractions": [0.1, 0.25, 1.0], "seeds": 1, "folds": 5}
    return {"pretrain": pretrain, "finetune": finetune, "sweep": sweep,
            "reference": "nnU-Net 0.90 / 0.89 Dice (anterior / posterior) on the MSD test set; 3D-UCaps 4-fold CV on "
                         "imagesTr 0.857 / 0.838"}


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


def chestxray(root: Path, work: Path, profile: str) -> dict[str, Any]:
    """Kermany pneumonia chest X-rays (224 px): normal vs pneumonia on the official 624-image test split."""
    manifest = chestxray_manifest(root, work / "chestxray")
    big = profile == "gpu"
    size = 224 if big else 112
    model = {"arch": "vit", "spatial_dims": 2, "img_size": [size, size], "patch_size": 16, "in_channels": 1,
             "size": "vit-s" if big else None, "embed_dim": None if big else 192, "depth": None if big else 6,
             "num_heads": None if big else 3,
             "decoder": {"embed_dim": 256 if big else 128, "depth": 4 if big else 2, "num_heads": 8 if big else 4}}
    data_cfg = {"path": str(manifest), "intensity": {"name": "xray_histeq"}, "resize": [size, size],
                "flip_axes": [], "num_workers": 8 if big else 1}
    pretrain = {"name": "chestxray-mae", "data": {**data_cfg, "crop_scale": [0.5, 1.0], "splits": ["train"]},
                "model": model, "mask": {"ratio": 0.75}, "loss": {"norm_pix": True},
                "optim": {"base_lr": 1.5e-4, "warmup_epochs": 5, "clip_grad": 3.0},
                "train": {"epochs": 40 if big else 8, "batch_size": 256 if big else 64, "checkpoint_every": 500,
                          "figure_every": 10, "precision": "bf16"}}
    finetune = {"task": "cls", "data": {**data_cfg, "crop_scale": [0.8, 1.0]},
                "model": {k: v for k, v in model.items() if k != "decoder"}, "head": {"pool": "mean"},
                "optim": {"lr": 5e-4, "layer_decay": 0.75, "warmup_epochs": 2, "clip_grad": 3.0},
                "train": {"epochs": 10 if big else 4, "min_steps": 200 if big else 150, "batch_size": 64,
                          "checkpoint_every": 10**6, "precision": "bf16"},
                "eval": {"bootstrap": 1000}}
    sweep = {"fractions": [0.05, 0.1, 0.25, 1.0], "seeds": 1, "folds": None}
    return {"pretrain": pretrain, "finetune": finetune, "sweep": sweep,
            "reference": "on this 624-image test set: Kermany et al. AUC 0.968 / acc 92.8 % (Inception-v3, ImageNet); "
                         "MedMNIST+ DINO ViT-B/16 linear probe AUC 0.989"}


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


def drive(root: Path, work: Path, profile: str) -> dict[str, Any]:
    """DRIVE retinal vessel segmentation (RGB fundus), MAE on the 20 training images, Dice on the 20 test images."""
    manifest = drive_manifest(root, work / "drive")
    big = profile == "gpu"
    model = {"arch": "vit", "spatial_dims": 2, "img_size": [128, 128] if not big else [256, 256], "patch_size": 16,
             "in_channels": 3, "size": None, "embed_dim": 384 if big else 192, "depth": 12 if big else 6,
             "num_heads": 6 if big else 3,
             "decoder": {"embed_dim": 256 if big else 128, "depth": 4 if big else 2, "num_heads": 8 if big else 4}}
    data_cfg = {"path": str(manifest), "intensity": {"name": "minmax", "percentiles": [0.5, 99.5]},
                "resize": [512, 512] if big else [288, 288], "flip_axes": [0, 1], "label_map": {255: 1}}
    pretrain = {"name": "drive-mae", "data": {**data_cfg, "splits": ["train"]}, "model": model, "mask": {"ratio": 0.75},
                "loss": {"norm_pix": True}, "optim": {"lr": 1e-3, "warmup_epochs": 20, "clip_grad": 3.0},
                "train": {"epochs": 1500 if big else 300, "batch_size": 16 if big else 8, "checkpoint_every": 1000,
                          "figure_every": 100, "precision": "bf16" if big else "fp32"}}
    finetune = {"task": "seg", "data": {**data_cfg, "foreground_prob": 0.5},
                "model": {k: v for k, v in model.items() if k != "decoder"}, "head": {"feature_size": 16},
                "loss": {"dice_weight": 0.4, "ce_weight": 0.6},
                "optim": {"lr": 1e-3, "layer_decay": 0.75, "warmup_epochs": 10, "clip_grad": 3.0},
                "train": {"epochs": 300 if big else 100, "min_steps": 1000 if big else 300, "batch_size": 8 if big else 4,
                          "checkpoint_every": 10**6, "precision": "bf16" if big else "fp32"},
                "eval": {"sw_overlap": 0.5, "bootstrap": 1000}}
    sweep = {"fractions": [0.25, 0.5, 1.0], "seeds": 2 if big else 1, "folds": None}
    return {"pretrain": pretrain, "finetune": finetune, "sweep": sweep,
            "reference": "DRIVE test Dice/F1 of dedicated vessel models is about 0.80-0.83 at full resolution"}


EXPERIMENTS = {"hippocampus": hippocampus, "chestxray": chestxray, "drive": drive}


# ------------------------------------------------------------------------------------------------- runner


def run(name: str, profile: str, root: Path, work: Path, max_steps: int | None) -> dict[str, Any]:
    import medmae
    from medmae.report import aggregate, headline_key, paired_comparison, read_results

    work.mkdir(parents=True, exist_ok=True)
    spec = EXPERIMENTS[name](root, work, profile)
    t0 = time.time()
    pre_dir = work / f"{name}-{profile}" / "pretrain"
    medmae.pretrain(spec["pretrain"], run_dir=pre_dir, max_steps=max_steps, resume="auto")
    t_pre = time.time() - t0
    ft_yaml = work / f"{name}-{profile}" / "finetune.yaml"
    ft_yaml.write_text(json.dumps(spec["finetune"]))  # JSON is YAML
    sw = spec["sweep"]
    sweep_dir = medmae.sweep(task=spec["finetune"]["task"], inits=["scratch", str(pre_dir)],
                             run_dir=work / f"{name}-{profile}" / "sweep", config=ft_yaml, fractions=sw["fractions"],
                             seeds=sw["seeds"], folds=sw["folds"], max_steps=max_steps)
    rows = read_results(sweep_dir / "results.csv")
    metric, where = headline_key(rows, spec["finetune"]["task"])
    agg = [a for a in aggregate(rows) if a["metric"] in (metric, "dice", "auroc", "auprc", "accuracy", "hd95_mm", "hd95_px")]
    result = {
        "experiment": name, "profile": profile, "when": time.strftime("%Y-%m-%d %H:%M"),
        "command": f"python benchmarks/real_data.py {name} --profile {profile}" + (f" --max-steps {max_steps}" if max_steps else ""),
        "headline": {"metric": metric, "where": where}, "aggregate": agg,
        "paired_vs_scratch": paired_comparison(rows, metric, where),
        "pretrain_seconds": round(t_pre, 1), "pretrain_logged_seconds": logged_seconds(pre_dir),
        "total_seconds": round(time.time() - t0, 1),
        "reference": spec["reference"], "configs": {k: spec[k] for k in ("pretrain", "finetune", "sweep")},
        "device": _device(),
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_{profile}.json").write_text(portable(json.dumps(result, indent=1), root, work))
    publish_sweep(f"{name}_{profile}", sweep_dir, out, root, work)
    return result


def logged_seconds(run_dir: Path) -> float:
    """Training time from a run's own log (first to last step), which a resumed invocation does not see."""
    times = [json.loads(line)["time_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return round(times[-1] - times[0], 1) if times else 0.0


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
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run (smoke test)")
    args = ap.parse_args()
    result = run(args.experiment, args.profile, data_root(args.data_root), args.work, args.max_steps)
    print(json.dumps({k: result[k] for k in ("experiment", "profile", "headline", "paired_vs_scratch", "total_seconds")}, indent=1))


if __name__ == "__main__":
    main()
