"""The config sections of a plan: the pretraining config (top level) and the fine-tuning settings (``finetune``),
both from the same choice of crop, network and batch, so a pretrained encoder fits its fine-tuning.

Schedules: CNNs (ResEnc) train with nnU-Net's SGD (Nesterov momentum 0.99, lr 1e-2, poly decay, no warmup,
gradients clipped at 12) when the budget buys at least ``SGD_MIN_STEPS`` steps; nnU-Net tuned that recipe for
250 000 steps, and in a short budget it is still at the background-only solution where AdamW (lr 3e-3 to
fine-tune, 1e-3 for the MAE, warmup + cosine) has converged (``docs/explanation/short-budgets.md``). ViT and Swin
train with AdamW and warmup + cosine (MAE's recipe: base lr 1.5e-4 for the MAE, 1e-3 with layer decay 0.75 for
fine-tuning). ``train.max_minutes`` is the budget; ``epochs`` is only an upper
bound, so the budget decides the step count. The MAE gets ``PRETRAIN_BUDGET_FACTOR`` times a fine-tuning run's
budget by default: one MAE serves every fold, label fraction and seed, and on MSD Hippocampus a MAE of twice the
steps added +0.006 to +0.008 Dice at 10 % labels (``benchmarks/results/ablate_cnn_lowlabel_cpu.json``).
"""

from __future__ import annotations

from typing import Any

from medmae.planning.fingerprint import Fingerprint
from medmae.planning.search import Choice

EPOCHS_BOUND = 10_000  # the budget, not the epochs, ends a planned run
NNUNET_SGD = {"name": "sgd", "lr": 1.0e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3.0e-5,
              "schedule": "poly", "poly_power": 0.9, "warmup_epochs": 0, "clip_grad": 12.0, "layer_decay": None}
SGD_MIN_STEPS = 25_000  # below: AdamW (a tenth of nnU-Net's 250 000 steps)
SHORT_ADAMW = {"name": "adamw", "weight_decay": 1.0e-4, "betas": [0.9, 0.999], "schedule": "cosine",
               "warmup_epochs": EPOCHS_BOUND * 0.02, "clip_grad": 12.0, "layer_decay": None}
SHORT_LR = {"finetune": 3.0e-3, "mae": 1.0e-3}
FOREGROUND_PROB = 0.33  # nnU-Net oversamples foreground in a third of the crops
FINETUNE_AUGMENT = {"seg": "nnunet", "cls": "light"}  # the recipe presets' MONAI augmentation (docs/howto/recipes.md)
MASK_RATIO = 0.75
PRETRAIN_BUDGET_FACTOR = 2.0  # the MAE's budget over a fine-tuning run's (see the module)


