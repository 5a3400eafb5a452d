"""``medmae evaluate``: metrics with bootstrap confidence intervals on a held-out split."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmae.baselines import accuracy_vs_baseline, decision_rule, trivial_accuracy
from medmae.config import ConfigError, FinetuneConfig
from medmae.data.cache import ArrayCache
from medmae.data.cases import Case, DatasetSpec
from medmae.data.dataset import Prepared
from medmae.data.image import PILLOW_SUFFIXES, image_suffix
from medmae.data.labels import class_targets
from medmae.data.pipeline import prepare, resolve_spec
from medmae.data.preprocess import Preprocessing
from medmae.data.readers import split_virtual
from medmae.data.sources import load_source
from medmae.data.splits import require_both_classes
from medmae.engine.distributed import set_threads
from medmae.errors import SourceError
from medmae.engine.tracking import track_summary
from medmae.metrics import regions_from_labels, segmentation_case_metrics, summarize_classification, summarize_segmentation
from medmae.run_layout import EVAL_DIR, PER_CASE_FILE, SPLITS_FILE, SUMMARY_FILE
from medmae.tasks.inference import classify, load_task_run, segment, tta_axes
from medmae.tasks.run_dir import eval_dir
from medmae.tasks.task_labels import check_mask_values

log = logging.getLogger(__name__)


def evaluation_cases(run_dir: Path, cfg: FinetuneConfig, data: str | Path | None, split: str) -> DatasetSpec:
    """The run's own split (from ``splits.json``), or the cases of ``data`` (its ``split`` ones when it has them)."""
    if data is None:
        splits = json.loads((run_dir / SPLITS_FILE).read_text())
        if split == "test" and not splits.get("test") and splits.get("train"):
            raise ConfigError(f"{run_dir}: this run has no held-out split (it trained on all its labelled cases, "
                              "eval.test_fraction=0); evaluate it on other data with --data PATH")
        spec = resolve_spec(cfg.data)
        ids = set(splits.get(split, []))
        cases = [c for c in spec.cases if c.case_id in ids]
        if not cases:
            raise SourceError(f"{run_dir / SPLITS_FILE}: no cases in split {split!r}")
    else:
        spec = load_source(data)
        named = sorted({c.split for c in spec.cases if c.split})
        if named and split not in named:  # never fall back to all cases (training ones included) silently
            raise SourceError(f"{data}: no cases in split {split!r} (its splits: {', '.join(named)}); pass --split")
        cases = [c for c in spec.cases if c.split == split] if named else list(spec.cases)
    labelled = [c for c in cases if (c.mask if cfg.task == "seg" else c.label is not None)]
    if not labelled:
        raise SourceError(f"{data or run_dir}: no labelled cases to evaluate (split {split!r})")
    return DatasetSpec(spec.root, labelled, spec.label_names, spec.classes, spec.multilabel)


