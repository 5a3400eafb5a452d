"""Dataset checks and preparation behind ``medmae data check`` / ``medmae data prepare``.

:func:`check_source` reads every case of one or more sources (images and masks) and returns a
:class:`CheckReport`: counts, shapes, spacings, intensities, label values and class balance, per-case errors
(the data cannot be trained on as it is) and warnings (it can, but probably not as intended).
:func:`prepare_source` preprocesses every case of a config's sources into the cache and writes a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmae import __version__
from medmae.data.check_options import CheckOptions, saved_image_masks
from medmae.data.prepared_stats import prepared_intensity
from medmae.data.readers import ImageMeta, ReadError, nonfinite_count, read_image, read_label, split_virtual
from medmae.data.sources import Case, DatasetSpec, SourceError, load_source
from medmae.data.validity import image_problems, is_colour

logger = logging.getLogger(__name__)

QUICK_SAMPLE = 32  # cases read per source by a quick check
STATS_VOXELS = 1 << 20  # percentiles come from a regular subsample of at most this many voxels per channel
ANISOTROPY_RATIO = 3.0
TINY_AXIS = 16  # voxels; a smaller spatial axis is worth a warning
INT16_MAX = 32767
SPACING_RTOL, SPACING_ATOL = 1e-3, 1e-4  # image vs label spacing, as medmae.data.preprocess.load_mask
AFFINE_ATOL_MM = 1e-2  # image vs label voxel-to-world affines


@dataclass(frozen=True)
class Finding:
    """One problem: ``code`` (machine-readable), ``message``, and where it is (source, case, file)."""

    code: str
    message: str
    source: str | None = None
    case_id: str | None = None
    file: str | None = None


@dataclass
class CheckReport:
    """Result of :func:`check_source`; ``errors`` non-empty means the data is not usable as it is."""

    sources: list[str]
    summary: dict[str, Any]
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "ok": self.ok,
            "summary": self.summary,
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
            "cases": self.cases,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_jsonable)


_Add = Callable[[str, str, str, "str | None"], None]  # (severity, code, message, file) -> record a finding


@dataclass
class _CaseResult:
    stats: dict[str, Any]
    findings: list[tuple[str, Finding]]  # ("error" | "warning", finding)


# ------------------------------------------------------------------------------------------------ check


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
    n_workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        results = list(pool.map(lambda job: _inspect_case(*job, opts), jobs))
    for r in results:
        for severity, finding in r.findings:
            (errors if severity == "error" else warnings).append(finding)
    stats = [r.stats for r in results]
    more_errors, more_warnings = _dataset_findings(loaded, stats, full)
    errors += more_errors
    warnings += more_warnings
    summary = _summary(loaded, stats, full)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    logger.debug("checked %d cases of %d source(s) in %.1f s: %d errors, %d warnings",
                 len(stats), len(paths), summary["seconds"], len(errors), len(warnings))
    return CheckReport([str(p) for p in paths], summary, errors, warnings, stats)


def _inspect_case(source: str, spec: DatasetSpec, case: Case, opts: CheckOptions) -> _CaseResult:
    """Read one case's image (and mask) and collect its statistics and problems; never raises for bad data."""
    findings: list[tuple[str, Finding]] = []

    def add(severity: str, code: str, message: str, file: str | None) -> None:
        findings.append((severity, Finding(code, message, source=source, case_id=case.case_id, file=file)))

    stats: dict[str, Any] = {
        "source": source, "case_id": case.case_id, "subject_id": case.subject_id, "split": case.split,
        "image": list(case.image), "mask": case.mask, "label": case.label,
        "labelled": bool(case.mask or case.label is not None), "read": False,
    }
    try:
        x, meta = read_image(case.image if len(case.image) > 1 else case.image[0])
    except Exception as e:  # noqa: BLE001 - a check reports every failure instead of stopping
        add("error", "unreadable", str(e) or type(e).__name__, _file_in(e, case.image))
        return _CaseResult(stats, findings)
    stats.update(_image_stats(x, meta, case, spec))
    _image_findings(stats, meta, add)
    if case.mask:
        _mask_findings(case, spec, x, meta, stats, add, opts)
    if case.label is not None and spec.classes:
        unknown = [n for n in case.class_names() if n not in spec.classes]
        if unknown:
            add("error", "undeclared_class", f"class label(s) {unknown} not among the declared classes {spec.classes}",
                case.path)
    return _CaseResult(stats, findings)


