"""``medmae finetune``: classification or segmentation from a pretrained encoder (or from scratch)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from medmae.config import (
    ConfigError,
    FinetuneConfig,
    apply_overrides,
    dump_yaml,
    finetune_raw_from_preset,
    load_raw,
    set_data_path,
    validate,
)
from medmae.data.cases import Case, DatasetSpec
from medmae.data.augment import make_augment
from medmae.data.dataset import CaseDataset
from medmae.data.labels import class_targets
from medmae.data.pipeline import prepare, resolve_spec
from medmae.data.preprocess import CaseError, Preprocessing
from medmae.data.splits import kfold, label_fraction, require_both_classes, save_json, train_test_split
from medmae.engine.budget import Budget, cost_key, read_budget
from medmae.engine.distributed import DistInfo, check_batch, barrier, init_distributed, set_threads
from medmae.engine.loop import StepFn, Trainer
from medmae.engine.optim import param_groups
from medmae.errors import Interrupted
from medmae.models.adapt import build_task_model
from medmae.models.monai_nets import build_baseline
from medmae.models.registry import family
from medmae.models.resenc import deep_supervision_loss
from medmae.planning.plan_file import PlanFile, finetune_config_from_plan, read_plan
from medmae.run_layout import CONFIG_FILE, EXPORT_DIR, PLAN_FILE, PRETRAIN_CASES, SPLITS_FILE, TASK_FILE
from medmae.tasks.arms import BASELINE, add_to_task_json, arm_record
from medmae.tasks.run_dir import prepare_run_dir, write_bad_cases
from medmae.tasks.task_labels import check_mask_values, check_regions, task_labels

log = logging.getLogger(__name__)

ConfigSource = str | Path | FinetuneConfig | Mapping[str, Any] | None


def resolve_finetune_config(config: ConfigSource = None, *, task: str | None = None, preset: str | None = None,
                            data: str | Path | None = None, overrides: Iterable[str] = (),
                            plan: PlanFile | None = None) -> FinetuneConfig:
    """Fine-tuning config from a preset's ``finetune.<task>`` section, a YAML file, a plan, or defaults."""
    if plan is not None:
        if config is not None or preset is not None:
            raise ConfigError("give one of CONFIG, --preset or --plan")
        cfg = finetune_config_from_plan(plan, task or plan.meta.get("task") or "seg", list(overrides))
        if data is not None:
            set_data_path(cfg, data)
        return cfg
    if isinstance(config, FinetuneConfig):
        raw = config.model_dump(mode="json")
    elif preset is not None:
        if task is None:
            raise ConfigError("--task cls|seg is needed with --preset")
        raw = finetune_raw_from_preset(preset, task)
    elif config is not None:
        raw = dict(config) if isinstance(config, dict) else load_raw(config, None)[0]
    else:
        raw = {}
    if task is not None:
        raw["task"] = task
    cfg = validate(FinetuneConfig, apply_overrides(raw, overrides), f"fine-tuning config ({preset or config or 'defaults'})")
    if data is not None:
        set_data_path(cfg, data)
    return cfg




