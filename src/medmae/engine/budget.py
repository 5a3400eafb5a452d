"""Compute budgets: ``train.max_minutes`` turned into a fixed step count.

A fresh run times a few real training steps (forward, backward, optimizer step, batch loading) before it starts:
the first step is a warm-up, steps 2..k are timed (their mean without the slowest quarter); when those are short, a second timing covers about
``CALIBRATION_SHARE`` of the budget (at most ``CALIBRATION_MAX_STEPS`` steps), since augmentation makes single
steps vary (3 steps put two identical Hippocampus arms 27 % apart in step count). The count is
``(1 - margin) * budget / step time``, never above what ``epochs`` / ``max_steps`` give. The calibration leaves no trace: the weights, buffers and RNG states
are put back and its optimizer is thrown away, so a budgeted run of N steps is the run ``max_steps=N`` would
be. The count is fixed once and stored in every checkpoint's train state (``budget``); a resumed run reuses it
and never measures again, so exact resume holds and the lr schedule spans the budgeted steps.

The calibration's steps are not the loop's: they run the plain model, the loop runs it compiled
(``train.compile``) and under DDP / FSDP with their gradient communication, loads batches through its
DataLoader, clips and checks gradients, writes metrics and runs hooks. A measured budget is therefore re-fixed
once, from the loop's own mean step time, after ``RECHECK_SHARE`` of its steps: the steps after that span the new
count (the cosine moves by a few per cent of the lr), and the re-fixed budget is the one checkpoints store, so
resume stays exact. A run stopped before its re-check re-checks after it resumes. A machine whose speed drifts
later in the run is beyond it (``benchmarks/budget_fidelity.py``): the margin is the cushion for that.

Two runs of one network (a sweep's scratch and MAE arms) cost the same per step, yet two timings of it differ by
up to ±15 % (augmentation, the machine), which gave identical arms different step counts. A run may take the step
time another run measured (``given``) when their ``cost_key`` — the network's parameter shapes and the batch,
precision and data settings — is the same; it then gets that run's step count, re-checked if that run was, and
is not re-checked itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from joblib import cpu_count
from torch import nn
from torch.utils.data import Dataset, default_collate

from medmae.config import OptimConfig
from medmae.engine.optim import build_optimizer
from medmae.engine.resume import rng_state, set_rng_state
from medmae.run_layout import METRICS_JSONL

log = logging.getLogger(__name__)

MARGIN = 0.1  # share of the budget left for checkpoints, epoch hooks and the slower steps
CALIBRATION_STEPS = 4  # the first is a warm-up, the others are timed
CALIBRATION_SHARE = 0.02  # of the budget the second, longer timing may take
CALIBRATION_MIN_S = 2.0  # ... but at least this many seconds (0.5 s of a 25 s budget left two arms 20 % apart)
CALIBRATION_MAX_S = 30.0  # ... and at most this many seconds
CALIBRATION_MAX_STEPS = 48
CLOCK: Callable[[], float] = time.perf_counter  # the calibration's clock (tests replace it with a fake one)
BUSY_PRESSURE = 0.3  # share of the last 10 s in which some task waited for a CPU: above it the machine was busy
BUSY_LOAD = 1.5  # load average per usable CPU above which the machine was busy, where the kernel has no PSI
RECHECK_SHARE = 0.1  # of a measured budget's steps, after which the loop's own step time re-fixes the count
RECHECK_WARMUP = 3  # first steps of a session the loop's timing skips (first touches of cases, lazy set-ups)
RECHECK_MIN_TIMED = 20  # loop steps timed at least; a run too short for them is not re-checked

StepFn = Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Budget:
    """A time budget fixed at the start of a run: what was measured and the step count it gave."""

    max_minutes: float
    step_s: float  # measured seconds per optimizer step
    total_steps: int  # the run's step count (budget steps, capped by epochs / max_steps)
    budget_steps: int  # what the budget alone allows
    margin: float = MARGIN
    timed_steps: int = CALIBRATION_STEPS - 1
    load_per_cpu: float | None = None  # 1-minute load average per usable CPU when the step time was measured
    cpu_pressure: float | None = None  # share of the 10 s before then in which some task waited for a CPU (PSI)
    cost_key: str | None = None  # what the step time depends on (:func:`cost_key`); equal keys, equal step times
    step_s_from: str | None = None  # the run whose measured step time this budget took (None: measured here)
    recheck_at: int | None = None  # the step after which the loop's step time re-fixes the count (None: never)
    checked_at: int | None = None  # the step it was re-fixed at (None: not yet)
    calibrated_step_s: float | None = None  # the calibration's step time, once ``step_s`` is the loop's

    @property
    def busy(self) -> bool:
        return is_busy(self.cpu_pressure, self.load_per_cpu)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def cost_key(model: nn.Module, settings: Mapping[str, Any]) -> str:
    """Digest of what one training step costs: the parameters' names and shapes, and ``settings`` (batch,
    precision, the data and augmentation settings; JSON-able)."""
    shapes = [(name, list(p.shape)) for name, p in model.named_parameters()]
    text = json.dumps({"parameters": shapes, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_budget(run_dir: Path) -> Budget | None:
    """The budget a run trained under (its last ``budget`` row of ``metrics.jsonl``: the re-checked one where the
    run got that far), or None."""
    found = None
    try:
        with open(Path(run_dir) / METRICS_JSONL) as f:
            for line in f:
                row = json.loads(line)
                if row.get("kind") == "budget":
                    found = Budget.from_dict(row)
    except (OSError, ValueError):
        return None
    return found


def steps_in_budget(max_minutes: float, step_s: float, margin: float = MARGIN) -> int:
    """Optimizer steps of ``step_s`` seconds that fit in ``(1 - margin) * max_minutes`` (at least one)."""
    if step_s <= 0 or not math.isfinite(step_s):
        raise ValueError(f"a measured step time must be positive and finite, got {step_s} s")
    return max(1, int(max_minutes * 60.0 * (1.0 - margin) / step_s + 1e-9))  # 5.4 / 0.6 is 8.999...: 9 steps


def calibration_steps(step_s: float, max_minutes: float) -> int:
    """Steps (warm-up included) of the second timing: enough to fill ``CALIBRATION_SHARE`` of the budget, at least
    ``CALIBRATION_MIN_S`` (capped)."""
    seconds = min(max(CALIBRATION_SHARE * max_minutes * 60.0, CALIBRATION_MIN_S), CALIBRATION_MAX_S)
    if step_s <= 0 or not math.isfinite(step_s):
        return CALIBRATION_STEPS
    return int(min(CALIBRATION_MAX_STEPS, max(CALIBRATION_STEPS, 1 + math.ceil(seconds / step_s))))


def time_steps(run_step: Callable[[], None], steps: int = CALIBRATION_STEPS,
               clock: Callable[[], float] | None = None) -> float:
    """Seconds per call of ``run_step``: the mean of calls 2..``steps`` without the slowest quarter of them (the
    first call is a warm-up; first touches of cases and lazy set-ups make a few early calls several times slower,
    which in a 12-step timing gave one of two identical arms a third of the other's steps)."""
    if steps < 2:
        raise ValueError(f"timing needs at least 2 steps (one warm-up), got {steps}")
    clock = clock or CLOCK
    run_step()
    durations = []
    t0 = clock()
    for _ in range(steps - 1):
        run_step()
        t1 = clock()
        durations.append(t1 - t0)
        t0 = t1
    kept = sorted(durations)[: len(durations) - len(durations) // 4]
    return sum(kept) / len(kept)


def sample_batch(dataset: Dataset, batch: int, step: int) -> dict[str, Any]:
    """Batch ``step`` of the first epoch's cases in their stored order: ``(0, index)`` keys, as the sampler gives."""
    n = len(dataset)
    return default_collate([dataset[(0, (step * batch + i) % n)] for i in range(batch)])


def measure_step_time(model: nn.Module, dataset: Dataset, param_groups: Sequence[dict], optim_cfg: OptimConfig,
                      step_fn: StepFn, *, batch: int, device: torch.device, lr: float,
                      steps: int = CALIBRATION_STEPS, clock: Callable[[], float] | None = None,
                      bf16: bool = False) -> float:
    """Seconds per training step of ``model`` on real batches (loading included), leaving the model's weights,
    buffers and the RNG states as they were; the optimizer used is a throwaway one."""
    weights = copy.deepcopy(model.state_dict())
    rngs = rng_state()
    optimizer = build_optimizer(list(param_groups), optim_cfg, lr=lr)
    calls = [0]

    def one_step() -> None:
        b = sample_batch(dataset, batch, calls[0])
        calls[0] += 1
        b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_fn(model, b)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    was_training = model.training
    model.train()
    try:
        return time_steps(one_step, steps, clock)
    finally:
        model.load_state_dict(weights)
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
        set_rng_state(rngs)  # the throwaway optimizer goes with this frame


def load_per_cpu() -> float | None:
    """The 1-minute load average per CPU this process may use; None where the system does not report one."""
    try:
        return round(os.getloadavg()[0] / cpu_count(), 3)
    except OSError:
        return None


def pressure_file(proc: str = "/proc", cgroups: str = "/sys/fs/cgroup") -> str:
    """Where the CPU pressure of this process's tasks is: its cgroup's ``cpu.pressure`` (cgroup v2) counts the time
    they waited for a CPU, whoever held it, and nothing else; on a cluster node shared by jobs the system-wide
    ``/proc/pressure/cpu`` also counts other jobs' tasks waiting on their own CPUs. The v2 hierarchy is mounted at
    ``/sys/fs/cgroup`` or, on hybrid hosts (systemd's v1 layout with v2 beside it), at ``/sys/fs/cgroup/unified``.
    The system-wide file where the cgroup has none (cgroup v1 only, PSI off for cgroups)."""
    try:
        with open(f"{proc}/self/cgroup") as f:
            unified = [line.strip()[3:].rstrip("/") for line in f if line.startswith("0::")]
    except OSError:
        unified = []
    if unified:
        for mount in (cgroups, f"{cgroups}/unified"):
            if os.path.isfile(own := f"{mount}{unified[0]}/cpu.pressure"):
                return own
    return f"{proc}/pressure/cpu"


def cpu_pressure(path: str | None = None) -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (Linux pressure stall information,
    ``some avg10`` of :func:`pressure_file`); None where the kernel does not report it."""
    try:
        with open(path or pressure_file()) as f:
            for line in f:
                if line.startswith("some "):
                    return round(float(dict(kv.split("=", 1) for kv in line.split()[1:])["avg10"]) / 100.0, 3)
    except (OSError, ValueError, KeyError):
        return None
    return None


def is_busy(pressure: float | None, load: float | None) -> bool:
    """Whether other work shared the CPUs while the step time was measured: from the CPU pressure where the kernel
    reports it (a 10 s window, about as long as the calibration), else from the 1-minute load average, which lags:
    it still counts work that ended up to a minute before, a sweep's previous cell included (a cell measured at
    the same speed as its quiet neighbours read 1.5 per CPU there)."""
    if pressure is not None:
        return pressure > BUSY_PRESSURE
    return load is not None and load > BUSY_LOAD


def fix_budget(max_minutes: float, schedule_steps: int, saved: Mapping[str, Any] | None,
               measure: Callable[[], tuple[float, int]], *, key: str | None = None,
               given: Budget | None = None) -> tuple[Budget, bool]:
    """The run's budget: the one a resumed checkpoint holds (``saved``); else, when ``given`` (another run's
    budget, its ``step_s_from`` naming that run) has this run's cost ``key``, that run's step time and the load it
    was measured under; else one measured now (``measure`` gives seconds per step and the steps timed). Returns
    the budget and whether it was fixed in this call."""
    if saved is not None:
        budget = Budget.from_dict(saved)
        if budget.max_minutes != max_minutes:
            log.warning("train.max_minutes changed from %g to %g since the run started: the run keeps its %d steps "
                        "(fixed at the start, for exact resume)", budget.max_minutes, max_minutes, budget.total_steps)
        return budget, False
    if given is not None and key is not None and given.cost_key == key:
        allowed = steps_in_budget(max_minutes, given.step_s)
        budget = replace(given, max_minutes=max_minutes, total_steps=min(allowed, schedule_steps), budget_steps=allowed,
                         recheck_at=None)
        how = f"taken from {given.step_s_from} (the same network, batch and data)"
    else:
        if given is not None:
            log.info("the step time of %s is for another network, batch or data: measuring", given.step_s_from)
        step_s, timed = measure()
        allowed = steps_in_budget(max_minutes, step_s)
        budget = Budget(max_minutes=max_minutes, step_s=step_s, total_steps=min(allowed, schedule_steps),
                        budget_steps=allowed, timed_steps=timed, load_per_cpu=load_per_cpu(),
                        cpu_pressure=cpu_pressure(), cost_key=key,
                        recheck_at=recheck_step(min(allowed, schedule_steps)))
        how = f"measured over {timed} steps"
    log.info("budget %g min: %.3g s per step %s -> %d steps%s", max_minutes, budget.step_s, how, budget.total_steps,
             f" (epochs / max_steps allow only {schedule_steps})" if schedule_steps < allowed else "")
    if budget.busy:  # other work shared the CPUs: fewer steps than an idle machine gives
        pressure = budget.cpu_pressure
        how = (f"some task waited for a CPU {pressure:.0%} of the last 10 s" if pressure is not None
               else f"load average {budget.load_per_cpu:.1f} per CPU")
        log.warning("the machine was busy while the step time was measured (%s): the budget buys fewer steps than "
                    "on an idle machine; compare budgeted runs only when they ran under the same load (or give "
                    "max_steps)", how)
    return budget, True


def recheck_step(total_steps: int) -> int | None:
    """After which step a measured budget of ``total_steps`` is re-checked: ``RECHECK_SHARE`` of them, at least
    enough to time ``RECHECK_MIN_TIMED`` loop steps; None for a run too short to leave half its steps after it."""
    at = max(RECHECK_WARMUP + RECHECK_MIN_TIMED, math.ceil(RECHECK_SHARE * total_steps))
    return at if 2 * at <= total_steps else None


@dataclass
class LoopTimer:
    """Times a session's training steps (its first ``RECHECK_WARMUP`` skipped) up to step ``until``."""

    start: int  # the session's first step
    until: int
    durations: list[float] = field(default_factory=list)
    last: float | None = None

    @classmethod
    def for_budget(cls, budget: Budget | None, step: int) -> LoopTimer | None:
        """The timer of a budget still to be re-checked, in a session starting at ``step`` (None: nothing to do)."""
        if budget is None or budget.recheck_at is None or budget.checked_at is not None:
            return None
        until = max(budget.recheck_at, step + RECHECK_WARMUP + RECHECK_MIN_TIMED)
        return cls(step, until) if until < budget.total_steps else None

    def tick(self, step: int) -> float | None:
        """Call once the loop reached ``step``; at ``until``, the loop's mean seconds per step. Not trimmed as the
        calibration's are: after the warm-up every slow step of the loop (a figure, a slow batch) counts against the
        budget (the trimmed mean was 4.2 and 3.5 % below the mean on Hippocampus and DRIVE, and DRIVE overran by 4 %)."""
        if step < self.start + RECHECK_WARMUP:
            return None
        now = CLOCK()
        if self.last is not None:
            self.durations.append(now - self.last)
        self.last = now
        return sum(self.durations) / len(self.durations) if step >= self.until and self.durations else None


