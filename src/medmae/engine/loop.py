"""The one training loop, shared by pretraining and fine-tuning.

AdamW with warmup + cosine, gradient clipping, optional bf16 autocast, a NaN/Inf guard, per-step
metrics, atomic checkpoints, exact resume, pre-emption by SIGTERM/SIGUSR1 and Ctrl-C, single process or torchrun DDP / FSDP
(:mod:`medmae.engine.parallel`).
What a step computes is the caller's ``step_fn(model, batch) -> {"loss": ..., ...}``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from medmae.config import LoggingConfig, OptimConfig, TrainConfig
from medmae.data.dataset import EpochBatchSampler, order_kind
from medmae.engine import checkpoint as ckpt
from medmae.engine.budget import (CALIBRATION_STEPS, Budget, LoopTimer, calibration_steps, fix_budget,
                                  measure_step_time, refix_budget, usage)
from medmae.engine.distributed import (DistInfo, all_reduce_max, all_reduce_sum, barrier, gather_objects,
                                      is_peer_failure, on_main, peer_lost)
from medmae.engine.loader_state import check_resume, digest, loader_state
from medmae.engine.logging import MetricsLog
from medmae.engine.optim import build_optimizer, scheduled_lr, set_lr
from medmae.engine.parallel import Replicated, Sharded, full_tensor, wrap
from medmae.engine.progress import Progress
from medmae.engine.resume import choose as choose_resume
from medmae.engine.resume import drop_newer, restore, rng_state
from medmae.engine.signals import StopRequest, ignore_stop_signals
from medmae.engine.tracking import Tracker, open_tracker
from medmae.errors import EXIT_INTERRUPTED, NonFiniteLossError
from medmae.run_layout import checkpoints_dir

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Schedule:
    """Step counts and learning rate of one run."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    lr: float
    global_batch: int

    @classmethod
    def build(cls, num_cases: int, train_cfg: TrainConfig, optim_cfg: OptimConfig, max_steps: int | None,
              world_size: int = 1) -> Schedule:
        """Steps per epoch, total steps (``epochs``, raised to ``min_steps``, capped by ``max_steps``), warmup and lr.

        With fewer cases than ``train.batch_size`` (small label fractions) one process trains on batches of all
        cases; several processes need at least one batch per process.
        """
        gb = train_cfg.batch_size
        if num_cases < gb:
            if world_size > 1 or num_cases == 0:
                raise ValueError(f"{num_cases} training cases are fewer than the batch size {gb}; lower train.batch_size")
            log.warning("%d training cases are fewer than train.batch_size=%d: batches of %d", num_cases, gb, num_cases)
            gb = num_cases
        spe = EpochBatchSampler.steps_per_epoch(num_cases, gb)
        full = max(train_cfg.epochs * spe, train_cfg.min_steps or 0)
        cap = max_steps or train_cfg.max_steps
        total = min(full, cap) if cap else full
        lr = optim_cfg.lr if optim_cfg.lr is not None else optim_cfg.base_lr * gb / 256
        return cls(spe, total, 0, lr, gb).with_total(total, train_cfg, optim_cfg)

    def with_total(self, total: int, train_cfg: TrainConfig, optim_cfg: OptimConfig) -> Schedule:
        """This schedule over ``total`` steps (a time budget's), warmup scaled as ``epochs`` would scale it."""
        spe = self.steps_per_epoch
        warmup = int(round(optim_cfg.warmup_epochs * spe * total / max(train_cfg.epochs * spe, 1)))
        return Schedule(spe, total, min(warmup, total), self.lr, self.global_batch)


class Hook(Protocol):
    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


@dataclass
class FitResult:
    step: int
    total_steps: int
    preempted: bool
    last_loss: float | None
    checkpoint: Path | None
    skipped_steps: int = 0
    exit_code: int = 0  # of a stopped run: 130 after SIGINT, 143 after SIGTERM / SIGUSR1
    usage: dict[str, Any] = field(default_factory=dict)  # steps, train_minutes, budget (medmae.engine.budget.usage)


