"""The one training loop, shared by pretraining and fine-tuning.

AdamW with warmup + cosine, gradient clipping, optional bf16 autocast, a NaN/Inf guard, per-step
metrics, atomic checkpoints, exact resume, pre-emption by SIGTERM/SIGUSR1 and Ctrl-C, single process or torchrun DDP.
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from medmae.config import OptimConfig, TrainConfig
from medmae.data.dataset import EpochBatchSampler
from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, gather_objects, on_main
from medmae.engine.loader_state import check_resume, digest, loader_state
from medmae.engine.logging import MetricsLog, is_interactive
from medmae.engine.optim import build_optimizer, scheduled_lr, set_lr
from medmae.engine.resume import choose as choose_resume
from medmae.engine.resume import drop_newer, restore, rng_state
from medmae.engine.signals import StopRequest, ignore_stop_signals
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
        warmup = int(round(optim_cfg.warmup_epochs * spe * total / max(train_cfg.epochs * spe, 1)))
        lr = optim_cfg.lr if optim_cfg.lr is not None else optim_cfg.base_lr * gb / 256
        return cls(spe, total, min(warmup, total), lr, gb)


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
    run_files: dict[str, str] = field(default_factory=dict)  # written into run_dir once the resume point is restored
    step: int = 0
    epoch: int = 0

    @property
    def ckpt_root(self) -> Path:
        return checkpoints_dir(self.run_dir)

    def save(self, optimizer: torch.optim.Optimizer, schedule: Schedule, skipped: int, good_since: int) -> Path | None:
        """Checkpoint the current step; weights gone non-finite since step ``good_since`` stop the run instead."""
        bad = ckpt.non_finite_keys(self.model.state_dict())
        if bad:  # every rank holds the same weights, so every rank stops here
            when = f"at step {self.step}" if good_since + 1 == self.step else \
                f"between step {good_since + 1} and step {self.step}"
            raise NonFiniteLossError(
                f"the weights became non-finite ({', '.join(bad[:3])}) {when}, so they were not saved "
                f"(a learning rate too large? optim.lr); "
                f"last good checkpoint: {ckpt.find_latest_valid(self.ckpt_root)}")
        rngs = gather_objects(rng_state(), self.dist)
        path = None
        if self.dist.is_main:
            train_state = {
                "step": self.step,
                "optimizer": optimizer.state_dict(),
                "rng": rngs,
                "skipped_steps": skipped,
                "world_size": self.dist.world_size,
                "total_steps": schedule.total_steps,
                "global_batch": schedule.global_batch,
                "loader": self._loader_state(schedule),
            }
            path = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                model_state=self.model.state_dict(),
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
        cfg, dev = self.train_cfg, self.dist.device
        schedule = Schedule.build(len(self.dataset), cfg, self.optim_cfg, max_steps, self.dist.world_size)
        self.model.to(dev)
        optimizer = build_optimizer(self.param_groups, self.optim_cfg, lr=schedule.lr)
        metrics = MetricsLog(self.run_dir, enabled=self.dist.is_main)
        if self.dist.is_main:
            ckpt.clean_partial(self.ckpt_root)
        skipped = 0
        loaded = self._resume_point(resume)
        if loaded is not None:
            self.step, skipped = restore(loaded, self.model, optimizer, self.dist.rank, self.dist.world_size)
            if loaded.train_state.get("total_steps") != schedule.total_steps:
                log.warning("schedule length changed on resume (%s -> %s steps)",
                            loaded.train_state.get("total_steps"), schedule.total_steps)
            log.info("resumed from %s (step %d)", loaded.path, self.step)
            check_resume(loaded.train_state.get("loader"), self._loader_state(schedule))
        if self.dist.is_main:
            metrics.truncate_after(self.step)
            drop_newer(self.ckpt_root, self.step)
            for name, text in self.run_files.items():
                (self.run_dir / name).write_text(text)
        model = self.model
        if self.dist.enabled:
            model = DistributedDataParallel(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.compile:
            model = torch.compile(model)
        params = [p for g in self.param_groups for p in g["params"]]
        clip = self.optim_cfg.clip_grad if self.optim_cfg.clip_grad else math.inf
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        consecutive, last_loss, last_saved, good_since = 0, None, None, self.step
        progress = _Progress(schedule.total_steps, self.step, enabled=self.dist.is_main, log_every=cfg.log_every)
        self.model.train()
        with StopRequest() as stop, progress:
            spe = schedule.steps_per_epoch
            first_epoch, skip = divmod(self.step, spe)
            sampler = EpochBatchSampler(len(self.dataset), schedule.global_batch, seed=cfg.seed, epoch=first_epoch,
                                        rank=self.dist.rank, world_size=self.dist.world_size, skip_batches=skip,
                                        weights=self.sample_weights, epochs=-(-schedule.total_steps // spe) - first_epoch)
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
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
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
                            if ckpt.non_finite_keys(self.model.state_dict()) else ""
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
                stop_code = int(all_reduce_max(torch.tensor([float(stop.exit_code)], device=dev), self.dist).item())
                if stop_code or self.step % cfg.checkpoint_every == 0 or self.step == schedule.total_steps:
                    last_saved = self.save(optimizer, schedule, skipped, good_since) or last_saved
                    good_since = self.step
                if stop_code:
                    log.warning("%s: checkpoint at step %d saved, exiting (--resume auto continues)",
                                "interrupted" if stop_code == EXIT_INTERRUPTED else "pre-emption signal", self.step)
                    return FitResult(self.step, schedule.total_steps, True, last_loss, last_saved, skipped, stop_code)
                if self.step % spe == 0:
                    for hook in self.hooks:
                        hook.on_epoch_end(self, self.step // spe - 1)
        for hook in self.hooks:
            hook.on_fit_end(self)
        if last_saved is None and self.dist.is_main:
            last_saved = ckpt.find_latest_valid(self.ckpt_root)
        return FitResult(self.step, schedule.total_steps, False, last_loss, last_saved, skipped)

    def _loader_state(self, schedule: Schedule) -> dict[str, Any]:
        if not hasattr(self, "_data_digests"):  # hashed once per run
            self._data_digests = (digest(self.case_ids), digest(self.sample_weights))
        return loader_state(self.step, schedule.steps_per_epoch, schedule.global_batch, self.train_cfg.seed,
                            *self._data_digests)

    def _case_ids(self, batch: dict[str, Any]) -> list[str]:
        idx = batch.get("index")
        if idx is None or self.case_ids is None:
            return []
        return [self.case_ids[int(i)] for i in idx]


class _Progress:
    """rich progress bar on a terminal, a log line every ``log_every`` steps otherwise."""

    def __init__(self, total: int, start: int, *, enabled: bool, log_every: int):
        self.total, self.start, self.enabled, self.log_every = total, start, enabled, log_every
        self.bar = None

    def __enter__(self) -> _Progress:
        if self.enabled and is_interactive():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        info = f"loss {row['loss']:.4f} lr {row['lr']:.2e} {row['items_per_s']:.1f} it/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.total:
            log.info("step %d/%d %s", step, self.total, info)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
