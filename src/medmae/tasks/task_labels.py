"""What a fine-tuned model predicts (the labels part of ``task.json``) and the checks of the data against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medmae.config import ConfigError, FinetuneConfig
from medmae.data.cases import DatasetSpec
from medmae.data.dataset import Prepared
from medmae.errors import CaseError
from medmae.metrics import regions_from_labels


def task_labels(cfg: FinetuneConfig, spec: DatasetSpec) -> dict[str, Any]:
    """What the model predicts: class names (cls) or label values (seg); stored as ``task.json``."""
    if cfg.task == "cls":
        if not spec.classes:
            raise ConfigError(f"{cfg.data.path or spec.root}: no class labels found (a 'label' column, class folders or dataset.json 'classes')")
        multilabel = spec.multilabel
        return {"task": "cls", "classes": list(spec.classes), "multilabel": multilabel,
                "num_outputs": len(spec.classes)}
    names = dict(cfg.data.labels or spec.label_names)  # data.labels replaces what the dataset declares
    if not names:
        raise ConfigError(f"{cfg.data.path or spec.root}: segmentation needs declared labels: data.labels (e.g. --set "
                          "'data.labels={1: lesion}') or a dataset.json 'labels'")
    if 0 not in names:
        names[0] = "background"
    return {"task": "seg", "label_names": {str(k): v for k, v in sorted(names.items())},
            "num_outputs": max(names) + 1}


def check_mask_values(prepared: Sequence[Prepared], info: dict[str, Any]) -> None:
    allowed = {int(k) for k in info["label_names"]}
    for p in prepared:
        values = set(np.unique(np.asarray(p.mask)).tolist())
        extra = sorted(values - allowed)
        if extra:
            hint = " (a 0/255 mask image? set data.label_map={255: 1})" if extra == [255] else ""
            raise CaseError(f"case {p.case.case_id} ({p.case.mask}): label values {extra} not declared "
                            f"(declared: {sorted(allowed)}){hint}")


def check_regions(cfg: FinetuneConfig, info: dict[str, Any]) -> None:
    """``eval.mean_over`` must name evaluation regions (checked before training, not after it)."""
    regions = cfg.eval.regions or regions_from_labels({int(k): v for k, v in info["label_names"].items()})
    unknown = sorted(set(cfg.eval.mean_over or []) - set(regions))
    if unknown:
        raise ConfigError(f"eval.mean_over names {unknown}, which are not evaluation regions of this data "
                          f"(regions: {sorted(regions)}); set eval.mean_over to some of those, or null for all")
