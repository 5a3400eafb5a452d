"""``medmae pretrain``: MAE pretraining from a preset or config, on data given by path (or synthetic)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmae.config import ConfigError, PretrainConfig, dump_yaml, load_config, set_data_path
from medmae.data.cache import ArrayCache, atomic_write_chunks
from medmae.data.augment import make_augment
from medmae.data.cases import Chain, distinct
from medmae.data.dataset import CaseDataset, Prepared
from medmae.data.labels import class_targets
from medmae.data.packed import PackedPrepared, case_list, field_values
from medmae.data.pipeline import PoolPart, PreparedPool, prepare_pool, resolve_parts
from medmae.engine.distributed import check_batch, DistInfo, barrier, init_distributed, set_threads
from medmae.engine.loop import FitResult, Trainer
from medmae.engine.optim import param_groups
from medmae.errors import Interrupted
from medmae.figures import save_reconstruction_figure
from medmae.models.adapt import export_encoder
from medmae.models.registry import build_mae
from medmae.planning.plan_file import PlanFile, pretrain_config_from_plan, read_plan
from medmae.run_layout import CONFIG_FILE, FIGURES_DIR, PLAN_FILE, PRETRAIN_CASES, SUMMARY_FILE, export_path
from medmae.tasks.monitor import KnnProbe
from medmae.tasks.run_dir import prepare_run_dir, write_bad_cases

log = logging.getLogger(__name__)


def resolve_pretrain_config(config: str | Path | PretrainConfig | Mapping[str, Any] | None = None, *,
                            preset: str | None = None, data: str | Path | None = None,
                            overrides: Iterable[str] = (), plan: PlanFile | None = None) -> PretrainConfig:
    given = [x for x in (config, preset, plan) if x is not None]
    if len(given) != 1:
        raise ConfigError("give one of CONFIG, --preset or --plan (`medmae plan SOURCE --task T` makes a plan from "
                          "your data)")
    cfg = pretrain_config_from_plan(plan, list(overrides)) if plan is not None else \
        load_config(PretrainConfig, config, preset=preset, overrides=overrides)
    if data is not None:
        set_data_path(cfg, data)
    return cfg


def fixed_cases(prepared: Sequence[Prepared], k: int) -> list[int]:
    """Indices of the cases shown in figures: evenly spread, the same in every run."""
    n = len(prepared)
    return sorted({int(i * n / k) for i in range(min(k, n))})


class ReconstructionFigures:
    """Hook: reconstruction figures of fixed cases with fixed masks every N epochs and at the end."""

    def __init__(self, dataset: CaseDataset, indices: Sequence[int], every: int, out_dir: Path, titles: Sequence[str]):
        self.dataset, self.indices, self.every, self.out_dir, self.titles = dataset, list(indices), every, out_dir, titles
        self.last_step = -1

    def write(self, trainer: Trainer, name: str) -> Path | None:
        if not trainer.dist.is_main or trainer.step == self.last_step:
            return None
        model = trainer.model
        items = [self.dataset[i] for i in self.indices]
        x = torch.stack([it["image"] for it in items]).to(trainer.dist.device)
        seeds = torch.tensor(self.indices, dtype=torch.int64)
        was_training = model.training
        model.eval()
        recon, mask = model.reconstruct(x, seeds)
        model.train(was_training)
        self.last_step = trainer.step
        path = save_reconstruction_figure(x, recon, mask, self.out_dir / f"{name}.png", titles=self.titles)
        trainer.tracker.figure("reconstruction", path, trainer.step)
        return path

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        if (epoch + 1) % self.every == 0:
            self.write(trainer, f"recon_epoch{epoch + 1:04d}")

    def on_fit_end(self, trainer: Trainer) -> None:
        self.write(trainer, f"recon_step{trainer.step:07d}")


def pretrain(
    config: str | Path | PretrainConfig | Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    data: str | Path | None = None,
    run_dir: str | Path,
    overrides: Iterable[str] = (),
    max_steps: int | None = None,
    resume: str | None = None,
    plan: str | Path | None = None,
) -> Path:
    """Pretrain an MAE; returns the run directory (checkpoints, export/encoder.safetensors, figures, metrics).
    ``plan``: a ``medmae plan`` file (its top level is the pretraining config) instead of ``config`` / ``preset``."""
    plan_file = read_plan(plan) if plan is not None else None
    cfg = resolve_pretrain_config(config, preset=preset, data=data, overrides=overrides, plan=plan_file)
    run_dir = Path(run_dir)
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    check_batch(cfg.train.batch_size, dist)
    set_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    model = build_mae(cfg)  # before the data: a config that cannot build fails at once
    with prepare_run_dir(run_dir, dump_yaml(cfg), resume, dist):
        return _pretrain_locked(cfg, model, run_dir, dist, max_steps, resume, plan_file)


def _pretrain_locked(cfg: PretrainConfig, model: nn.Module, run_dir: Path, dist: DistInfo,
                     max_steps: int | None, resume: str | None, plan: PlanFile | None = None) -> Path:
    """Data, training, export and summary of :func:`pretrain`, in its locked run directory."""
    parts = resolve_parts(cfg.data, cfg.model)
    if not any(p.spec.cases for p in parts):
        raise ConfigError(f"no cases in {cfg.data.path or [s.path for s in cfg.data.sources or []]} for splits {cfg.data.splits}")
    pool = prepare_pool(parts, cfg.data, show_progress=dist.is_main)
    prepared = pool.prepared
    if dist.is_main:
        record_data(run_dir, pool, cfg)
    log.info("%d cases from %s", len(prepared), pool.composition["sources"])
    crop = tuple(cfg.model.img_size)
    augment = make_augment(cfg.data, crop, cfg.model.spatial_dims)
    slice_axis = cfg.data.slice_axis if cfg.model.spatial_dims == 2 else None
    train_set = CaseDataset(prepared, crop, augment=augment, seed=cfg.train.seed, slice_axis=slice_axis)
    view_set = CaseDataset(prepared, crop, augment=None, seed=cfg.train.seed, slice_axis=slice_axis)

    shown = fixed_cases(prepared, cfg.data.figure_cases)
    figures = ReconstructionFigures(view_set, shown, cfg.train.figure_every, run_dir / FIGURES_DIR,
                                    [prepared[i].case.case_id for i in shown])
    trainer = Trainer(
        model=model,
        dataset=train_set,
        param_groups=param_groups(model, cfg.optim.weight_decay),
        train_cfg=cfg.train,
        optim_cfg=cfg.optim,
        run_dir=run_dir,
        dist=dist,
        step_fn=lambda m, b: m(b["image"], b["seed"]),
        hooks=[figures, *knn_probe(pool, parts, cfg, run_dir, view_set)],
        checkpoint_metadata={"stage": "pretrain", "arch": cfg.model.arch,
                             **({"plan_sha256": plan.sha256} if plan else {})},
        case_ids=field_values(case_list(prepared), "case_id"),  # lazy for a pack
        num_workers=cfg.data.num_workers,
        sample_weights=pool.weights,
        sample_groups=pool.groups,
        run_files={CONFIG_FILE: dump_yaml(cfg), **({PLAN_FILE: plan.text} if plan else {})},
        logging_cfg=cfg.logging,
    )
    result = trainer.fit(max_steps=max_steps, resume=resume)
    if result.preempted:
        raise Interrupted(result.step, result.exit_code)
    if dist.is_main:
        summary = write_summary(run_dir, result, view_set, model, shown, dist, plan)
        info = {k: summary[k] for k in ("learned", "masked_loss", "patch_mean_baseline")}
        path = export_encoder(run_dir, model, cfg, [p.prep for p in parts], result.step,
                              pretraining={**info, **({"plan": plan.summary()} if plan else {})})
        log.info("encoder exported to %s", path)
    barrier(dist)
    return run_dir


def knn_probe(pool: PreparedPool, parts: list[PoolPart], cfg: PretrainConfig, run_dir: Path,
              view_set: CaseDataset) -> list[KnnProbe]:
    """The k-NN monitor hook when ``monitor.every`` is set and the data has class labels (else none, with a warning)."""
    if not cfg.monitor.every:
        return []
    spec = parts[0].spec
    values, codes = distinct(case_list(pool.prepared), "label")
    labelled = np.flatnonzero(np.isin(codes, [k for k, v in enumerate(values) if v is not None])).tolist()
    if not spec.classes or len(labelled) < 4:
        log.warning("monitor.every is set but the pretraining data has no class labels: no k-NN probe")
        return []
    pick = [labelled[int(j * len(labelled) / min(cfg.monitor.max_cases, len(labelled)))]
            for j in range(min(cfg.monitor.max_cases, len(labelled)))]
    info = {"classes": spec.classes, "multilabel": spec.multilabel}
    targets = class_targets([pool.prepared[i].case for i in pick], info)
    subset = CaseDataset([pool.prepared[i] for i in pick], view_set.crop_size, augment=None, seed=cfg.train.seed,
                         slice_axis=view_set.slice_axis)
    return [KnnProbe(subset, targets, list(spec.classes), spec.multilabel, every=cfg.monitor.every, k=cfg.monitor.k,
                     run_dir=run_dir)]


def record_data(run_dir: Path, pool: PreparedPool, cfg: PretrainConfig) -> None:
    """What the MAE saw: case ids with content hashes (the leakage guard of later evaluations), the pool's
    composition, and the cases skipped by ``data.on_bad_case=skip`` (``bad_cases.jsonl``)."""
    def text() -> Iterator[bytes]:  # a chunk of cases at a time: a pool of millions is never one string in memory
        yield f'{{"composition": {json.dumps(pool.composition)}, "cases": ['.encode()
        for k, chunk in enumerate(c for c in case_records(pool.prepared, ArrayCache(cfg.data.cache_dir)) if c):
            yield ((", " if k else "") + json.dumps(chunk)[1:-1]).encode()
        yield b"]}"

    atomic_write_chunks(run_dir / PRETRAIN_CASES, text())
    if pool.skipped:
        write_bad_cases(run_dir, pool.skipped)


def case_records(prepared: Sequence[Prepared], cache: ArrayCache) -> Iterator[list[dict[str, Any]]]:
    """``pretrain_cases.json``'s record of each case, in chunks (a pack's read from its index columns)."""
    if isinstance(prepared, PackedPrepared):
        yield from prepared.records()
    elif isinstance(prepared, Chain):
        for part in prepared.parts:
            yield from case_records(part, cache)
    else:
        yield [{"case_id": p.case.case_id, "sha256": list(p.digests or [cache.file_digest(f) for f in p.case.image]),
                "source": p.case.source, "modality": p.case.modality} for p in prepared]


def write_summary(run_dir: Path, result: FitResult, view_set: CaseDataset, model: nn.Module, shown: Sequence[int],
                  dist: DistInfo, plan: PlanFile | None = None) -> dict[str, Any]:
    """``summary.json``: final loss and, on the figure cases, the masked-patch loss vs the patch-mean baseline
    (``learned``: whether it beats it; a warning when not), the training time and budget, the plan."""
    x = torch.stack([view_set[i]["image"] for i in shown]).to(dist.device)
    seeds = torch.tensor(list(shown), dtype=torch.int64)
    model.eval()
    with torch.no_grad():
        held = float(model(x, seeds)["loss"])
        baseline = float(model.mean_patch_baseline(x, seeds))
    summary = {
        "steps": result.step,
        "final_train_loss": result.last_loss,
        "skipped_steps": result.skipped_steps,
        "figure_cases_masked_loss": held,
        "figure_cases_patch_mean_baseline": baseline,
        **learning_verdict(held, baseline),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "encoder": str(export_path(run_dir)),
        "training": result.usage,
        "plan": plan.summary() if plan else None,
    }
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def learning_verdict(masked_loss: float, baseline: float) -> dict[str, Any]:
    """``learned``: the final masked loss beats the patch-mean baseline; a pretraining that did not is never silent."""
    learned = masked_loss < baseline
    if not learned:
        log.warning("the MAE did not learn: its masked loss %.4g does not beat predicting each masked patch by its "
                    "own mean (%.4g) on the figure cases; its encoder is unlikely to help fine-tuning (train longer, "
                    "lower the lr, or check the data and its intensity normalisation)", masked_loss, baseline)
    return {"learned": learned, "masked_loss": masked_loss, "patch_mean_baseline": baseline}
