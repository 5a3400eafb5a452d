"""Optimizer parameter groups (weight decay, layer-wise lr decay), AdamW / SGD, and warmup + cosine / poly schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from medmae.config import OptimConfig

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "relative_position_bias_table", "absolute_pos_embed")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    layer_id: Callable[[str], int] | None = None,
    num_layers: int = 0,
    layer_decay: float | None = None,
) -> list[dict]:
    """AdamW groups: no decay for biases, norms and tokens; with ``layer_decay`` each group gets
    ``lr_scale = layer_decay ** (num_layers + 1 - layer_id(name))`` (BEiT/MAE layer-wise lr decay)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or any(t in name for t in NO_DECAY_NAMES)
        lid = layer_id(name) if (layer_id and layer_decay is not None) else num_layers + 1
        key = (lid, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale, "layer_id": lid}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_adamw(groups: list[dict], *, lr: float, betas: tuple[float, float], fused: bool) -> torch.optim.AdamW:
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    devices = {p.device.type for g in clean for p in g["params"]}
    use_fused = fused and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(clean, lr=lr, betas=betas, fused=use_fused or None)


def build_sgd(groups: list[dict], *, lr: float, momentum: float, nesterov: bool, fused: bool) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum, nnU-Net's optimizer (momentum 0.99, Nesterov)."""
    if nesterov and momentum <= 0:
        raise ValueError(f"Nesterov SGD needs momentum > 0, got {momentum}")
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    devices = {p.device.type for g in clean for p in g["params"]}
    use_fused = fused and devices <= {"cpu", "cuda"}
    return torch.optim.SGD(clean, lr=lr, momentum=momentum, nesterov=nesterov, fused=use_fused or None)


def build_optimizer(groups: list[dict], optim_cfg: OptimConfig, *, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``optim_cfg.name`` (``adamw`` or ``sgd``) over ``groups``."""
    if optim_cfg.name == "sgd":
        return build_sgd(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov, fused=optim_cfg.fused)
    if optim_cfg.name == "adamw":
        return build_adamw(groups, lr=lr, betas=tuple(optim_cfg.betas), fused=optim_cfg.fused)
    raise ValueError(f"unknown optimizer {optim_cfg.name!r} (adamw, sgd)")


def warmup_cosine(step: int, *, lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then half-cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_poly(step: int, *, lr: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0,
                power: float = 0.9) -> float:
    """Linear warmup, then nnU-Net's polynomial decay ``(1 - progress) ** power`` from ``lr`` to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * (1.0 - progress) ** power


def scheduled_lr(step: int, optim_cfg: OptimConfig, *, lr: float, total_steps: int, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` under ``optim_cfg.schedule`` (``cosine`` or ``poly``)."""
    if optim_cfg.schedule == "poly":
        return warmup_poly(step, lr=lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=optim_cfg.min_lr,
                           power=optim_cfg.poly_power)
    return warmup_cosine(step, lr=lr, total_steps=total_steps, warmup_steps=warmup_steps, min_lr=optim_cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
