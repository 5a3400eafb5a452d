"""Dataset checks behind ``medmae data check``.

:func:`check_source` reads every case of one or more sources (images and masks) and returns a
:class:`~medmae.data.check_report.CheckReport`: counts, shapes, spacings, intensities, label values and class
balance, per-case errors (the data cannot be trained on as it is) and warnings (it can, but probably not as
intended). The parts: :mod:`~medmae.data.check_case` (one case), :mod:`~medmae.data.check_dataset` (a source or
the pool), :mod:`~medmae.data.check_summary` (the summary), :mod:`~medmae.data.check_options` (a config's
settings). Preparing the cache is a task: :func:`medmae.tasks.prepare.prepare_source`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from joblib import cpu_count

from medmae.data.cases import Case, DatasetSpec
from medmae.data.check_case import inspect_case
from medmae.data.check_dataset import dataset_findings
from medmae.data.check_options import CheckOptions
from medmae.data.check_report import CheckReport, Finding
from medmae.data.check_summary import summary as summarize
from medmae.data.readers import split_virtual
from medmae.data.sources import load_source
from medmae.errors import ReadError, SourceError

__all__ = ["QUICK_SAMPLE", "CheckReport", "Finding", "check_source"]

logger = logging.getLogger(__name__)

QUICK_SAMPLE = 32  # cases read per source by a quick check


def check_source(
    sources: str | Path | Sequence[str | Path],
    *,
    full: bool = True,
    sample: int = QUICK_SAMPLE,
    workers: int | None = None,
    options: CheckOptions | None = None,
) -> CheckReport:
    """Read the cases of one source, or of several forming a pretraining pool, and report on them.

    ``full`` reads every case; otherwise ``sample`` cases per source (evenly spread) are read and only the
    existence of the other files is checked. ``workers`` threads read cases (default: up to 4). ``options``:
    a config's series filters, labels, label map and intensity preset (default: the default series filters).
    """
    opts = options or CheckOptions()
    start = time.perf_counter()
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    errors: list[Finding] = []
    warnings: list[Finding] = []
    loaded: list[tuple[str, DatasetSpec]] = []
    for path in paths:
        name = str(path)
        try:
            spec, notes = opts.source(name, load_source(path))
        except (SourceError, ReadError) as e:
            errors.append(Finding("source", str(e), source=name))
            continue
        loaded.append((name, spec))
        warnings += [Finding(code, message, source=name) for code, message in notes]
    jobs = []
    for name, spec in loaded:
        chosen = set(range(len(spec.cases))) if full else _sample_indices(len(spec.cases), sample)
        for i, case in enumerate(spec.cases):
            if i in chosen:
                jobs.append((name, spec, case))
            else:
                errors += _missing_files(name, case)
    n_workers = workers or min(4, cpu_count())
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        results = list(pool.map(lambda job: inspect_case(*job, opts), jobs))
    for r in results:
        for severity, finding in r.findings:
            (errors if severity == "error" else warnings).append(finding)
    stats = [r.stats for r in results]
    more_errors, more_warnings = dataset_findings(loaded, stats, full)
    errors += more_errors
    warnings += more_warnings
    summary = summarize(loaded, stats, full)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    logger.debug("checked %d cases of %d source(s) in %.1f s: %d errors, %d warnings",
                 len(stats), len(paths), summary["seconds"], len(errors), len(warnings))
    return CheckReport([str(p) for p in paths], summary, errors, warnings, stats)


def _sample_indices(n: int, k: int) -> set[int]:
    """At most ``k`` indices spread evenly over ``range(n)`` (first and last included)."""
    if n <= k:
        return set(range(n))
    return {int(round(i * (n - 1) / (k - 1))) for i in range(k)} if k > 1 else {0}


def _missing_files(source: str, case: Case) -> list[Finding]:
    files = list(case.image) + ([case.mask] if case.mask else [])
    out = []
    for f in files:
        virtual = split_virtual(f)
        real = virtual[0] if virtual else Path(f)
        if not real.exists():
            out.append(Finding("missing_file", f"{f}: file not found", source=source, case_id=case.case_id, file=f))
    return out
