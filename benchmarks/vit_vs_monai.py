#!/usr/bin/env python
"""medmae's ViT classifier and UNETR against MONAI's ``ViT`` / ``UNETR`` of the same size, in one run.

    python benchmarks/vit_vs_monai.py --task cls --steps 300            # built-in synthetic chest X-rays
    python benchmarks/vit_vs_monai.py --task seg --steps 300
    python benchmarks/vit_vs_monai.py --task cls --data MANIFEST.csv --size 224 --steps 3000   # real data
    python benchmarks/vit_vs_monai.py --task cls --data MANIFEST.csv --size 224 --steps 3000 --arms monai-linear  # add an arm
    python benchmarks/vit_vs_monai.py --task seg --data drive_manifest.csv --size 128 --set model.in_channels=3 \
        --set "data.label_map={255: 1}"                                  # RGB images, 0/255 masks

Both arms go through the same ``medmae finetune`` (same data, split, crops, augmentation, loss, optimizer,
schedule and step budget) and the same ``medmae evaluate`` (same metrics and CIs); only the network differs.
The MONAI network is put in place of medmae's task model for its arm (``build_task_model`` is swapped in this
script only: ``--init baseline:NAME`` offers MONAI's CNNs, not its ViT / UNETR). Both arms start from scratch and
neither uses layer-wise lr decay. The difference medmae - MONAI is paired over the test cases (both arms predicted
the same images; :func:`medmae.report.cases.paired_difference`). Sizes are ViT-T (192 wide, 12 blocks, 3 heads)
with 16 px patches, which is the size and patch MONAI's UNETR fixes. Writes
``benchmarks/results/vit_vs_monai_<task>_<tag>.json`` and prints each arm's headline figure and the paired
differences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from medmae.config.loading import apply_overrides
from medmae.report.cases import paired_difference

REPO = Path(__file__).resolve().parents[1]
EMBED, DEPTH, HEADS = 192, 12, 3


class MonaiClassifier(nn.Module):
    """MONAI ``ViT(classification=True)`` returning logits only (it returns (logits, hidden states)). MONAI's default
    head ends in ``Tanh``, which bounds the logits to [-1, 1]; ``linear=True`` drops it (``post_activation=None``)."""

    def __init__(self, cfg, num_outputs: int, linear: bool = False):
        super().__init__()
        from monai.networks.nets import ViT

        m = cfg.model
        self.net = ViT(m.in_channels, m.img_size, m.patch, hidden_size=EMBED, mlp_dim=4 * EMBED, num_layers=DEPTH,
                       num_heads=HEADS, classification=True, num_classes=num_outputs, spatial_dims=m.spatial_dims,
                       post_activation=None if linear else "Tanh")
        self.encoder = SimpleNamespace(depth=DEPTH)  # what medmae's param-group code asks for (no layer decay used)

    def forward(self, x):
        return self.net(x)[0]


class MonaiUNETR(nn.Module):
    def __init__(self, cfg, num_outputs: int):
        super().__init__()
        from monai.networks.nets import UNETR

        m = cfg.model
        self.net = UNETR(m.in_channels, num_outputs, m.img_size, feature_size=cfg.head.feature_size, hidden_size=EMBED,
                         mlp_dim=4 * EMBED, num_heads=HEADS, spatial_dims=m.spatial_dims)
        self.encoder = SimpleNamespace(depth=DEPTH)

    def forward(self, x):
        return self.net(x)


ARMS = ("medmae", "monai", "monai-linear")  # monai-linear: MONAI's ViT classifier without its Tanh head (cls only)


def settings(task: str, size: int, data: str | None, steps: int, batch: int) -> dict[str, Any]:
    """The shared fine-tuning config: medmae's ViT recipe (see docs/howto/recipes.md) at ViT-T / 16 px."""
    cfg: dict[str, Any] = {
        "task": task,
        "model": {"arch": "vit", "spatial_dims": 2, "img_size": [size, size], "patch_size": 16, "size": "vit-t",
                  "in_channels": 1, "drop_path": 0.1},
        "data": {"intensity": {"name": "minmax"}, "flip_axes": [1], "augment": {"preset": "light"}},
        "optim": {"lr": 5e-4, "layer_decay": None, "warmup_epochs": 5, "weight_decay": 0.05, "clip_grad": 3.0},
        "train": {"epochs": 10**6, "max_steps": steps, "batch_size": batch, "checkpoint_every": 10**6, "log_every": 50},
        "eval": {"bootstrap": 200, "test_fraction": 0.3},
    }
    if data:
        cfg["data"]["path"] = data
    else:
        cfg["data"]["synthetic"] = {"kind": "cxr", "n": 200, "size": [size, size], "seed": 0}
    if task == "cls":
        cfg["data"]["crop_scale"] = [0.35, 1.0]
        cfg["head"] = {"pool": "cls"}
        cfg["loss"] = {"label_smoothing": 0.1}
    else:
        cfg["head"] = {"feature_size": 16}
        cfg["data"]["foreground_prob"] = 0.33
    return cfg


