"""Writing a pack: cases preprocessed once, in parallel, by parts that a cluster can run on different nodes.

The cases of the sources, in their enumeration order, are cut into ``n`` contiguous parts (``--part i/n``) and
each part into shards of ``shard_cases`` cases. A shard is one job (``--workers`` processes run jobs side by
side); it is written to a temporary name and renamed, then its case list (``shard-j.json``) is written, so a
killed part resumes at its first unfinished shard, and a finished part (``part.json``) is not redone. The raw
files' size, mtime and sha256 are taken at pack time: reading the pack later never opens them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from medmae.data.cases import Case
from medmae.data.pack_codec import encode
from medmae.data.pack_store import (PART_FILE, StoredCase, part_dir_name, sha256_file, shard_name, write_json_atomic,
                                    write_shard)
from medmae.data.preprocess import Preprocessing, load_image, load_mask
from medmae.errors import CaseError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartPlan:
    """What one part packs: its cases (with their global positions) and how."""

    cases: list[Case]
    first: int  # global position of cases[0]
    index: int
    count: int
    prep: Preprocessing
    with_masks: bool
    codec: str
    shard_cases: int

    meta: dict[str, Any] | None = None  # what the sources declare (classes, label names, ...), kept in part.json

    @cached_property
    def identity(self) -> str:
        """sha256 over the recipe, the codec and this part's cases: a restart must find the same."""
        h = hashlib.sha256(f"{self.prep.recipe()}|{self.codec}|{self.with_masks}|{self.shard_cases}|{self.first}\n".encode())
        for c in self.cases:
            h.update(f"{c.source}|{c.case_id}|{'|'.join(c.image)}|{c.mask}\n".encode())
        return h.hexdigest()