def evaluate(run_dir: str | Path, *, data: str | Path | None = None, split: str = "test",
             device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Evaluate a fine-tuned run; writes ``summary.json`` and ``per_case.csv`` to ``eval/<split>/`` (with ``data``:
    ``eval/<data-name>_<split>/``) and returns the summary. ``threads``: torch CPU threads."""
    set_threads(threads, "--threads")
    run_dir = Path(run_dir)
    cfg, info, model, ckpt_path = load_task_run(run_dir, device)
    device = next(model.parameters()).device
    spec = evaluation_cases(run_dir, cfg, data, split)
    if cfg.task == "cls":  # fail before inference, naming the class
        require_both_classes(spec.cases, info["classes"], f"{data or run_dir / SPLITS_FILE} (split {split!r})")
    prep = Preprocessing.from_config(cfg.data, cfg.model)
    prepared = prepare(spec, prep, cfg.data, with_masks=cfg.task == "seg")
    ids = [p.case.case_id for p in prepared]
    if cfg.task == "cls":
        targets = class_targets(spec.cases, info)
        probs = classify(model, [p.image for p in prepared], cfg.model.img_size, info["multilabel"], device=device,
                         tta=tta_axes(cfg))
        rows, per_case = summarize_classification(probs, targets, multilabel=info["multilabel"],
                                                  class_names=info["classes"], threshold=cfg.eval.threshold,
                                                  n_resamples=cfg.eval.bootstrap, seed=0)
        extra: dict[str, Any] = decisions_and_baseline(rows, targets, info, cfg.eval.threshold)
    else:
        check_mask_values(prepared, info)
        label_names = {int(k): v for k, v in info["label_names"].items()}
        regions = cfg.eval.regions or regions_from_labels(label_names)
        unit = length_unit(spec.cases)
        per_case = []
        for p in prepared:
            pred = segment(model, p.image, cfg.model.img_size, overlap=cfg.eval.sw_overlap,
                           sw_batch_size=cfg.eval.sw_batch_size, device=device, tta=tta_axes(cfg)).argmax(0).numpy()
            per_case.append(segmentation_case_metrics(pred, np.asarray(p.mask), regions=regions, spacing=p.spacing,
                                                       unit=unit))
        seg = summarize_segmentation(per_case, mean_over=cfg.eval.mean_over, n_resamples=cfg.eval.bootstrap, seed=0)
        rows = seg["rows"]
        extra = {"policy": seg["policy"], "counts": seg["counts"], "regions": regions, "mean_over": seg["mean_over"],
                 "hd95_unit": unit}
        per_case = [{"case": cid, "region": r, **vals} for cid, case in zip(ids, per_case) for r, vals in case.items()]
    for row in per_case:
        if "case" in row and isinstance(row["case"], (int, np.integer)):
            row["case"] = ids[int(row["case"])]
    summary = {"task": cfg.task, "split": split if data is None else f"{data}:{split}",
               "data": None if data is None else str(data), "n_cases": len(prepared),
               "checkpoint": str(ckpt_path), "rows": rows, "tta_axes": list(tta_axes(cfg)), **extra,
               "leakage": leakage_check(info, prepared, cfg)}
    out = eval_dir(run_dir, split, data)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_default))
    write_csv(out / PER_CASE_FILE, per_case)
    track_summary(run_dir, cfg.logging, summary, f"{EVAL_DIR}/{out.name}", out / SUMMARY_FILE)
    log.info("evaluation of %d cases written to %s", len(prepared), out)
    return summary


def has_physical_spacing(path: str) -> bool:
    """False for formats that store no voxel size (PNG/JPEG/TIFF via Pillow, ``.npz`` arrays): their spacing is
    1 per pixel, not millimetres."""
    virtual = split_virtual(path)
    if virtual is not None:
        return virtual[0].suffix.lower() != ".npz"
    return image_suffix(path) not in PILLOW_SUFFIXES


def length_unit(cases: Sequence[Case]) -> str:
    """``mm`` when every case's images carry a physical spacing, ``px`` when none does (HD95 is named by it)."""
    physical = {has_physical_spacing(p) for c in cases for p in c.image}
    if len(physical) > 1:
        raise SourceError(f"{cases[0].path}: these cases mix images with a physical spacing (mm) and without one "
                          "(PNG/JPEG/TIFF, .npz: pixels); HD95 cannot be averaged over both, evaluate them separately")
    return "mm" if physical != {False} else "px"


def decisions_and_baseline(rows: Sequence[dict[str, Any]], targets: np.ndarray, info: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The threshold and rule behind accuracy, and the trivial accuracy it must beat (summary keys)."""
    accuracy = next(r["value"] for r in rows if r["metric"] == "accuracy")
    baseline = trivial_accuracy(targets, multilabel=info["multilabel"], class_names=info["classes"])
    rule = decision_rule(multilabel=info["multilabel"], n_classes=len(info["classes"]), threshold=threshold)
    return {"threshold": threshold, "decision_rule": rule, "accuracy_baseline": accuracy_vs_baseline(accuracy, baseline)}


def leakage_check(info: dict[str, Any], prepared: Sequence[Prepared], cfg: FinetuneConfig) -> dict[str, Any]:
    """Evaluated cases whose image content was in the MAE's pretraining data (by sha256)."""
    record = info.get("pretraining_cases")
    if not record:
        return {"checked": False, "reason": "no pretraining record (scratch or an external encoder)"}
    if not Path(record).is_file():
        return {"checked": False, "reason": f"{record} not found"}
    seen = {h for c in json.loads(Path(record).read_text())["cases"] for h in c["sha256"]}
    cache = ArrayCache(cfg.data.cache_dir)
    overlap = [p.case.case_id for p in prepared
               if any(h in seen for h in (p.digests or [cache.file_digest(f) for f in p.case.image]))]
    if overlap:
        log.warning("%d of %d evaluated cases were in the MAE's pretraining data (unlabelled): %s", len(overlap),
                    len(prepared), ", ".join(overlap[:10]) + (" ..." if len(overlap) > 10 else ""))
    return {"checked": True, "pretraining_cases": record, "n_overlap": len(overlap), "overlap": overlap}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