def refix_budget(budget: Budget, step: int, loop_step_s: float, schedule_steps: int) -> Budget:
    """``budget`` re-fixed at ``step`` from the loop's seconds per step: the steps of ``loop_step_s`` that fit in
    it (never fewer than ``step``, never more than ``schedule_steps``, what epochs / max_steps give)."""
    allowed = steps_in_budget(budget.max_minutes, loop_step_s, budget.margin)
    total = max(step, min(allowed, schedule_steps))
    log.info("budget re-checked at step %d: the loop ran %.3g s per step, the calibration measured %.3g -> %d steps "
             "(was %d)", step, loop_step_s, budget.step_s, total, budget.total_steps)
    return replace(budget, step_s=loop_step_s, calibrated_step_s=budget.step_s, total_steps=total,
                   budget_steps=allowed, checked_at=step)


def usage(budget: Budget | None, step: int, seconds: float) -> dict[str, Any]:
    """What a run records about its time: steps reached, minutes used, the budget and its measured step time."""
    out: dict[str, Any] = {"steps": step, "train_minutes": round(seconds / 60.0, 4)}
    if budget is not None:
        out.update({"max_minutes": budget.max_minutes, "measured_step_s": budget.step_s,
                    "budget_steps": budget.total_steps, "load_per_cpu": budget.load_per_cpu,
                    "cpu_pressure": budget.cpu_pressure, "busy": budget.busy})
        if budget.step_s_from:
            out["step_s_from"] = budget.step_s_from
        if budget.checked_at is not None:
            out.update({"calibrated_step_s": budget.calibrated_step_s, "checked_at": budget.checked_at})
    return out