def foreground_points(mask: np.ndarray, limit: int = 4096, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` foreground voxel coordinates of a mask, for foreground-centred crops."""
    pts = np.argwhere(np.asarray(mask) > 0)
    if len(pts) > limit:
        pts = pts[np.random.default_rng(seed).choice(len(pts), limit, replace=False)]
    return pts


# ------------------------------------------------------------------------------------------------ splits


def make_splits(cfg: FinetuneConfig, cases: Sequence[Case]) -> dict[str, Any]:
    """Train / val / test case ids and the label fraction.

    With ``eval.folds`` the held-out part is fold ``eval.fold`` of a patient-level stratified k-fold over the
    data's training cases (``folds`` is saved too, in nnU-Net's ``splits_final.json`` shape); otherwise the
    data's own test split when it has one, else a seeded patient-level stratified split, or none at all with
    ``eval.test_fraction=0`` (every case trains; evaluate on other data).
    """
    given = {c.split for c in cases}
    if cfg.eval.folds:
        if cfg.eval.fold >= cfg.eval.folds:
            raise ConfigError(f"eval.fold={cfg.eval.fold} but eval.folds={cfg.eval.folds}")
        pool = [c for c in cases if (c.split or "train") == "train"]
        folds = kfold(pool, cfg.eval.folds, seed=cfg.eval.split_seed)
        fold = folds[cfg.eval.fold]
        split = {"train": fold["train"], "val": [], "test": fold["val"], "folds": folds,
                 "origin": f"fold {cfg.eval.fold} of {cfg.eval.folds} (seed {cfg.eval.split_seed})"}
    elif "test" in given:
        split = {"train": sorted(c.case_id for c in cases if (c.split or "train") == "train"),
                 "val": sorted(c.case_id for c in cases if c.split in ("val", "validation")),
                 "test": sorted(c.case_id for c in cases if c.split == "test"),
                 "origin": "dataset"}
    elif cfg.eval.test_fraction == 0:
        split = {"train": sorted(c.case_id for c in cases), "val": [], "test": [],
                 "origin": "none held out (eval.test_fraction=0)"}
    else:
        split = {**train_test_split(cases, test_fraction=cfg.eval.test_fraction, val_fraction=cfg.eval.val_fraction,
                                    seed=cfg.eval.split_seed), "origin": f"seeded ({cfg.eval.split_seed})"}
    by_id = {c.case_id: c for c in cases}
    train_cases = [by_id[i] for i in split["train"]]
    subset_seed = cfg.data.label_seed if cfg.data.label_seed is not None else cfg.eval.split_seed
    used = label_fraction(train_cases, cfg.data.label_fraction, seed=subset_seed) \
        if cfg.data.label_fraction < 1 else split["train"]
    split["train_used"] = used
    split["label_fraction"] = cfg.data.label_fraction
    return split


def pretraining_record(init: str | Path | None) -> Path | None:
    """``pretrain_cases.json`` of the pretraining run behind ``init`` (a run dir or its export), if any."""
    if init in (None, "scratch"):
        return None
    p = Path(init)
    run = p if p.is_dir() else (p.parent.parent if p.parent.name == EXPORT_DIR else None)
    cand = run / PRETRAIN_CASES if run is not None else None
    return cand if cand is not None and cand.is_file() else None


# ------------------------------------------------------------------------------------------------ run


def loss_fn(cfg: FinetuneConfig, info: dict[str, Any]) -> StepFn:
    if cfg.task == "cls":
        if info["multilabel"]:
            bce = nn.BCEWithLogitsLoss()
            smooth = cfg.loss.label_smoothing
            return lambda m, b: {"loss": bce(m(b["image"]).float(), b["target"].float() * (1 - smooth) + smooth / 2)}
        ce = nn.CrossEntropyLoss(label_smoothing=cfg.loss.label_smoothing)
        return lambda m, b: {"loss": ce(m(b["image"]).float(), b["target"])}
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=cfg.loss.dice_weight, lambda_ce=cfg.loss.ce_weight)

    def seg_step(m, b):
        out, target = m(b["image"]), b["mask"][:, None]
        if isinstance(out, (list, tuple)):  # deep supervision: logits at several scales, full resolution first
            return {"loss": deep_supervision_loss(lambda y, t: dice_ce(y.float(), t), out, target)}
        return {"loss": dice_ce(out.float(), target)}

    return seg_step


def step_cost(cfg: FinetuneConfig, dist: DistInfo) -> dict[str, Any]:
    """What a training step costs besides the network's shapes: batch, processes, precision, crop, data and
    augmentation, loss, optimizer (not its lr or layer decay, nor the label subset)."""
    return {"batch": cfg.train.batch_size, "processes": dist.world_size, "precision": cfg.train.precision,
            "compile": cfg.train.compile, "crop": list(cfg.model.img_size), "optimizer": cfg.optim.name,
            "loss": cfg.loss.model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json", exclude={"label_fraction", "label_seed"})}


def given_budget(run: str | Path | None, max_minutes: float | None) -> Budget | None:
    """The budget another fine-tuning run fixed (``--step-time-from``), with the run named in it; None without
    ``train.max_minutes`` here (a step count is given, nothing to convert)."""
    if run is None:
        return None
    if not Path(run).is_dir():
        raise ConfigError(f"--step-time-from {run}: no such run directory")
    if not max_minutes:
        log.warning("--step-time-from %s has no effect: this run has no train.max_minutes", run)
        return None
    budget = read_budget(Path(run))
    if budget is None:
        log.warning("--step-time-from %s: that run measured no step time (no train.max_minutes?): measuring", run)
        return None
    return replace(budget, step_s_from=str(run))


def finetune(
    config: ConfigSource = None,
    *,
    task: str | None = None,
    init: str | Path | None = "scratch",
    preset: str | None = None,
    data: str | Path | None = None,
    run_dir: str | Path,
    overrides: Iterable[str] = (),
    max_steps: int | None = None,
    resume: str | None = None,
    plan: str | Path | None = None,
    step_time_from: str | Path | None = None,
) -> Path:
    """Fine-tune for ``task`` ('cls' or 'seg') from ``init`` (run dir, encoder file, 'scratch' or 'baseline:NAME':
    a MONAI network from scratch); ``plan``: a ``medmae plan`` file instead of ``config`` / ``preset``;
    ``step_time_from``: a run whose measured step time ``train.max_minutes`` uses where the step costs the same
    (the same network, batch and data: a sweep's arms then get the same step count). Returns the run dir."""
    plan_file = read_plan(plan) if plan is not None else None
    cfg = resolve_finetune_config(config, task=task, preset=preset, data=data, overrides=overrides, plan=plan_file)
    if cfg.data.sources:
        raise ConfigError("fine-tuning takes one labelled dataset (data.path), not a pool (data.sources)")
    if cfg.data.slice_axis is not None:
        raise ConfigError("data.slice_axis is for pretraining a 2D encoder on slices of volumes; fine-tune it on "
                          "2D images (evaluation and prediction work on whole images)")
    step_time = given_budget(step_time_from, cfg.train.max_minutes)
    run_dir = Path(run_dir)
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    check_batch(cfg.train.batch_size, dist)
    set_threads(cfg.train.threads)

    spec = resolve_spec(cfg.data).select(cfg.data.splits)
    labelled = [c for c in spec.cases if (c.mask if cfg.task == "seg" else c.label is not None)]
    if not labelled:
        raise ConfigError(f"no labelled cases for task {cfg.task!r} in {cfg.data.path or 'synthetic data'}")
    info = task_labels(cfg, spec)
    split = make_splits(cfg, labelled)
    by_id = {c.case_id: c for c in labelled}
    train_cases = [by_id[i] for i in split["train_used"]]
    if cfg.task == "cls":
        targets = class_targets(train_cases, info)
        test_cases = [by_id[i] for i in split["test"]]
        class_targets(test_cases, info)  # bad labels in the held-out split fail now, not after training
        if test_cases:
            require_both_classes(test_cases, info["classes"], f"held-out split ({split['origin']})")

    torch.manual_seed(cfg.train.seed)
    decay, arm = arm_record(cfg, init)
    if arm["arm"] == BASELINE:
        if cfg.mode == "linear_probe":
            raise ConfigError(f"--init {init}: a baseline trains from scratch; mode=linear_probe needs a pretrained encoder")
        model, report = build_baseline(str(init), cfg, info["num_outputs"]), None
    else:
        model, report = build_task_model(cfg, info["num_outputs"], None if init is None else str(init))
    if plan_file is not None:
        arm["plan"] = plan_file.summary()
    with prepare_run_dir(run_dir, dump_yaml(cfg), resume, dist):  # locked until the run ends
        record = pretraining_record(init)
        if dist.is_main:
            (run_dir / TASK_FILE).write_text(json.dumps({**info, "init": str(init), "mode": cfg.mode,
                                                         "pretraining_cases": str(record) if record else None,
                                                         "load_report": report.as_dict() if report else None, **arm},
                                                        indent=1))
            save_json(run_dir / SPLITS_FILE, split)

        prep = Preprocessing.from_config(cfg.data, cfg.model)
        skipped: list[dict[str, str]] | None = [] if cfg.data.on_bad_case == "skip" else None
        prepared = prepare(DatasetSpec(spec.root, train_cases), prep, cfg.data, with_masks=cfg.task == "seg",
                           show_progress=dist.is_main, skipped=skipped)
        if skipped:
            if len(skipped) > cfg.data.max_bad_fraction * len(train_cases):
                raise CaseError(f"{len(skipped)} of {len(train_cases)} training cases could not be read; first: {skipped[0]['error']}")
            if dist.is_main:
                write_bad_cases(run_dir, skipped)
            if cfg.task == "cls":
                kept = {p.case.case_id for p in prepared}
                targets = targets[[i for i, c in enumerate(train_cases) if c.case_id in kept]]
        crop = tuple(cfg.model.img_size)
        augment = make_augment(cfg.data, crop, cfg.model.spatial_dims, foreground_prob=cfg.data.foreground_prob)
        if cfg.task == "seg":
            check_regions(cfg, info)
            check_mask_values(prepared, info)
            if split["test"]:
                held_out = prepare(DatasetSpec(spec.root, [by_id[i] for i in split["test"]]), prep, cfg.data,
                                   with_masks=True, show_progress=False)  # bad test masks fail now (and are cached)
                check_mask_values(held_out, info)
            fg = [foreground_points(p.mask, seed=i) for i, p in enumerate(prepared)] if cfg.data.foreground_prob > 0 else None
            dataset = CaseDataset(prepared, crop, augment=augment, seed=cfg.train.seed, foreground=fg)
        else:
            dataset = CaseDataset(prepared, crop, augment=augment, seed=cfg.train.seed, targets=targets)
        log.info("%s fine-tuning on %d of %d training cases (%s), init %s", cfg.task, len(train_cases),
                 len(split["train"]), f"{cfg.data.label_fraction:.0%} of labels", init)

        if arm["arm"] == BASELINE:
            groups = param_groups(model, cfg.optim.weight_decay)
        else:
            fam = family(cfg.model.arch)
            groups = param_groups(model, cfg.optim.weight_decay, layer_id=lambda n: fam.layer_id(n, model),
                                  num_layers=fam.num_layers(model), layer_decay=decay)
        trainer = Trainer(
            model=model, dataset=dataset, param_groups=groups, train_cfg=cfg.train, optim_cfg=cfg.optim,
            run_dir=run_dir, dist=dist, step_fn=loss_fn(cfg, info), cost_key=cost_key(model, step_cost(cfg, dist)),
            given_budget=step_time,
            checkpoint_metadata={"stage": "finetune", "task": cfg.task, "arch": cfg.model.arch, "init": str(init),
                                 **({"plan_sha256": plan_file.sha256} if plan_file else {})},
            case_ids=[p.case.case_id for p in prepared], num_workers=cfg.data.num_workers,
            run_files={CONFIG_FILE: dump_yaml(cfg), **({PLAN_FILE: plan_file.text} if plan_file else {})},
            logging_cfg=cfg.logging,
        )
        result = trainer.fit(max_steps=max_steps, resume=resume)
        if dist.is_main:
            add_to_task_json(run_dir / TASK_FILE, training=result.usage)
        if result.preempted:
            raise Interrupted(result.step, result.exit_code)
        barrier(dist)
        return run_dir