def _image_stats(x_cs: np.ndarray, meta: ImageMeta, case: Case, spec: DatasetSpec) -> dict[str, Any]:
    """Shape, geometry and per-channel intensity statistics of one image ``(C, *spatial)``."""
    channels = []
    for ch in x_cs:
        finite = np.isfinite(ch)
        valid = ch if finite.all() else ch[finite]
        if valid.size == 0:
            channels.append({"min": None, "max": None, "p1": None, "p50": None, "p99": None})
            continue
        p1, p50, p99 = (float(v) for v in np.percentile(_subsample(valid), [1, 50, 99]))
        channels.append({"min": float(valid.min()), "max": float(valid.max()), "p1": p1, "p50": p50, "p99": p99})
    return {
        "read": True,
        "spatial_dims": meta.spatial_dims,
        "channels": int(x_cs.shape[0]),
        "shape": [int(s) for s in x_cs.shape[1:]],
        "spacing": [float(s) for s in meta.spacing],
        "dtype": meta.source_dtype,
        "modality": case.modality or spec.modality or meta.modality,
        "nonfinite": nonfinite_count(x_cs),
        "intensity": channels,
    }


def _image_findings(stats: dict[str, Any], meta: ImageMeta, add: _Add) -> None:
    where = meta.path
    ranges = [(ch["min"], ch["max"]) for ch in stats["intensity"]]  # the rule training applies (medmae.data.validity):
    for problem in image_problems(stats["shape"], stats["nonfinite"], ranges, colour=is_colour(meta.channel_names)):
        add("error", problem.code, problem.message, where)
    top = max((ch["max"] for ch in stats["intensity"] if ch["max"] is not None), default=0.0)
    if "uint16" in stats["dtype"] and top > INT16_MAX:
        if str(stats["modality"] or "").upper() == "CT":
            add("error", "int16_overflow", f"uint16 CT values up to {top:g} exceed {INT16_MAX}: negative HU were "
                f"probably stored as unsigned (wrapped); fix the file's data type", where)
        else:
            add("warning", "int16_overflow", f"uint16 values up to {top:g} exceed {INT16_MAX}: tools that store "
                "int16 would wrap them (medmae reads them as float32)", where)
    spacing, shape = stats["spacing"], stats["shape"]
    if len(spacing) == 3 and min(spacing) > 0 and max(spacing) / min(spacing) > ANISOTROPY_RATIO:
        add("warning", "anisotropic", f"spacing {_fmt(spacing)} mm is anisotropic "
            f"({max(spacing) / min(spacing):.1f}:1 > {ANISOTROPY_RATIO:g}:1)", where)
    if min(shape) < TINY_AXIS:
        add("warning", "tiny_image", f"spatial shape {tuple(shape)} has an axis below {TINY_AXIS} voxels", where)


