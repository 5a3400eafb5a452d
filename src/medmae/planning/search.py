"""Choosing the crop, the network and the batch that fit the device's memory and the time budget.

Candidates are tried largest first: network rungs from the largest down, at each the largest batch first; one
predicted to fit is timed on the device before it is taken, and the chosen one always is. A candidate fits when
its training step fits in memory and the budget gives it at least ``MIN_STEPS`` steps and ``MIN_EPOCHS`` passes
over the training cases. When nothing fits, segmentation crops shrink one stride
step at a time along their largest axis (nnU-Net) while nothing fits in memory; when the time budget is what is
short, the crop stays and the smallest candidate is taken with a warning that says how few epochs it buys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from medmae.planning.network import Cost, Network, scaled, voxels
from medmae.planning.rules import shrink_once

log = logging.getLogger(__name__)

MIN_STEPS = 250  # optimizer steps a budget must give a candidate
MIN_EPOCHS = {"seg": 30, "cls": 10}  # passes over the training cases a budget must give a candidate
BATCH_SHARE = 0.05  # nnU-Net: one batch covers at most 5 % of the dataset's voxels (segmentation)
BATCHES = {("seg", 3): (12, 8, 4, 2), ("seg", 2): (32, 16, 12, 8, 4, 2), ("cls", 3): (16, 8, 4, 2),
           ("cls", 2): (64, 32, 16, 8)}
MAX_SHRINKS = 8
MAX_TIMED = 4  # candidates a plan times on the device before it trusts the prediction


@dataclass(frozen=True)
class Device:
    """What a plan is sized for: the kind, bytes it may use, FLOP/s and the fixed seconds of a step, and where those
    figures come from."""

    kind: str
    memory_bytes: float
    flops_per_s: float
    memory_source: str
    speed_source: str
    overhead_s: float = 0.0
    measured: bool = False  # speed timed on this machine (candidates can be timed too), not given or assumed

    def step_s(self, flops: float) -> float:
        """Predicted seconds of a training step of ``flops`` FLOPs."""
        return self.overhead_s + flops / self.flops_per_s


@dataclass(frozen=True)
class Problem:
    """The training job: task, dimensionality, training cases, median image voxels, budget seconds."""

    task: str
    dims: int
    train_cases: int
    image_voxels: float
    budget_s: float
    margin: float = 0.1
    bf16: bool = False
    dataset_cases: int = 0  # labelled cases of the dataset (the 5 % batch rule); 0: train_cases


@dataclass
class Choice:
    network: Network
    crop: list[int]
    batch: int
    step_s: float
    steps: int
    epochs: float
    memory_bytes: float
    fits: bool
    warnings: list[str] = field(default_factory=list)
    measured_step_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        measured = {} if self.measured_step_s is None else {"measured_step_s": round(self.measured_step_s, 4)}
        return {"network": self.network.label, "batch": self.batch,
                "predicted_step_s": round(self.step_s, 4), **measured, "predicted_steps": self.steps,
                "predicted_epochs": round(self.epochs, 1), "memory_gib": round(self.memory_bytes / 2**30, 2),
                "fits_budget": self.fits}


def batch_options(problem: Problem, crop: Sequence[int]) -> list[int]:
    """Batch sizes to try, largest first; segmentation caps a batch at 5 % of the dataset's voxels (the cap itself
    is the first option when it falls between two)."""
    options = list(BATCHES[(problem.task, problem.dims)])
    if problem.task == "seg":
        cases = problem.dataset_cases or problem.train_cases
        cap = max(2, int(BATCH_SHARE * cases * problem.image_voxels / max(voxels(crop), 1)))
        options = sorted({min(cap, b) for b in options}, reverse=True)
    options = [b for b in options if b <= max(problem.train_cases, 1)] or [min(options)]
    return options


def evaluate(net: Network, cost: Cost, crop: list[int], batch: int, problem: Problem, device: Device) -> Choice:
    """Predicted step time, steps and epochs in the budget, and memory of one candidate."""
    step_s = device.step_s(cost.flops * batch)
    steps = max(1, int(problem.budget_s * (1 - problem.margin) / max(step_s, 1e-9)))
    epochs = steps * batch / max(problem.train_cases, 1)
    memory = cost.step_bytes(batch, problem.bf16)
    fits = memory <= device.memory_bytes and steps >= MIN_STEPS and epochs >= MIN_EPOCHS[problem.task]
    return Choice(net, list(crop), batch, step_s, steps, epochs, memory, fits)


def timed(choice: Choice, problem: Problem, timer: Callable[[Choice], float] | None) -> Choice:
    """``choice`` with its step timed on the device: steps, epochs and fit from the measured seconds."""
    if timer is None:
        return choice
    seconds = timer(choice)
    steps = max(1, int(problem.budget_s * (1 - problem.margin) / max(seconds, 1e-9)))
    epochs = steps * choice.batch / max(problem.train_cases, 1)
    fits = choice.fits and steps >= MIN_STEPS and epochs >= MIN_EPOCHS[problem.task]
    return replace(choice, measured_step_s=seconds, steps=steps, epochs=epochs, fits=fits,
                   warnings=list(choice.warnings))


def choose(networks: Callable[[list[int]], list[Network]], costs: Callable[[Network, list[int]], Cost],
           crop: list[int], unit: Callable[[list[int]], int], problem: Problem, device: Device,
           timer: Callable[[Choice], float] | None = None) -> Choice:
    """The largest fitting (network, batch); the crop shrinks only when nothing fits in memory (see the module).
    With ``timer``, a candidate predicted to fit is timed before it is taken (at most ``MAX_TIMED`` of them)."""
    fallback: Choice | None = None
    timings = 0
    for _ in range(MAX_SHRINKS + 1):
        for net in reversed(networks(crop)):
            c = costs(net, crop)
            for batch in batch_options(problem, crop):
                choice = evaluate(net, c, crop, batch, problem, device)
                if choice.fits and timer is not None and timings < MAX_TIMED:
                    timings += 1
                    choice = timed(choice, problem, timer)
                if choice.fits:
                    return choice
                if choice.memory_bytes <= device.memory_bytes:
                    fallback = choice  # ends as the smallest rung's smallest batch that fits in memory
        nxt = shrink_once(crop, unit(crop)) if fallback is None else None  # time, not memory, is short: keep it
        if nxt is None:
            break
        log.debug("nothing fits in memory at crop %s; trying %s", crop, nxt)
        crop = nxt
    if fallback is None:
        net = networks(crop)[0]
        fallback = evaluate(net, costs(net, crop), crop, min(batch_options(problem, crop)), problem, device)
        fallback.warnings.append(f"even the smallest candidate ({net.label}, batch {fallback.batch}) needs "
                                 f"{fallback.memory_bytes / 2**30:.1f} GiB, more than the {device.memory_source}")
    elif fallback.measured_step_s is None and timer is not None:
        fallback = timed(replace(fallback, fits=True), problem, timer)  # fits now only if the measured step does
        if fallback.fits:  # predicted too slow, measured fast enough: no warning
            return fallback
    fallback.warnings.append(
        f"the budget buys only ~{fallback.steps} steps ({fallback.epochs:.1f} epochs) of the smallest candidate "
        f"(wanted at least {MIN_STEPS} steps and {MIN_EPOCHS[problem.task]} epochs): give a larger --budget or a GPU")
    return fallback


def cost_cache(count: Callable[[Network, list[int]], Cost]) -> Callable[[Network, list[int]], Cost]:
    """Costs counted once per network at its first crop; smaller crops of the same network are scaled by voxels."""
    seen: dict[str, tuple[list[int], Cost]] = {}

    def get(net: Network, crop: list[int]) -> Cost:
        key = repr(sorted(net.model.items()))
        if key not in seen:
            seen[key] = (list(crop), count(net, crop))
        first, c = seen[key]
        return c if first == list(crop) else scaled(c, voxels(crop) / voxels(first))

    return get
