"""A plan from a fingerprint: preprocessing, crop, network, batch, schedule and budget, as a preset-shaped
mapping (the pretraining config at the top, the fine-tuning settings under ``finetune``, the reasons under
``plan``) that ``pretrain`` / ``finetune`` / ``sweep --plan`` load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import torch

from medmae.errors import ConfigError
from medmae.planning import network as nets
from medmae.planning import rules
from medmae.planning.fingerprint import Fingerprint
from medmae.planning.search import Choice, Device, Problem, choose, cost_cache
from medmae.planning.sections import PRETRAIN_BUDGET_FACTOR, finetune_sections, optim_why, pretrain_sections
from medmae.version import __version__

log = logging.getLogger(__name__)

PLAN_VERSION = 1
FAMILIES = ("resenc", "vit", "swin")
PRECISIONS = ("auto", "fp32", "bf16")
DEFAULT_FAMILY = {"seg": "resenc", "cls": "resenc"}  # the CNN path: nnU-Net's ResEnc U-Net / its encoder
CLS_MAX_VOXELS = {2: 256 * 256, 3: 128 * 128 * 128}
TRAIN_SHARE = 0.8  # of the labelled cases that train (the default held-out split takes 20 %)
_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT_MINUTES = {"s": 1 / 60, "sec": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, "hr": 60.0, "d": 1440.0}


def parse_budget(text: str | float | int, option: str = "--budget") -> float:
    """Minutes of a budget written as ``90s``, ``30m``, ``2h``, ``1d`` or a bare number of minutes."""
    if isinstance(text, (int, float)):
        minutes = float(text)
    else:
        m = _BUDGET.match(str(text))
        if not m:
            raise ConfigError(f"{option} {text!r}: give a duration like 90s, 30m, 2h or 1d")
        minutes = float(m.group(1)) * _UNIT_MINUTES[(m.group(2) or "m").lower()]
    if minutes <= 0:
        raise ConfigError(f"{option} {text!r}: must be positive")
    return minutes


def labelled_cases(fp: Fingerprint, task: str) -> int:
    n = fp.labelled_seg if task == "seg" else fp.labelled_cls
    if n == 0:
        what = "masks" if task == "seg" else "class labels"
        raise ConfigError(f"{fp.source}: no case has {what}, so there is nothing to plan --task {task} for")
    return n


def geometry(fp: Fingerprint, task: str) -> dict[str, Any]:
    """Target spacing (3D images with a physical spacing), the median shape after it, and the capped crop."""
    spacing, why = None, "pictures / 2D images keep their pixels"
    shapes = fp.shapes
    if fp.spatial_dims == 3 and fp.physical_spacing:
        spacing, why = rules.target_spacing(fp.spacings)
        shapes = [rules.resampled_shape(s, sp, spacing) for s, sp in zip(fp.shapes, fp.spacings)]
    median = rules.median_shape(shapes)
    cap = (rules.MAX_VOXELS if task == "seg" else CLS_MAX_VOXELS)[fp.spatial_dims]
    return {"spacing": spacing, "spacing_why": why, "median_shape": median,
            "capped": rules.cap_voxels(median, cap), "max_voxels": cap}


def family_space(family: str, dims: int, capped: list[int]):
    """(networks(crop), unit(crop), first crop) of a family: candidates, the stride a crop divides by, start."""
    if family == "resenc":
        def unit(crop: list[int]) -> int:
            return 2 ** (rules.num_stages(crop, dims) - 1)
        networks = lambda crop: nets.resenc_networks(rules.num_stages(crop, dims), dims)  # noqa: E731
    elif family == "vit":
        patch = 16 if dims == 2 or min(capped) >= 64 else 8
        unit = lambda crop: patch  # noqa: E731
        networks = lambda crop: nets.vit_networks(patch)  # noqa: E731
    elif family == "swin":
        if dims != 2:
            raise ConfigError("--family swin is 2D only (Swin / VIS-MAE); use resenc or vit for volumes")
        unit = lambda crop: 32  # noqa: E731 - patch 4 x 2**3 for four stages
        networks = lambda crop: nets.swin_networks()  # noqa: E731
    else:
        raise ConfigError(f"--family {family!r}: known families are {', '.join(FAMILIES)}")
    return networks, unit, rules.stride_multiple(capped, unit(capped))


CALIBRATION_BATCHES = {2: (8, 32), 3: (2, 8)}  # the batch sizes the probe network is timed at (CPU convolutions
# at batch 1 take a slow path, and close sizes leave the slope to timing noise)


def measured_device(kind: str, probe: tuple[nets.Network, list[int]], task: str, dims: int, channels: int,
                    outputs: int, memory: float | None, flops_per_s: float | None, bf16: bool) -> Device:
    """The device's memory and speed: given, measured here on the smallest candidate at two batch sizes, or
    assumed for a GPU that this machine does not have."""
    mem, mem_src = (memory, "given") if memory is not None else nets.device_memory(kind)
    if flops_per_s is not None:
        return Device(kind, mem, flops_per_s, mem_src, "given")
    if kind == "cuda" and not torch.cuda.is_available():
        return Device(kind, mem, nets.ASSUMED_CUDA_FLOPS, mem_src,
                      f"assumed {nets.ASSUMED_CUDA_FLOPS / 1e12:.0f} TFLOP/s (no GPU visible here: plan on the GPU "
                      "machine for a measured figure)")
    net, crop = probe
    cfg = nets.task_config(net.model, task, dims, crop, channels)
    per_sample = nets.cost(cfg, outputs).flops
    small, big = CALIBRATION_BATCHES[dims]
    times = [(b, nets.measure_step_s(cfg, outputs, b, torch.device(kind), bf16=bf16)) for b in (small, big)]
    rate, overhead = nets.speed_model(per_sample, times[0], times[1])
    return Device(kind, mem, rate, mem_src, f"measured: forward/backward of {net.label} at {crop}, batch {small} "
                  f"and {big}", overhead_s=overhead, measured=True)


def step_timer(device: Device, task: str, dims: int, channels: int, outputs: int,
               bf16: bool) -> Callable[[Choice], float] | None:
    """Times a candidate's real step on this machine; None where the speed was given or assumed, not measured."""
    if not device.measured:
        return None
    kind = torch.device(device.kind)

    def timer(choice: Choice) -> float:
        cfg = nets.task_config(choice.network.model, task, dims, choice.crop, channels)
        return nets.measure_step_s(cfg, outputs, choice.batch, kind, bf16=bf16, repeats=1)

    return timer


