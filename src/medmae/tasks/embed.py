"""``medmae embed``: one pooled embedding per case of a dataset, from a pretrained or fine-tuned encoder."""

from __future__ import annotations

import csv
import importlib
import logging
from pathlib import Path

import numpy as np

from medmae.data.sources import load_source
from medmae.engine.distributed import set_threads
from medmae.errors import ConfigError, SourceError
from medmae.tasks.model_api import embed_cases, export_source_of

log = logging.getLogger(__name__)


def embed(model: str | Path, data: str | Path, *, out: str | Path, batch_size: int = 32, device: str = "cpu",
          threads: int | None = None) -> list[Path]:
    """Embed every case of ``data`` with ``model`` (a pretraining run, an ``encoder.safetensors`` or a fine-tuning
    run): ``OUT.npy`` (N, D) float32 in case order, ``OUT.csv`` (row, case_id, subject_id, split, label, path),
    and ``OUT.parquet`` (the same columns and the embedding) when pyarrow is installed. Returns the files."""
    set_threads(threads, "--threads")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name such as {out / 'embeddings.npy'}")
    src = export_source_of(model, device)
    spec = load_source(data)
    if not spec.cases:
        raise SourceError(f"{data}: no cases to embed")
    cases, feats = embed_cases(src, spec, batch_size=batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    npy, table = out.with_suffix(".npy"), out.with_suffix(".csv")
    np.save(npy, feats.astype(np.float32))
    rows = [{"row": i, "case_id": c.case_id, "subject_id": c.subject_id, "split": c.split or "",
             "label": c.label or "", "path": c.path} for i, c in enumerate(cases)]
    with table.open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    written = [npy, table]
    try:
        pa, pq = importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        log.info("pyarrow not installed: no Parquet file (pip install pyarrow)")
    else:
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["embedding"] = [v.tolist() for v in feats.astype(np.float32)]
        pq.write_table(pa.table(cols), out.with_suffix(".parquet"))
        written.append(out.with_suffix(".parquet"))
    log.info("%d embeddings of dimension %d written to %s", len(cases), feats.shape[1], npy)
    return written