def _mask_findings(case: Case, spec: DatasetSpec, x_cs: np.ndarray, meta: ImageMeta, stats: dict[str, Any],
                   add: _Add, opts: CheckOptions) -> None:
    try:
        y, label_meta = read_label(case.mask)
    except Exception as e:  # noqa: BLE001 - as in _inspect_case
        add("error", "unreadable", str(e), case.mask)
        return
    values = opts.mask_values(_value_counts(y))  # after data.label_map
    stats["label_values"] = {str(v): n for v, n in values.items()}
    image_shape = tuple(x_cs.shape[1:])
    if tuple(y.shape) != image_shape or tuple(label_meta.original_shape) != tuple(meta.original_shape):
        add("error", "shape_mismatch", f"label shape {tuple(label_meta.original_shape)} differs from image shape "
            f"{tuple(meta.original_shape)} (as stored; {tuple(y.shape)} vs {image_shape} after reorientation)", case.mask)
    elif not np.allclose(label_meta.spacing, meta.spacing, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        add("error", "spacing_mismatch", f"label spacing {_fmt(label_meta.spacing)} differs from image spacing "
            f"{_fmt(meta.spacing)}", case.mask)
    elif label_meta.affine is not None and meta.affine is not None:
        diff = float(np.abs(label_meta.affine - meta.affine).max())
        if diff > AFFINE_ATOL_MM:
            add("warning", "affine_mismatch", f"label affine (origin/direction) differs from the image's by up to "
                f"{diff:.3g} mm", case.mask)
    if spec.label_names:
        outside = sorted(set(values) - set(spec.label_names))
        if outside:
            hint = ("a 0/255 mask image? --set 'data.label_map={255: 1}'" if outside == [255]
                    else "or declare them in data.labels")
            add("error", "undeclared_label", f"label values {outside} not declared (declared: "
                f"{sorted(spec.label_names)}) ({hint})", case.mask)
    if set(values) <= {0}:
        add("warning", "empty_label", "label map holds only background (0)", case.mask)


def _dataset_findings(loaded: list[tuple[str, DatasetSpec]], stats: list[dict[str, Any]],
                      full: bool) -> tuple[list[Finding], list[Finding]]:
    """Problems of a source or of the pool as a whole (not of one case)."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    read = [s for s in stats if s["read"]]
    for name, spec in loaded:
        mine = [s for s in read if s["source"] == name]
        if not spec.cases:
            errors.append(Finding("no_cases", f"{name}: no cases", source=name))
        by_dims = _group(mine, "spatial_dims")
        if len(by_dims) > 1:
            examples = ", ".join(f"{d}D: {len(v)} cases (e.g. {v[0]['case_id']})" for d, v in sorted(by_dims.items()))
            errors.append(Finding("dims_mix", f"{name}: 2D and 3D images mixed ({examples})", source=name))
        by_channels = _group(mine, "channels")
        if len(by_channels) > 1:
            examples = ", ".join(f"{c} channel(s): {len(v)} (e.g. {v[0]['case_id']})" for c, v in sorted(by_channels.items()))
            warnings.append(Finding("channels_mix", f"{name}: channel counts differ ({examples})", source=name))
        if full and spec.label_names and any(s.get("label_values") for s in mine):
            found = {int(v) for s in mine for v in s.get("label_values", {})}
            unused = sorted(set(spec.label_names) - found)
            if unused:
                names = ", ".join(f"{v} ({spec.label_names[v]})" for v in unused)
                warnings.append(Finding("label_unused", f"{name}: declared label(s) {names} found in no mask", source=name))
        warnings += [Finding(code, message, source=name) for code, message in saved_image_masks(name, spec.label_names, mine)]
        warnings += _leak_findings(name, spec)
        warnings += _duplicate_findings(name, spec)
    pool_dims = {s["spatial_dims"] for s in read}
    if len(loaded) > 1 and len(pool_dims) > 1:
        warnings.append(Finding("pool_dims_mix", "the pool mixes 2D and 3D sources: a 2D model reads the volumes "
                                "as slices only with data.slice_axis set"))
    return errors, warnings


def _leak_findings(name: str, spec: DatasetSpec) -> list[Finding]:
    """Subjects whose cases sit in more than one of train / val / test."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for c in spec.cases:
        if c.split in ("train", "val", "test"):
            splits_of[c.subject_id].add(c.split)
    leaking = sorted(s for s, sp in splits_of.items() if len(sp) > 1)
    if not leaking:
        return []
    return [Finding("subject_leak", f"{name}: {len(leaking)} subject(s) have cases in several splits, e.g. "
                    f"{leaking[0]} in {sorted(splits_of[leaking[0]])}", source=name)]


def _duplicate_findings(name: str, spec: DatasetSpec) -> list[Finding]:
    counts = Counter(c.image for c in spec.cases)
    repeated = [img for img, n in counts.items() if n > 1]
    if not repeated:
        return []
    return [Finding("duplicate_image", f"{name}: {len(repeated)} image(s) are listed by several cases, e.g. "
                    f"{repeated[0][0]} ({counts[repeated[0]]} times)", source=name, file=repeated[0][0])]


def _summary(loaded: list[tuple[str, DatasetSpec]], stats: list[dict[str, Any]], full: bool) -> dict[str, Any]:
    cases = [(name, spec, c) for name, spec in loaded for c in spec.cases]
    read = [s for s in stats if s["read"]]
    splits: dict[str, dict[str, int]] = defaultdict(lambda: {"labelled": 0, "unlabelled": 0})
    for _, _, c in cases:
        splits[c.split or "none"]["labelled" if (c.mask or c.label is not None) else "unlabelled"] += 1
    labelled = sum(v["labelled"] for v in splits.values())
    modality_of = {(s["source"], s["case_id"]): s.get("modality") for s in read}
    per_modality = Counter(
        modality_of.get((name, c.case_id)) or c.modality or spec.modality or "unknown" for name, spec, c in cases
    )
    return {
        "mode": "full" if full else "quick",
        "sources": [{"path": name, "kind": spec.kind, "cases": len(spec.cases), "modality": spec.modality,
                     "spatial_dims": spec.spatial_dims} for name, spec in loaded],
        "pool": {"per_source": {name: len(spec.cases) for name, spec in loaded}, "per_modality": dict(per_modality)},
        "cases": {"total": len(cases), "labelled": labelled, "unlabelled": len(cases) - labelled,
                  "read": len(read), "unreadable": len(stats) - len(read)},
        "splits": dict(sorted(splits.items())),
        "subjects": len({(name, c.subject_id) for name, _, c in cases}),
        "spatial_dims": _counts(read, "spatial_dims"),
        "channels": _counts(read, "channels"),
        "dtypes": _counts(read, "dtype"),
        "shape": {str(d): _axis_stats([s["shape"] for s in v]) for d, v in sorted(_group(read, "spatial_dims").items())},
        "spacing": {str(d): _axis_stats([s["spacing"] for s in v]) for d, v in sorted(_group(read, "spatial_dims").items())},
        "intensity": _intensity_summary(read),
        "labels": _label_summary(loaded, read),
        "classes": _class_summary(loaded),
    }


def _label_summary(loaded: list[tuple[str, DatasetSpec]], read: list[dict[str, Any]]) -> dict[str, Any]:
    declared = {str(v): n for _, spec in loaded for v, n in spec.label_names.items()}
    cases_with: Counter[str] = Counter()
    voxels: Counter[str] = Counter()
    for s in read:
        for v, n in s.get("label_values", {}).items():
            cases_with[v] += 1
            voxels[v] += n
    total = sum(voxels.values())
    found = sorted(voxels, key=int)
    return {
        "declared": dict(sorted(declared.items(), key=lambda kv: int(kv[0]))),
        "found": [int(v) for v in found],
        "undeclared": [int(v) for v in found if declared and v not in declared],
        "masks_read": sum(1 for s in read if "label_values" in s),
        "cases_with": {v: cases_with[v] for v in found},
        "voxel_fraction": {v: voxels[v] / total for v in found} if total else {},
    }


def _class_summary(loaded: list[tuple[str, DatasetSpec]]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    no_finding = 0
    for _, spec in loaded:
        for c in spec.cases:
            if c.label is None:
                continue
            names = c.class_names()
            counts.update(names)
            no_finding += not names
    declared = list(dict.fromkeys(n for _, spec in loaded for n in spec.classes))
    order = declared + sorted(set(counts) - set(declared))
    return {
        "declared": declared,
        "multilabel": any(spec.multilabel for _, spec in loaded),
        "counts": {n: counts[n] for n in order},
        "no_class": no_finding,
    }


def _intensity_summary(read: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per channel index: overall min/max and the median over cases of each case's 1st/50th/99th percentile."""
    out = []
    for c in range(max((s["channels"] for s in read), default=0)):
        rows = [s["intensity"][c] for s in read if s["channels"] > c and s["intensity"][c]["min"] is not None]
        if not rows:
            continue
        out.append({
            "channel": c,
            "cases": len(rows),
            "min": min(r["min"] for r in rows),
            "p1": float(np.median([r["p1"] for r in rows])),
            "p50": float(np.median([r["p50"] for r in rows])),
            "p99": float(np.median([r["p99"] for r in rows])),
            "max": max(r["max"] for r in rows),
        })
    return out


# ---------------------------------------------------------------------------------------------- helpers


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


def _file_in(exc: Exception, files: Iterable[str]) -> str:
    """The file an error message starts with (readers name the file first), else the first file."""
    text = str(exc)
    files = list(files)
    return next((f for f in files if text.startswith(str(f))), files[0])


def _subsample(values: np.ndarray) -> np.ndarray:
    flat = values.reshape(-1)
    step = max(1, math.ceil(flat.size / STATS_VOXELS))
    return flat[::step]


def _value_counts(y: np.ndarray) -> dict[int, int]:
    """Label value -> voxel count (bincount when the values are small non-negative integers)."""
    if y.size and y.min() >= 0 and y.max() < 1 << 16:
        counts = np.bincount(y.reshape(-1).astype(np.int64))
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(y, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}


def _group(stats: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for s in stats:
        out[s[key]].append(s)
    return out


def _counts(stats: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {str(k): len(v) for k, v in sorted(_group(stats, key).items(), key=lambda kv: str(kv[0]))}


def _axis_stats(rows: list[list[float]]) -> dict[str, list[float]]:
    arr = np.asarray(rows, dtype=np.float64)
    return {"min": arr.min(axis=0).tolist(), "median": np.median(arr, axis=0).tolist(), "max": arr.max(axis=0).tolist()}


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


# ---------------------------------------------------------------------------------------------- prepare

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
    # deferred: the config and the pipeline pull in torch, which `data check` does not need
    from medmae.config import FinetuneConfig, PretrainConfig, apply_overrides, load_raw, validate
    from medmae.data.cache import ArrayCache, atomic_write_bytes
    from medmae.data.pipeline import prepare, resolve_parts

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
    atomic_write_bytes(path, json.dumps(fingerprint, indent=2, sort_keys=True, default=_jsonable).encode())
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
