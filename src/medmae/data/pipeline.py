"""From a data config to prepared cases: resolve the source(s) (or generate the synthetic default),
preprocess, cache, and weight pool sources for sampling."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medmae.config import DataConfig, ModelConfig, SyntheticConfig
from medmae.data.cache import ArrayCache, default_cache_dir
from medmae.data.cases import Case, Chain, DatasetSpec, distinct, tag_cases
from medmae.data.dataset import Prepared, prepare_cases
from medmae.data.modality_fit import intensity_misfit
from medmae.data.pack_names import is_pack
from medmae.data.packed import PACK_KIND, case_list, packed_cases, shard_groups
from medmae.data.preprocess import Preprocessing
from medmae.data.series_filter import SeriesFilter, select_series
from medmae.data.sources import load_source
from medmae.data.synthetic import write_dataset
from medmae.errors import CaseError, ConfigError

log = logging.getLogger(__name__)


def synthetic_dataset(syn: SyntheticConfig, cache_root: Path | None = None) -> Path:
    """Write (once) the synthetic dataset described by ``syn`` under the cache; returns its manifest.

    Generated into a temporary folder and renamed, so concurrent processes never see half a dataset.
    """
    params = {"kind": syn.kind, "n": syn.n, "seed": syn.seed, "size": syn.size}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    root = (cache_root or default_cache_dir()) / "synthetic" / f"{syn.kind}-{digest}"
    if (root / "manifest.csv").is_file():
        return root / "manifest.csv"
    kwargs: dict[str, Any] = {}
    if syn.size:
        kwargs = {"size": int(syn.size[0])} if syn.kind == "cxr" else {"shape": tuple(int(s) for s in syn.size)}
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_dataset(tmp, syn.kind, syn.n, seed=syn.seed, **kwargs)
    try:
        os.rename(tmp, root)
    except OSError:  # another process won the race: its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("synthetic %s data (%d cases) in %s", syn.kind, syn.n, root)
    return root / "manifest.csv"


def resolve_spec(data_cfg: DataConfig) -> DatasetSpec:
    """The dataset named by ``data.path``, or the built-in synthetic one when it is None, with the cases that
    ``data.include`` / ``data.exclude`` keep."""
    if data_cfg.path is None:
        cache_root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else None
        return load_source(synthetic_dataset(data_cfg.synthetic, cache_root))
    return select_series(load_source(data_cfg.path), SeriesFilter.from_config(data_cfg), data_cfg.path)


@dataclass
class PoolPart:
    """One source of the training data with its own preprocessing and sampling weight."""

    name: str
    spec: DatasetSpec
    prep: Preprocessing
    weight: float = 1.0


def resolve_parts(data_cfg: DataConfig, model_cfg: ModelConfig) -> list[PoolPart]:
    """The sources to train on: ``data.sources`` (a pool) or the single ``data.path`` / synthetic dataset.

    A source whose cases' modality does not fit its intensity preset gets one warning line."""
    if not data_cfg.sources:
        spec = resolve_spec(data_cfg).select(data_cfg.splits)
        spec = replace(spec, cases=tag_cases(spec.cases, default_modality=spec.modality))
        parts = [PoolPart(data_cfg.path or f"synthetic:{data_cfg.synthetic.kind}", spec,
                          Preprocessing.from_config(data_cfg, model_cfg))]
        keys = ["data.intensity.name"]
    else:
        parts, keys = [], []
        for i, entry in enumerate(data_cfg.sources):
            spec = select_series(load_source(entry.path), SeriesFilter.from_config(data_cfg), entry.path)
            spec = spec.select(entry.splits or data_cfg.splits)
            cases = tag_cases(spec.cases, modality=entry.modality, default_modality=spec.modality, source=entry.path)
            parts.append(PoolPart(entry.path, replace(spec, cases=cases),
                                  Preprocessing.from_config(data_cfg, model_cfg, entry.intensity), entry.weight))
            keys.append(f"data.sources[{i}].intensity.name" if entry.intensity else "data.intensity.name")
    for part, key in zip(parts, keys):
        warning = intensity_misfit(part.spec.cases, part.prep.intensity["name"], part.name, key)
        if warning:
            log.warning("%s", warning)
    return parts