@dataclass
class Trainer:
    model: nn.Module
    dataset: torch.utils.data.Dataset
    param_groups: list[dict]
    train_cfg: TrainConfig
    optim_cfg: OptimConfig
    run_dir: Path
    dist: DistInfo
    step_fn: StepFn
    hooks: Sequence[Hook] = ()
    checkpoint_metadata: dict[str, str] = field(default_factory=dict)
    case_ids: Sequence[str] | None = None
    num_workers: int = 0
    sample_weights: Sequence[float] | None = None
    sample_groups: Sequence[int] | None = None  # a large pack's shards: the sampler's grouped order
    run_files: dict[str, str] = field(default_factory=dict)  # written into run_dir once the resume point is restored
    logging_cfg: LoggingConfig = field(default_factory=LoggingConfig)  # the `logging` section: sinks, progress lines
    step: int = 0
    epoch: int = 0
    tracker: Tracker = field(default_factory=Tracker, init=False, repr=False)  # rank 0's sinks while fit() runs
    metrics: MetricsLog | None = field(default=None, init=False, repr=False)  # hooks write their rows through it
    budget: Budget | None = None
    cost_key: str | None = None  # what a step costs (medmae.engine.budget.cost_key), recorded with the budget
    given_budget: Budget | None = None  # another run's budget: its step time is used when its cost_key is this one
    elapsed_s: float = 0.0  # training-loop seconds of the earlier sessions of this run (from the checkpoint)
    _session_start: float = field(default=0.0, init=False, repr=False)
    parallel: Replicated | Sharded | None = None  # set by fit: how the model is spread over the processes

    @property
    def ckpt_root(self) -> Path:
        return checkpoints_dir(self.run_dir)

    def save(self, optimizer: torch.optim.Optimizer, schedule: Schedule, skipped: int, good_since: int) -> Path | None:
        """Checkpoint the current step; weights gone non-finite since step ``good_since`` stop the run instead."""
        model_state = self.parallel.model_state()  # FSDP: the shards gathered (every rank)
        bad = ckpt.non_finite_keys(model_state)
        if bad:  # every rank holds the same weights, so every rank stops here
            when = f"at step {self.step}" if good_since + 1 == self.step else \
                f"between step {good_since + 1} and step {self.step}"
            raise NonFiniteLossError(
                f"the weights became non-finite ({', '.join(bad[:3])}) {when}, so they were not saved "
                f"(a learning rate too large? optim.lr); "
                f"last good checkpoint: {ckpt.find_latest_valid(self.ckpt_root)}")
        rngs = gather_objects(rng_state(), self.dist)
        optimizer_state = self.parallel.optimizer_state(optimizer)
        path = None
        if self.dist.is_main:
            train_state = {
                "step": self.step,
                "optimizer": optimizer_state,
                "rng": rngs,
                "skipped_steps": skipped,
                "world_size": self.dist.world_size,
                "total_steps": schedule.total_steps,
                "global_batch": schedule.global_batch,
                "budget": self.budget.as_dict() if self.budget else None,
                "elapsed_s": self.elapsed_s + time.perf_counter() - self._session_start,
                "loader": self._loader_state(schedule),
            }
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                model_state=model_state,
                train_state=train_state,
                metadata={"kind": "train_checkpoint", **self.checkpoint_metadata},
                keep_last=self.train_cfg.keep_last,
            )
        barrier(self.dist)
        return path

    def _resume_point(self, how: str | None) -> ckpt.Loaded | None:
        """Rank 0 chooses (and quarantines); the other ranks load the checkpoint it chose."""
        chosen: dict[str, ckpt.Loaded | None] = {}

        def choose() -> Path | None:
            chosen["loaded"] = choose_resume(self.ckpt_root, how)
            return chosen["loaded"].path if chosen["loaded"] is not None else None

        path = on_main(choose, self.dist)
        if path is None:
            return None
        return chosen.get("loaded") or ckpt.load_checkpoint(path)

    def fit(self, *, max_steps: int | None = None, resume: str | None = None) -> FitResult:
        """Train to the schedule's end (or a stop signal); the tracking sinks are closed however it ends.

        A collective that fails because another process died becomes one :class:`PeerLostError` line."""
        try:
            return self._fit(max_steps=max_steps, resume=resume)
        except RuntimeError as e:
            if not (self.dist.enabled and is_peer_failure(e)):
                raise
            raise peer_lost(e, self.dist, self.step, ckpt.find_latest_valid(self.ckpt_root)) from None
        finally:
            self.tracker.close()

    def _fit(self, *, max_steps: int | None, resume: str | None) -> FitResult:
        cfg, dev = self.train_cfg, self.dist.device
        schedule = Schedule.build(len(self.dataset), cfg, self.optim_cfg, max_steps, self.dist.world_size)
        self.model.to(dev)
        self.parallel = wrap(self.model, self.param_groups, cfg.parallel, self.dist)
        optimizer = build_optimizer(self.parallel.param_groups, self.parallel.optim_config(self.optim_cfg),
                                    lr=schedule.lr)
        metrics = MetricsLog(self.run_dir, enabled=self.dist.is_main)
        if self.dist.is_main:
            ckpt.clean_partial(self.ckpt_root)
        skipped = 0
        loaded = self._resume_point(resume)
        self._session_start = time.perf_counter()
        if loaded is not None:
            self.step, skipped = restore(loaded, self.model, optimizer, self.dist.rank, self.dist.world_size,
                                         load_optimizer=self.parallel.load_optimizer_state)
            self.parallel.pull()
            self.elapsed_s = float(loaded.train_state.get("elapsed_s") or 0.0)
            log.info("resumed from %s (step %d)", loaded.path, self.step)
            check_resume(loaded.train_state.get("loader"), self._loader_state(schedule))
        if self.dist.is_main:
            metrics.truncate_after(self.step)
            drop_newer(self.ckpt_root, self.step)
            for name, text in self.run_files.items():
                (self.run_dir / name).write_text(text)
            self.tracker = metrics.tracker = open_tracker(self.run_dir, self.logging_cfg, start_step=self.step)
        self.metrics = metrics
        schedule_steps = schedule.total_steps  # what epochs / max_steps give: the most a budget may grow to
        if cfg.max_minutes:  # fixed once: a resumed run takes its checkpoint's step count (medmae.engine.budget)
            saved = loaded.train_state.get("budget") if loaded is not None else None
            self.budget, measured = fix_budget(cfg.max_minutes, schedule.total_steps, saved,
                                               lambda: self._measure_step(schedule), key=self.cost_key,
                                               given=self.given_budget)
            schedule = schedule.with_total(self.budget.total_steps, cfg, self.optim_cfg)
            if measured:
                metrics.write({"kind": "budget", "step": self.step, **self.budget.as_dict()})
            self._session_start = time.perf_counter()
        if loaded is not None and loaded.train_state.get("total_steps") != schedule.total_steps:
            log.warning("schedule length changed on resume (%s -> %s steps)",
                        loaded.train_state.get("total_steps"), schedule.total_steps)
        model = self.parallel.step_model
        if cfg.compile:
            model = torch.compile(model)
        params = [p for g in self.parallel.param_groups for p in g["params"]]
        clip = self.optim_cfg.clip_grad if self.optim_cfg.clip_grad else math.inf
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        consecutive, last_loss, last_saved, good_since = 0, None, None, self.step
        timer = LoopTimer.for_budget(self.budget, self.step)  # re-fixes a measured budget once from the loop's speed
        progress = Progress(schedule.total_steps, self.step, enabled=self.dist.is_main, log_every=cfg.log_every,
                            every_s=self.logging_cfg.progress_every_s, batch=schedule.global_batch)
        self.model.train()
        with StopRequest() as stop, progress:
            spe = schedule.steps_per_epoch
            first_epoch, skip = divmod(self.step, spe)
            sampler = EpochBatchSampler(len(self.dataset), schedule.global_batch, seed=cfg.seed, epoch=first_epoch,
                                        rank=self.dist.rank, world_size=self.dist.world_size, skip_batches=skip,
                                        weights=self.sample_weights, groups=self.sample_groups,
                                        epochs=-(-schedule_steps // spe) - first_epoch)
            loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                generator=torch.Generator().manual_seed(cfg.seed), pin_memory=dev.type == "cuda",
                                worker_init_fn=ignore_stop_signals)
            t0 = time.perf_counter()
            for batch in loader:
                if self.step >= schedule.total_steps:
                    break
                self.epoch = self.step // spe
                lr = scheduled_lr(self.step, self.optim_cfg, lr=schedule.lr, total_steps=schedule.total_steps,
                                  warmup_steps=schedule.warmup_steps)
                set_lr(optimizer, lr)
                batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                with amp:
                    out = self.step_fn(model, batch)
                loss = out["loss"]
                loss.backward()
                grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, clip))
                stats = torch.stack([loss.detach().float(), torch.tensor(float(not torch.isfinite(loss)), device=dev)])
                stats = all_reduce_sum(stats, self.dist)
                mean_loss = (stats[0] / self.dist.world_size).item()
                finite = stats[1].item() == 0 and math.isfinite(mean_loss) and bool(torch.isfinite(grad_norm))
                if finite:
                    optimizer.step()
                    consecutive = 0
                else:
                    skipped += 1
                    consecutive += 1
                    ids = self._case_ids(batch)
                    log.warning("step %d: non-finite loss/gradient (loss=%s), step skipped; cases %s",
                                self.step + 1, mean_loss, ids)
                    if consecutive >= cfg.nan_max_consecutive:
                        weights = " (the weights are non-finite: lower optim.lr?)" \
                            if ckpt.non_finite_keys(self.parallel.model_state()) else ""
                        raise NonFiniteLossError(
                            f"{consecutive} consecutive non-finite steps (last at step {self.step + 1}, cases {ids})"
                            f"{weights}; last good checkpoint: {ckpt.find_latest_valid(self.ckpt_root)}")
                optimizer.zero_grad(set_to_none=True)
                self.step += 1
                now = time.perf_counter()
                row = {"step": self.step, "epoch": self.epoch, "loss": mean_loss, "lr": lr,
                       "grad_norm": float(grad_norm), "skipped": skipped,
                       "items_per_s": schedule.global_batch / max(now - t0, 1e-9), "time_s": time.time()}
                row.update({k: float(v.detach()) for k, v in out.items() if k != "loss" and torch.is_tensor(v)})
                metrics.write(row)
                progress.update(self.step, row)
                t0 = now
                last_loss = mean_loss if finite else last_loss
                if timer is not None and (loop_s := timer.tick(self.step)) is not None:
                    schedule, timer = self._refix(schedule, loop_s, schedule_steps), None
                    progress.set_total(schedule.total_steps)
                stop_code = int(all_reduce_max(torch.tensor([float(stop.exit_code)], device=dev), self.dist).item())
                if stop_code or self.step % cfg.checkpoint_every == 0 or self.step == schedule.total_steps:
                    last_saved = self.save(optimizer, schedule, skipped, good_since) or last_saved
                    good_since = self.step
                if stop_code:
                    log.warning("%s: checkpoint at step %d saved, exiting (--resume auto continues)",
                                "interrupted" if stop_code == EXIT_INTERRUPTED else "pre-emption signal", self.step)
                    return FitResult(self.step, schedule.total_steps, True, last_loss, last_saved, skipped, stop_code,
                                     self.usage())
                if self.step % spe == 0:
                    self.parallel.sync()  # FSDP: rank 0's hooks use the plain model
                    for hook in self.hooks:
                        hook.on_epoch_end(self, self.step // spe - 1)
        self.parallel.sync()
        for hook in self.hooks:
            hook.on_fit_end(self)
        if last_saved is None and self.dist.is_main:
            last_saved = ckpt.find_latest_valid(self.ckpt_root)
        return FitResult(self.step, schedule.total_steps, False, last_loss, last_saved, skipped, usage=self.usage())

    def _refix(self, schedule: Schedule, loop_s: float, schedule_steps: int) -> Schedule:
        """The schedule over the budget re-fixed from the loop's step time (the slowest process's), logged."""
        slowest = all_reduce_max(torch.tensor([loop_s], dtype=torch.float64, device=self.dist.device), self.dist)
        if self.budget is None:  # only a budgeted run has a loop timer
            return schedule
        self.budget = refix_budget(self.budget, self.step, float(slowest.item()), schedule_steps)
        if self.metrics is not None:
            self.metrics.write({"kind": "budget", "step": self.step, **self.budget.as_dict()})
        return schedule.with_total(self.budget.total_steps, self.train_cfg, self.optim_cfg)

    def _measure_step(self, schedule: Schedule) -> tuple[float, int]:
        """Seconds per step and the steps timed, on this run's model and data (the slowest process's), leaving no
        trace: a first short timing, then, when its steps are short, a longer one of ``calibration_steps`` steps
        (augmentation makes single steps vary; every process runs the same number of steps)."""
        def timed(steps: int) -> float:
            step_s = measure_step_time(self.model, self.dataset, self.param_groups, self.optim_cfg, self.step_fn,
                                       batch=schedule.global_batch // self.dist.world_size, device=self.dist.device,
                                       lr=schedule.lr, bf16=self.train_cfg.precision == "bf16", steps=steps)
            slowest = all_reduce_max(torch.tensor([step_s], dtype=torch.float64, device=self.dist.device), self.dist)
            return float(slowest.item())  # float64: 0.6 s must stay 0.6, not 0.6000000238

        first = timed(CALIBRATION_STEPS)
        more = calibration_steps(first, self.train_cfg.max_minutes or 0.0)
        return (timed(more), more - 1) if more > CALIBRATION_STEPS else (first, CALIBRATION_STEPS - 1)

    def usage(self) -> dict[str, Any]:
        """Steps reached, training minutes over all sessions, and the budget (``summary.json`` / ``task.json``)."""
        return usage(self.budget, self.step, self.elapsed_s + time.perf_counter() - self._session_start)

    def _loader_state(self, schedule: Schedule) -> dict[str, Any]:
        if not hasattr(self, "_data_digests"):  # hashed once per run
            order = order_kind(self.sample_weights, self.sample_groups)
            self._data_digests = (digest(self.case_ids), digest(self.sample_weights),
                                  f"{order} {digest(self.sample_groups)}" if order == "shard-windows" else order)
        return loader_state(self.step, schedule.steps_per_epoch, schedule.global_batch, self.train_cfg.seed,
                            *self._data_digests)

    def _case_ids(self, batch: dict[str, Any]) -> list[str]:
        idx = batch.get("index")
        if idx is None or self.case_ids is None:
            return []
        return [self.case_ids[int(i)] for i in idx]