def portable(text: str, data: str | None) -> str:
    """The folder of ``--data`` written as ``<data>``, so a result reads the same on every machine."""
    if not data:
        return text
    for folder in {str(Path(data).resolve().parent), str(Path(data).parent)} - {"."}:
        text = text.replace(folder, "<data>")
    return text


def headline(summary: dict[str, Any]) -> tuple[str, float, str | None]:
    """The headline metric, its value and its class (a binary task's ``auroc``) or None."""
    rows = summary["rows"]
    for metric, region in (("macro_auroc", None), ("auroc", None), ("dice", "mean")):
        for r in rows:
            if r["metric"] == metric and (region is None or r.get("region") == region):
                return metric, float(r["value"]), r.get("class")
    return rows[0]["metric"], float(rows[0]["value"]), None


def run_arm(arm: str, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    import medmae.tasks.finetune as ft
    import medmae.tasks.inference as inf
    from medmae.tasks.evaluate import evaluate

    saved = (ft.build_task_model, inf.build_task_model)

    def monai(cfg, num_outputs, init):
        if cfg.task == "cls":
            return MonaiClassifier(cfg, num_outputs, linear=arm == "monai-linear"), None
        return MonaiUNETR(cfg, num_outputs), None

    builder = saved[0] if arm == "medmae" else monai
    params: list[int] = []

    def counted(cfg, num_outputs, init):
        model, report = builder(cfg, num_outputs, init)
        params.append(sum(p.numel() for p in model.parameters()))
        return model, report

    ft.build_task_model, inf.build_task_model = counted, (saved[1] if arm == "medmae" else monai)
    try:
        t0 = time.time()
        run = ft.finetune(cfg, run_dir=work / arm)
        train_s = time.time() - t0
        summary = evaluate(run)
    finally:
        ft.build_task_model, inf.build_task_model = saved
    metric, value, where = headline(summary)
    return {"arm": arm, "metric": metric, "where": where, "value": value, "train_seconds": round(train_s, 1),
            "params": params[0], "steps": cfg["train"]["max_steps"],
            "rows": [r for r in summary["rows"] if r["metric"] == metric]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["cls", "seg"], default="cls")
    ap.add_argument("--data", default=None, help="a labelled dataset (default: built-in synthetic chest X-rays)")
    ap.add_argument("--size", type=int, default=64, help="image side (a multiple of 16)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "vit-vs-monai")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--arms", default="medmae,monai",
                    help=f"comma-separated, of {', '.join(ARMS)}; a later call with the same --work and --tag adds its "
                         "arms to the result (the same settings are checked) and keeps the others")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for both arms (YAML value), e.g. model.in_channels=3; repeatable")
    args = ap.parse_args()
    arms_now = args.arms.split(",")
    if not set(arms_now) <= set(ARMS) or (args.task == "seg" and "monai-linear" in arms_now):
        ap.error(f"--arms {args.arms}: choose from {', '.join(ARMS)} (monai-linear is a classifier)")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = apply_overrides(settings(args.task, args.size, args.data, args.steps, args.batch), args.set)
    work = args.work / f"{args.task}-{args.tag}"
    out = REPO / "benchmarks" / "results" / f"vit_vs_monai_{args.task}_{args.tag}.json"
    earlier = json.loads(out.read_text()) if out.is_file() and (work / "medmae").is_dir() else {}
    if earlier and earlier["config"] != json.loads(portable(json.dumps(cfg), args.data)):
        ap.error(f"{out} was made with other settings: give another --tag")
    for arm in arms_now:
        shutil.rmtree(work / arm, ignore_errors=True)
    arms = {a["arm"]: a for a in earlier.get("arms", [])} | {arm: run_arm(arm, cfg, work) for arm in arms_now}
    paired = {}
    if "medmae" in arms:
        paired = {f"medmae_minus_{arm}": paired_difference(work / "medmae", work / arm, arms["medmae"]["metric"],
                                                           arms["medmae"]["where"]) for arm in arms if arm != "medmae"}
    command = "python benchmarks/vit_vs_monai.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None and k not in ("work", "set")) + "".join(
        f" --set '{item}'" for item in args.set)
    commands = earlier.get("commands", [earlier["command"]] if "command" in earlier else []) + [command]
    result = {"task": args.task, "when": time.strftime("%Y-%m-%d %H:%M"), "config": cfg, "arms": list(arms.values()),
              **paired, "commands": commands,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(result, indent=1), args.data))
    for a in arms.values():
        print(f"{a['arm']:13s} {a['metric']} {a['value']:.3f}  ({a['train_seconds']} s training)")
    for name, p in paired.items():
        if p:
            print(f"{name.replace('_minus_', ' - ')}: {p['mean_diff']:+.3f} ({p['ci_low']:+.3f} to {p['ci_high']:+.3f}) "
                  f"paired over {p['n_cases']} test cases")


if __name__ == "__main__":
    main()