def prepare(spec: DatasetSpec, prep: Preprocessing, data_cfg: DataConfig, *, with_masks: bool = False,
            show_progress: bool = True, skipped: list[dict[str, str]] | None = None) -> Sequence[Prepared]:
    """Preprocess (or load from the cache) every case of ``spec``; a pack's cases come as they were packed."""
    if spec.kind == PACK_KIND or is_pack(spec.root):  # fine-tuning re-wraps a selection of the cases
        return packed_cases(spec, prep, with_masks=with_masks)
    cache = ArrayCache(data_cfg.cache_dir)
    step = max(1, len(spec.cases) // 10)

    def progress(i: int, n: int) -> None:
        if show_progress and (i % step == 0 or i == n) and n > 20:
            log.info("prepared %d/%d cases", i, n)

    return prepare_cases(spec.cases, prep, cache, with_masks=with_masks, progress=progress, skipped=skipped)


@dataclass
class PreparedPool:
    prepared: Sequence[Prepared]  # a list, or lazy (a pack's PackedPrepared, a Chain of parts)
    weights: np.ndarray | None
    skipped: list[dict[str, str]]
    composition: dict[str, Any]
    groups: np.ndarray | None = None  # shard of each case, for the grouped order of a large pack (packed.shard_groups)


def prepare_pool(parts: list[PoolPart], data_cfg: DataConfig, *, with_masks: bool = False, show_progress: bool = True) -> PreparedPool:
    """Prepare every part, apply ``data.on_bad_case`` and compute per-case sampling weights (``data.sampling``).

    Packed parts stay lazy (chained, not copied into one list): the pool holds O(1) objects per pack."""
    skipped: list[dict[str, str]] | None = [] if data_cfg.on_bad_case == "skip" else None
    got_parts: list[Sequence[Prepared]] = []
    per_part: list[tuple[PoolPart, int]] = []
    total = 0
    for part in parts:
        got = prepare(part.spec, part.prep, data_cfg, with_masks=with_masks, show_progress=show_progress, skipped=skipped)
        got_parts.append(got)
        per_part.append((part, len(got)))
        total += len(part.spec.cases)
    prepared: Sequence[Prepared] = (got_parts[0] if len(got_parts) == 1 else
                                    [p for got in got_parts for p in got] if all(isinstance(g, list) for g in got_parts)
                                    else Chain(got_parts))
    bad = skipped or []
    if bad and len(bad) > data_cfg.max_bad_fraction * total:
        raise CaseError(f"{len(bad)} of {total} cases could not be read (more than data.max_bad_fraction="
                        f"{data_cfg.max_bad_fraction}); first: {bad[0]['error']}")
    if not len(prepared):
        raise ConfigError("no usable cases in the training data")
    names, codes = modality_codes(case_list(prepared))
    weights = sampling_weights(names, codes, per_part, data_cfg)
    counts = np.bincount(codes, minlength=len(names))
    composition = {"sources": {part.name: n for part, n in per_part},
                   "modalities": {m: int(counts[k]) for k, m in enumerate(names)},
                   "sampling": data_cfg.sampling, "skipped": len(bad)}
    return PreparedPool(prepared, weights, bad, composition, shard_groups(prepared))


def modality_codes(cases: Sequence[Case]) -> tuple[list[str], np.ndarray]:
    """The modalities of ``cases`` (untagged: ``unknown``) in first-seen order, and each case's code into them."""
    values, codes = distinct(cases, "modality")
    names = list(dict.fromkeys(v or "unknown" for v in values))
    remap = np.array([names.index(v or "unknown") for v in values], np.int64)
    return names, remap[codes] if len(codes) else codes


def sampling_weights(modalities: list[str], codes: np.ndarray, per_part: list[tuple[PoolPart, int]],
                     data_cfg: DataConfig) -> np.ndarray | None:
    """Per-case weights so that each source (``source``) or modality (``modality``; ``codes`` into
    ``modalities``) gets its weight's share of the draws whatever its size; ``uniform`` samples every case
    equally (None)."""
    if data_cfg.sampling == "uniform":
        return None
    if data_cfg.sampling == "source":
        return np.concatenate([np.full(n, part.weight / max(n, 1)) for part, n in per_part])
    counts = np.bincount(codes, minlength=len(modalities))
    mw = data_cfg.modality_weights or {}
    unknown = sorted(set(mw) - set(modalities))
    if unknown:
        raise ConfigError(f"data.modality_weights names modalities not in the pool: {unknown} "
                          f"(pool has {sorted(modalities)})")
    per_modality = np.array([mw.get(m, 1.0) / counts[k] for k, m in enumerate(modalities)])
    w = per_modality[codes]
    return w / np.sum(w) * len(w)