def make_plan(fp: Fingerprint, *, task: str, budget_minutes: float, device: str = "cpu", family: str | None = None,
              memory_bytes: float | None = None, flops_per_s: float | None = None,
              pretrain_minutes: float | None = None, precision: str = "auto") -> dict[str, Any]:
    """The plan of a dataset for ``task`` on ``device`` in ``budget_minutes`` per fine-tuning run and
    ``pretrain_minutes`` (default ``PRETRAIN_BUDGET_FACTOR`` times that) for the one MAE (see the module)."""
    if task not in ("seg", "cls"):
        raise ConfigError(f"--task must be seg or cls, got {task!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if budget_minutes <= 0:
        raise ConfigError(f"--budget must be positive, got {budget_minutes} minutes")
    pretrain_minutes = budget_minutes * PRETRAIN_BUDGET_FACTOR if pretrain_minutes is None else pretrain_minutes
    if pretrain_minutes <= 0:
        raise ConfigError(f"--pretrain-budget must be positive, got {pretrain_minutes} minutes")
    family = family or DEFAULT_FAMILY[task]
    labelled = labelled_cases(fp, task)
    n_train = max(1, int(labelled * TRAIN_SHARE))
    geo = geometry(fp, task)
    channels = 1 if fp.grey_as_rgb else fp.channels
    mapping = rules.label_map(fp.label_values, fp.label_names)
    outputs = rules.seg_classes(fp.label_values, fp.label_names, mapping) if task == "seg" else max(2, len(fp.classes))
    networks, unit, crop = family_space(family, fp.spatial_dims, geo["capped"])
    if geo["capped"] == geo["median_shape"]:  # the whole median image fits: pad up rather than crop it
        crop = rules.round_to(geo["median_shape"], unit(crop))
    bf16, precision_why = nets.auto_precision(device) if precision == "auto" else (precision == "bf16", "given")
    problem = Problem(task, fp.spatial_dims, n_train, float(nets.voxels(geo["median_shape"])), budget_minutes * 60.0,
                      bf16=bf16, dataset_cases=labelled)
    dev = measured_device(device, (networks(crop)[0], crop), task, fp.spatial_dims, channels, outputs,
                          memory_bytes, flops_per_s, bf16)
    counted = cost_cache(lambda net, c: nets.cost(nets.task_config(net.model, task, fp.spatial_dims, c, channels),
                                                  outputs))
    choice = choose(networks, counted, crop, unit, problem, dev,
                    timer=step_timer(dev, task, fp.spatial_dims, channels, outputs, bf16))
    intensity, intensity_why = rules.intensity_preset(fp.modality, fp.foreground, channels)
    for w in choice.warnings:
        log.warning(w)
    settings = {"task": task, "family": family, "device": device, "budget_minutes": budget_minutes,
                "precision": "bf16" if bf16 else "fp32", "precision_why": precision_why,
                "pretrain_minutes": pretrain_minutes,
                "source": fp.source, "dims": fp.spatial_dims, "channels": channels, "outputs": outputs,
                "intensity": intensity, "spacing": geo["spacing"], "label_map": mapping,
                "resize": choice.crop if task == "cls" and (len({tuple(s) for s in fp.shapes}) > 1
                                                            or choice.crop != geo["median_shape"]) else None,
                "flip_axes": rules.flip_axes(task, fp.spatial_dims),
                "pretrain_splits": rules.pretraining_splits(fp.splits)}
    return {
        **pretrain_sections(fp, choice, settings),
        "plan": plan_record(fp, choice, dev, geo, settings, intensity_why),
        "finetune": finetune_sections(choice, settings),
    }


def plan_record(fp: Fingerprint, choice: Choice, dev: Device, geo: dict[str, Any], settings: dict[str, Any],
                intensity_why: str) -> dict[str, Any]:
    """The ``plan`` section: what was decided and why, and the fingerprint it was decided from."""
    return {
        "version": PLAN_VERSION, "medmae": __version__, "source": fp.source, "task": settings["task"],
        "family": settings["family"], "device": settings["device"], "budget_minutes": settings["budget_minutes"],
        "decisions": {
            "spacing": {"value": geo["spacing"], "why": geo["spacing_why"]},
            "crop": {"value": choice.crop, "median_shape": geo["median_shape"], "max_voxels": geo["max_voxels"],
                     "capped": geo["capped"]},
            "intensity": {"value": settings["intensity"], "why": intensity_why},
            "in_channels": {"value": settings["channels"],
                            "why": "grey images stored as RGB" if fp.grey_as_rgb else "channels of the images"},
            "precision": {"value": settings["precision"], "why": settings["precision_why"]},
            "label_map": settings["label_map"], "flip_axes": settings["flip_axes"],
            "pretrain_splits": settings["pretrain_splits"],
            **choice.as_dict(),
            **({"optimizer": optim_why(choice)} if settings["family"] == "resenc" else {}),
            "device": {"memory_gib": round(dev.memory_bytes / 2**30, 1), "memory": dev.memory_source,
                       "tflops": round(dev.flops_per_s / 1e12, 4), "step_overhead_s": round(dev.overhead_s, 4),
                       "speed": dev.speed_source},
        },
        "warnings": list(choice.warnings),
        "fingerprint": fp.summary(),
    }