def mask_block(crop: list[int]) -> list[int]:
    """Per axis the largest of 16 / 8 / 4 voxels that divides the crop into at least 2 blocks (nnssl: 16)."""
    return [next((b for b in (16, 8, 4) if c % b == 0 and c // b >= 2), 1) for c in crop]


def short_budget(choice: Choice) -> bool:
    return choice.steps < SGD_MIN_STEPS


def cnn_optim(choice: Choice, stage: str) -> dict[str, Any]:
    """nnU-Net's SGD for a long budget, AdamW for a short one (see the module); ``stage``: 'finetune' or 'mae'."""
    return {**SHORT_ADAMW, "lr": SHORT_LR[stage]} if short_budget(choice) else dict(NNUNET_SGD)


def optim_why(choice: Choice) -> str:
    if not short_budget(choice):
        return f"~{choice.steps} steps: nnU-Net's SGD (its recipe is tuned for long runs)"
    return (f"~{choice.steps} steps, fewer than {SGD_MIN_STEPS}: AdamW (nnU-Net's SGD is still near the background-"
            "only solution after a few thousand steps)")


def model_section(choice: Choice, s: dict[str, Any], *, deep_supervision: bool) -> dict[str, Any]:
    model = {k: v for k, v in choice.network.model.items()}
    model.update({"spatial_dims": s["dims"], "img_size": list(choice.crop), "in_channels": s["channels"]})
    if model["arch"] == "resenc":
        model["resenc"] = {**model["resenc"], "deep_supervision": deep_supervision}
        model["drop_path"] = 0.0
    return model


def train_section(choice: Choice, s: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": EPOCHS_BOUND, "batch_size": choice.batch, "max_minutes": s["budget_minutes"],
            "precision": s["precision"], "device": s["device"], "checkpoint_every": 500, "log_every": 50}


def data_section(fp: Fingerprint, s: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"path": fp.source, "intensity": s["intensity"], "spacing": s["spacing"],
                            "orientation": "RAS", "resize": s["resize"], "flip_axes": s["flip_axes"], "flip_prob": 0.5,
                            "num_workers": 4 if s["device"] == "cuda" else 0}
    if s["label_map"]:
        data["label_map"] = s["label_map"]
    return data


def pretrain_sections(fp: Fingerprint, choice: Choice, s: dict[str, Any]) -> dict[str, Any]:
    """The pretraining config: the same data, crop, network and batch, the family's MAE and its schedule."""
    model = model_section(choice, s, deep_supervision=False)
    arch = model["arch"]
    data = {**data_section(fp, s), "splits": s["pretrain_splits"]}
    train = {**train_section(choice, s), "max_minutes": s["pretrain_minutes"], "figure_every": 50}
    if arch == "resenc":
        mask = {"kind": "block", "ratio": MASK_RATIO, "block_size": mask_block(choice.crop), "sparse": False}
        optim, loss = cnn_optim(choice, "mae"), {"norm_pix": False}
    else:
        small = model.get("size") == "vit-t"
        if arch == "vit":
            model["decoder"] = {"embed_dim": 128 if small else 256, "depth": 2 if small else 4, "num_heads": 4 if small else 8}
        mask = {"kind": "random" if arch == "vit" else "window", "ratio": MASK_RATIO, "block_size": 16}
        optim = {"name": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05, "betas": [0.9, 0.95],
                 "warmup_epochs": EPOCHS_BOUND * 0.05, "schedule": "cosine", "clip_grad": 3.0}
        loss = {"norm_pix": True}
    return {"name": f"plan-{s['task']}-{arch}", "paper": f"medmae plan of {fp.source} ({s['task']}, {arch}, "
            f"{s['pretrain_minutes']:g} min MAE, {s['budget_minutes']:g} min per fine-tuning run on {s['device']})",
            "data": data, "model": model, "mask": mask, "loss": loss, "optim": optim, "train": train}


def finetune_sections(choice: Choice, s: dict[str, Any]) -> dict[str, Any]:
    """The ``finetune`` section of the plan: common keys and the task's (``finetune.seg`` / ``finetune.cls``)."""
    arch = choice.network.model["arch"]
    common: dict[str, Any] = {"data": {"splits": None, "augment": {"preset": FINETUNE_AUGMENT[s["task"]]}},
                              "head": {"pool": "mean"}, "eval": {"sw_overlap": 0.5}}
    if s["task"] == "seg":
        common["data"]["foreground_prob"] = FOREGROUND_PROB
    model = model_section(choice, s, deep_supervision=s["task"] == "seg")
    if arch == "resenc":
        optim = cnn_optim(choice, "finetune")
    else:
        model["drop_path"] = 0.1
        optim = {"name": "adamw", "lr": 1e-3, "layer_decay": 0.75, "weight_decay": 0.05, "betas": [0.9, 0.999],
                 "warmup_epochs": EPOCHS_BOUND * 0.05, "schedule": "cosine", "clip_grad": 3.0}
        if arch == "vit":
            common["head"]["feature_size"] = 16
    task = {"model": model, "optim": optim, "train": train_section(choice, s)}
    return {**common, s["task"]: task}
