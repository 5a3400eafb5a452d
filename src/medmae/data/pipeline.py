"""From a data config to prepared cases: resolve the source (or generate the synthetic default), preprocess, cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medmae.data.cache import ArrayCache, default_cache_dir
from medmae.data.dataset import Prepared, prepare_cases
from medmae.data.preprocess import Preprocessing
from medmae.data.sources import DatasetSpec, load_source
from medmae.data.synthetic import write_dataset

log = logging.getLogger(__name__)


def synthetic_dataset(syn: Any, cache_root: Path | None = None) -> Path:
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


def resolve_spec(data_cfg: Any) -> DatasetSpec:
    """The dataset named by ``data.path``, or the built-in synthetic one when it is None."""
    if data_cfg.path is None:
        cache_root = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else None
        return load_source(synthetic_dataset(data_cfg.synthetic, cache_root))
    return load_source(data_cfg.path)


def prepare(spec: DatasetSpec, prep: Preprocessing, data_cfg: Any, *, with_masks: bool = False,
            show_progress: bool = True) -> list[Prepared]:
    """Preprocess (or load from the cache) every case of ``spec``."""
    cache = ArrayCache(data_cfg.cache_dir)
    step = max(1, len(spec.cases) // 10)

    def progress(i: int, n: int) -> None:
        if show_progress and (i % step == 0 or i == n) and n > 20:
            log.info("prepared %d/%d cases", i, n)

    return prepare_cases(spec.cases, prep, cache, with_masks=with_masks, progress=progress)