def split_parts(n_cases: int, count: int) -> list[tuple[int, int]]:
    """[start, stop) of each of ``count`` contiguous parts of ``n_cases`` cases."""
    return [(i * n_cases // count, (i + 1) * n_cases // count) for i in range(count)]


def raw_stat(files: Sequence[str]) -> tuple[int, int]:
    """(total bytes, newest mtime in ns) of a case's raw files (a folder counts every file below it)."""
    size, mtime = 0, 0
    for f in files:
        real = f.split("::", 1)[0]
        paths = [p for p in Path(real).rglob("*") if p.is_file()] if Path(real).is_dir() else [Path(real)]
        for p in paths:
            st = p.stat()
            size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return size, mtime


def raw_digest(f: str) -> str:
    """sha256 of a raw file's content (a folder: of its files' names and digests), as the cache computes it."""
    real, sep, member = f.partition("::")
    if Path(real).is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in Path(real).rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(real)}:{sha256_file(p)}\n".encode())
        digest = h.hexdigest()
    else:
        digest = sha256_file(Path(real))
    return hashlib.sha256(f"{digest}::{member}".encode()).hexdigest() if sep else digest


def case_record(case: Case, x_cs: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None,
                with_masks: bool) -> dict[str, Any]:
    """The index row of one packed case (its place in the shard is added when the shard is written)."""
    files = list(case.image) + ([case.mask] if with_masks and case.mask else [])
    size, mtime = raw_stat(files)
    return {
        "case_id": case.case_id, "subject_id": case.subject_id, "source": case.source, "modality": case.modality,
        "split": case.split, "label": case.label, "mask": case.mask, "image": "\n".join(case.image),
        "attributes": json.dumps(list(case.attributes)), "sha256": ",".join(raw_digest(f) for f in files),
        "mask_values": "" if mask is None else ",".join(str(int(v)) for v in np.unique(mask)),
        "shape": [int(s) for s in x_cs.shape], "spacing": [float(s) for s in spacing],
        "raw_bytes": size, "raw_mtime_ns": mtime,
    }


@dataclass(frozen=True)
class ShardJob:
    """One shard to write (what a worker process receives: its own cases only)."""

    cases: list[Case]
    j: int
    part_dir: Path
    prep: Preprocessing
    with_masks: bool
    codec: str
    identity: str


def shard_jobs(plan: PartPlan, part_dir: Path, todo: Sequence[int]) -> list[ShardJob]:
    identity = plan.identity
    return [ShardJob(plan.cases[j * plan.shard_cases: (j + 1) * plan.shard_cases], j, part_dir, plan.prep,
                     plan.with_masks, plan.codec, identity) for j in todo]


def pack_shard(job: ShardJob) -> dict[str, Any]:
    """Preprocess, encode and write one shard of a part, then its case list; returns the case list."""
    part_dir, j = job.part_dir, job.j
    stored, records, failed = [], [], []
    for case in job.cases:
        try:
            x, meta, spacing, _ = load_image(case, job.prep)
            mask = load_mask(case, job.prep, meta, x.shape[1:]) if job.with_masks and case.mask else None
            records.append(case_record(case, x, spacing, mask, job.with_masks))
            stored.append(StoredCase(encode(x), mask))
        except (CaseError, OSError, ValueError) as e:
            failed.append({"case_id": case.case_id, "source": case.source, "path": case.path, "error": str(e)})
    name = shard_name(j)
    where = write_shard(part_dir / name, stored, job.codec) if stored else []
    for r, (g, row), s in zip(records, where, stored):
        r.update(group=g, row=row, kind=s.encoded.kind)
    size = (part_dir / name).stat().st_size if stored else 0
    listing = {"identity": job.identity, "shard": name if stored else None, "bytes": size,
               "sha256": sha256_file(part_dir / name) if stored else None, "cases": records, "failed": failed}
    write_json_atomic(part_dir / name.replace(".b2z", ".json"), listing)
    return listing


def _shard_done(plan: PartPlan, part_dir: Path, j: int) -> dict[str, Any] | None:
    """The case list of a finished shard, None when it must be (re)done; a shard of another plan is refused."""
    listing_path = part_dir / shard_name(j).replace(".b2z", ".json")
    try:
        listing = json.loads(listing_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if listing.get("identity") != plan.identity:
        raise ConfigError(f"{part_dir}: holds a part packed from other cases or with another contract; "
                          f"use a new --out folder (or delete {part_dir})")
    shard = part_dir / shard_name(j)
    if listing["shard"] is not None and (not shard.is_file() or shard.stat().st_size != listing["bytes"]):
        return None
    return listing


def _init_worker() -> None:
    """One torch thread per packing process (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def pack_part(plan: PartPlan, out: Path, workers: int = 1,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack one part into ``out/part-i-of-n`` (resuming a killed run; a finished part is returned as it is)."""
    part_dir = out / part_dir_name(plan.index, plan.count)
    done_path = part_dir / PART_FILE
    if done_path.is_file():
        done = json.loads(done_path.read_text())
        if done.get("identity") != plan.identity:
            raise ConfigError(f"{part_dir}: finished part of other cases or another contract; use a new --out folder")
        log.info("%s is already packed", part_dir)
        return done
    part_dir.mkdir(parents=True, exist_ok=True)
    for stale in part_dir.glob(".shard-*.tmp-*"):  # what a killed run left half written
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    n_shards = -(-len(plan.cases) // plan.shard_cases)
    listings: dict[int, dict[str, Any]] = {j: got for j in range(n_shards) if (got := _shard_done(plan, part_dir, j))}
    jobs = shard_jobs(plan, part_dir, [j for j in range(n_shards) if j not in listings])
    if listings:
        log.info("%s: %d of %d shards already packed, resuming", part_dir, len(listings), n_shards)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("fork"), initializer=_init_worker) as ex:
            for job, listing in zip(jobs, ex.map(pack_shard, jobs)):
                listings[job.j] = listing
                _report(progress, listings, n_shards)
    else:
        for job in jobs:
            listings[job.j] = pack_shard(job)
            _report(progress, listings, n_shards)
    shards = [{"name": listings[j]["shard"], "listing": shard_name(j).replace(".b2z", ".json"),
               "bytes": listings[j]["bytes"], "sha256": listings[j]["sha256"], "cases": len(listings[j]["cases"])}
              for j in range(n_shards)]
    done = {"identity": plan.identity, "index": plan.index, "count": plan.count, "first": plan.first,
            "n_cases": len(plan.cases), "contract": plan.prep.contract(), "recipe": plan.prep.recipe(),
            "with_masks": plan.with_masks, "codec": plan.codec, "shards": shards, "meta": plan.meta or {},
            "failed": [f for j in range(n_shards) for f in listings[j]["failed"]]}
    write_json_atomic(done_path, done)
    return done


def _report(progress: Callable[[int, int], None] | None, listings: dict, n: int) -> None:
    if progress is not None:
        progress(len(listings), n)


def part_listing(part_dir: Path, shard: dict[str, Any]) -> list[dict[str, Any]]:
    """The case rows of one finished shard of a part."""
    return json.loads((part_dir / shard["listing"]).read_text())["cases"]

