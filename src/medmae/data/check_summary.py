"""The summary of ``medmae data check``: counts, splits, shapes, spacings, intensities, labels and classes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from medmae.data.cases import DatasetSpec


def summary(loaded: list[tuple[str, DatasetSpec]], stats: list[dict[str, Any]], full: bool) -> dict[str, Any]:
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
        "shape": {str(d): _axis_stats([s["shape"] for s in v]) for d, v in sorted(group(read, "spatial_dims").items())},
        "spacing": {str(d): _axis_stats([s["spacing"] for s in v]) for d, v in sorted(group(read, "spatial_dims").items())},
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


def group(stats: list[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for s in stats:
        out[s[key]].append(s)
    return out


def _counts(stats: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {str(k): len(v) for k, v in sorted(group(stats, key).items(), key=lambda kv: str(kv[0]))}


def _axis_stats(rows: list[list[float]]) -> dict[str, list[float]]:
    arr = np.asarray(rows, dtype=np.float64)
    return {"min": arr.min(axis=0).tolist(), "median": np.median(arr, axis=0).tolist(), "max": arr.max(axis=0).tolist()}
