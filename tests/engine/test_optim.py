"""Warmup + cosine schedule, AdamW parameter groups (no-decay set, layer-wise lr decay) and their effect."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmae.engine.optim import build_adamw, param_groups, set_lr, warmup_cosine


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.5),  # warmup: lr * (step + 1) / warmup_steps
        (1, 1.0),
        (2, 1.0),  # cosine starts at the peak
        (4, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # progress 2/8
        (6, 0.55),  # progress 1/2: half-way between lr and min_lr
        (10, 0.1),  # end of the schedule: min_lr
        (25, 0.1),  # past the end it stays at min_lr
    ],
)
def test_warmup_cosine_at_key_steps(step, expected):
    assert warmup_cosine(step, lr=1.0, total_steps=10, warmup_steps=2, min_lr=0.1) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_without_warmup_starts_at_the_peak_and_never_increases():
    lrs = [warmup_cosine(s, lr=3e-4, total_steps=50, warmup_steps=0) for s in range(51)]
    assert lrs[0] == pytest.approx(3e-4)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 2):
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def vit_layer_id(name: str) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the rest (norm, head)."""
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return 3


def group_of(groups: list[dict]) -> dict[str, dict]:
    out = {}
    for g in groups:
        for n in g["names"]:
            assert n not in out, f"{n} is in two groups"
            out[n] = g
    return out


def test_biases_norms_and_tokens_get_no_weight_decay():
    model = TinyViT()
    by_name = group_of(param_groups(model, 0.05))
    decayed = sorted(n for n, g in by_name.items() if g["weight_decay"] == 0.05)
    assert decayed == ["blocks.0.1.weight", "blocks.1.1.weight", "head.weight", "patch_embed.weight"]
    for n in ("pos_embed", "cls_token", "mask_token", "norm.weight", "norm.bias", "blocks.0.0.weight", "head.bias"):
        assert by_name[n]["weight_decay"] == 0.0, n
    assert "frozen" not in by_name
    assert set(by_name) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(g["lr_scale"] == 1.0 for g in by_name.values())


def test_layer_decay_scales_lr_by_depth_from_the_top():
    model = TinyViT()
    groups = param_groups(model, 0.05, layer_id=vit_layer_id, num_layers=2, layer_decay=0.5)
    by_name = group_of(groups)
    for name, g in by_name.items():
        assert g["lr_scale"] == pytest.approx(0.5 ** (2 + 1 - vit_layer_id(name))), name
    assert by_name["pos_embed"]["lr_scale"] == pytest.approx(0.125)
    assert by_name["blocks.1.1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert by_name["head.weight"]["lr_scale"] == pytest.approx(1.0)
    assert by_name["blocks.0.1.bias"]["weight_decay"] == 0.0 and by_name["blocks.0.1.weight"]["weight_decay"] == 0.05

    opt = build_adamw(groups, lr=1.0, betas=(0.9, 0.999), fused=True)
    set_lr(opt, 0.2)
    for g, pg in zip(groups, opt.param_groups):
        assert pg["lr"] == pytest.approx(0.2 * g["lr_scale"])


def test_adamw_step_decays_only_the_decay_group():
    """With zero gradients Adam's update is zero, so the only change is decoupled weight decay."""
    model = TinyViT()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    opt = build_adamw(param_groups(model, 0.5), lr=0.1, betas=(0.9, 0.999), fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    assert torch.allclose(model.head.weight, torch.full_like(model.head.weight, 1 - 0.1 * 0.5))
    assert torch.equal(model.head.bias, torch.ones_like(model.head.bias))
    assert torch.equal(model.pos_embed, torch.ones_like(model.pos_embed))
