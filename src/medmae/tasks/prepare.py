"""``medmae data prepare``: preprocess every case of a config's sources into the cache and write a fingerprint.

The fingerprint (case count, content hashes, recipe, intensity statistics after preprocessing) holds no time
stamps, so two runs over the same data and recipe write identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmae.version import __version__
from medmae.config import FinetuneConfig, PretrainConfig, apply_overrides, load_raw, validate
from medmae.data.cache import ArrayCache, atomic_write_bytes
from medmae.data.check_case import STATS_VOXELS
from medmae.data.check_report import jsonable
from medmae.data.pipeline import prepare, resolve_parts
from medmae.data.prepared_stats import prepared_intensity

logger = logging.getLogger(__name__)

_FINETUNE_KEYS = frozenset({"task", "mode", "head", "eval", "init"})


@dataclass
class PrepareResult:
    """What :func:`prepare_source` did: the fingerprint, where it was written, and the cases that failed."""

    fingerprint: dict[str, Any]
    path: Path
    failed: list[dict[str, str]]


def prepare_source(
    sources: Sequence[str | Path] = (),
    config: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    with_masks: bool | None = None,
    out: str | Path | None = None,
) -> PrepareResult:
    """Preprocess every case into the cache with the preprocessing contract of a preset or config YAML.

    ``sources`` replace the config's ``data.path`` / ``data.sources`` (several make a pool); none keeps them.
    A YAML with fine-tuning keys (task, head, eval, ...) is read as a fine-tuning config. ``with_masks``
    (default: True for a segmentation fine-tuning config) also caches the masks. Cases that fail are listed,
    not raised. The fingerprint (case count, content hashes, recipe, intensity statistics after
    preprocessing) goes to ``out`` or ``<cache>/fingerprints/<hash>.json``; it holds no time stamps, so two
    runs over the same data and recipe write identical files.
    """
    raw, label = load_raw(config, preset)
    raw = _with_sources(raw, sources)
    cls = FinetuneConfig if _FINETUNE_KEYS & set(raw) else PretrainConfig
    overrides = list(overrides)
    cfg = validate(cls, apply_overrides(raw, overrides), label + (f" with overrides {' '.join(overrides)}" if overrides else ""))
    masks = with_masks if with_masks is not None else (cls is FinetuneConfig and cfg.task == "seg")
    cache = ArrayCache(cfg.data.cache_dir)
    parts_out, cases_out, failed = [], [], []
    for part in resolve_parts(cfg.data, cfg.model):
        skipped: list[dict[str, str]] = []
        prepared = prepare(part.spec, part.prep, cfg.data, with_masks=masks, skipped=skipped)
        failed += [{**s, "source": part.name} for s in skipped]
        for p in prepared:
            files = list(p.case.image) + ([p.case.mask] if masks and p.case.mask else [])
            cases_out.append({
                "source": part.name,
                "case_id": p.case.case_id,
                "files": files,
                "sha256": [cache.file_digest(f) for f in files],
                "shape": [int(s) for s in p.image.shape],
                "spacing": [float(s) for s in p.spacing],
                "mask_shape": None if p.mask is None else [int(s) for s in p.mask.shape],
            })
        parts_out.append({
            "source": part.name,
            "kind": part.spec.kind,
            "cases": len(part.spec.cases),
            "prepared": len(prepared),
            "recipe": part.prep.contract(),
            "recipe_sha256": hashlib.sha256(part.prep.recipe().encode()).hexdigest(),
            "intensity": prepared_intensity([p.image for p in prepared], STATS_VOXELS),
        })
    digest = _content_digest(parts_out, cases_out, masks)
    fingerprint = {
        "medmae_version": __version__,
        "config": cfg.name,
        "with_masks": masks,
        "n_cases": sum(p["cases"] for p in parts_out),
        "n_prepared": len(cases_out),
        "content_sha256": digest,
        "cache_dir": str(cache.root),
        "sources": parts_out,
        "failed": failed,
        "cases": cases_out,
    }
    path = Path(out) if out else cache.root / "fingerprints" / f"{digest[:16]}.json"
    atomic_write_bytes(path, json.dumps(fingerprint, indent=2, sort_keys=True, default=jsonable).encode())
    logger.info("prepared %d of %d cases into %s; fingerprint %s", len(cases_out), fingerprint["n_cases"],
                cache.root, path)
    return PrepareResult(fingerprint, path, failed)


def _with_sources(raw: dict[str, Any], sources: Sequence[str | Path]) -> dict[str, Any]:
    """The raw config with ``data.path`` (one source) or ``data.sources`` (a pool) replaced by ``sources``."""
    if not sources:
        return raw
    data = {k: v for k, v in (raw.get("data") or {}).items() if k not in ("path", "sources")}
    if len(sources) == 1:
        data["path"] = str(sources[0])
    else:
        data["sources"] = [{"path": str(s)} for s in sources]
    return {**raw, "data": data}


def _content_digest(parts: list[dict[str, Any]], cases: list[dict[str, Any]], masks: bool) -> str:
    """sha256 over the recipes and every prepared case's id and file contents (not the paths)."""
    h = hashlib.sha256(f"masks={masks}\n".encode())
    for p in parts:
        h.update(f"{p['recipe_sha256']}\n".encode())
    for c in sorted(cases, key=lambda c: (c["source"], c["case_id"])):
        h.update(f"{c['case_id']}:{','.join(c['sha256'])}\n".encode())
    return h.hexdigest()
