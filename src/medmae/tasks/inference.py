"""Inference shared by evaluate and predict: load a fine-tuned run, classify images, segment volumes."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from medmae.config import FinetuneConfig, load_config
from medmae.data.dataset import augment_case, pad_to, pad_value
from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import pick_device
from medmae.errors import RunDirError
from medmae.models.adapt import build_task_model
from medmae.models.monai_nets import build_baseline, is_baseline
from medmae.run_layout import CONFIG_FILE, EXPORT_DIR, PRETRAIN_CASES, TASK_FILE, checkpoints_dir

STACK_MIRRORS_VOXELS = 2  # images up to this many windows' voxels run all their mirrorings as one batch


def load_task_run(run_dir: str | Path, device: str | torch.device = "auto") -> tuple[FinetuneConfig, dict[str, Any], nn.Module, Path]:
    """Config, task description and weights (newest valid checkpoint) of a fine-tuning run, on ``device``
    ('auto': CUDA when available)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: {'not a directory' if run_dir.exists() else 'no such run directory'}")
    if not (run_dir / TASK_FILE).is_file():
        hint = (" but a pretraining run: fine-tune it first (medmae finetune --init " + str(run_dir) + ")"
                if (run_dir / EXPORT_DIR).is_dir() or (run_dir / PRETRAIN_CASES).is_file() else "")
        raise ckpt.CheckpointError(f"{run_dir}: not a fine-tuning run (no {TASK_FILE}){hint}")
    cfg = load_config(FinetuneConfig, run_dir / CONFIG_FILE)
    info = json.loads((run_dir / TASK_FILE).read_text())
    path = ckpt.find_latest_valid(checkpoints_dir(run_dir))
    if path is None:
        raise ckpt.CheckpointError(f"{run_dir}: no valid checkpoint in {checkpoints_dir(run_dir)}")
    init = info.get("init")  # the weights are the checkpoint's; a baseline run's network is MONAI's
    model = build_baseline(init, cfg, info["num_outputs"]) if is_baseline(init) else \
        build_task_model(cfg, info["num_outputs"], None)[0]
    ckpt.load_model_state(model, ckpt.load_checkpoint(path).model_state, path / ckpt.MODEL_FILE)
    if not isinstance(device, torch.device):
        device = pick_device(device)
    return cfg, info, model.to(device).eval(), path


def class_probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes``, the identity first: nnU-Net's mirroring TTA runs 2**len(axes) passes."""
    return [tuple(a for j, a in enumerate(axes) if k >> j & 1) for k in range(2 ** len(axes))]


def tta_axes(cfg: FinetuneConfig) -> tuple[int, ...]:
    """Spatial axes mirrored at test time: the axes the model was trained mirrored on (``data.flip_axes``; with
    ``eval.tta: true`` and none, every axis). ``eval.tta`` null (auto) is on for segmentation with a CNN
    (``arch resenc``), where it costs 2**axes passes of a cheap network, and off otherwise."""
    on = cfg.eval.tta if cfg.eval.tta is not None else (cfg.task == "seg" and cfg.model.arch == "resenc")
    if not on:
        return ()
    return tuple(cfg.data.flip_axes) or (tuple(range(cfg.model.spatial_dims)) if cfg.eval.tta else ())


def _flip(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Flip spatial ``axes`` of a (B, C, *S) tensor (its own inverse)."""
    return x.flip([2 + a for a in axes]) if axes else x


@torch.no_grad()
def classify(model: nn.Module, images: Sequence[np.ndarray], crop: Sequence[int], multilabel: bool,
             batch_size: int = 32, device: str | torch.device = "cpu", tta: Sequence[int] = ()) -> np.ndarray:
    """(N, K) probabilities for preprocessed images (each centre-cropped / padded to ``crop``), averaged over the
    mirrorings of the ``tta`` axes."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([augment_case(np.asarray(im), None, None, None, crop)[0] for im in images[i : i + batch_size]])
        x = x.to(device)
        passes = [class_probabilities(model(_flip(x, m)).float(), multilabel) for m in mirror_sets(tta)]
        out.append((sum(passes) / len(passes)).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def segment(model: nn.Module, image_cs: np.ndarray, roi: Sequence[int], *, overlap: float = 0.5,
            sw_batch_size: int = 4, device: str | torch.device = "cpu", tta: Sequence[int] = ()) -> torch.Tensor:
    """Class probabilities (K, *S) of a whole preprocessed image by Gaussian-blended sliding windows; with ``tta``
    axes, the mean of the softmax over every mirroring of them (each flipped back); a small image runs all its
    mirrorings as one batch (a CPU convolution at batch 1 costs nearly what it costs at batch 8).

    An image smaller than ``roi`` is padded here as training pads its crops (each channel's minimum, centred), not
    by MONAI's zero padding, which after a z-score reads as tissue around the image."""
    image_cs = np.asarray(image_cs, dtype=np.float32)
    shape = image_cs.shape[1:]
    padded = pad_to(image_cs, roi, pad_value(image_cs))
    inside = (slice(None), slice(None), *(slice((p - s) // 2, (p - s) // 2 + s) for p, s in zip(padded.shape[1:], shape)))
    x = torch.from_numpy(np.array(padded, dtype=np.float32))[None].to(device)
    mirrors = mirror_sets(tta)
    small = math.prod(padded.shape[1:]) <= STACK_MIRRORS_VOXELS * math.prod(roi)
    per_pass = len(mirrors) if small else 1  # a small image's mirrorings in one batch: batch 1 is slow on CPUs
    total = 0.0
    for i in range(0, len(mirrors), per_pass):
        group = mirrors[i : i + per_pass]
        logits = sliding_window_inference(torch.cat([_flip(x, m) for m in group]), tuple(roi),
                                          sw_batch_size * len(group), model, overlap=overlap, mode="gaussian")
        probs = torch.softmax(logits.float(), dim=1)
        total = total + sum(_flip(probs[j : j + 1], m) for j, m in enumerate(group))
    return (total / len(mirrors))[inside][0].cpu()
