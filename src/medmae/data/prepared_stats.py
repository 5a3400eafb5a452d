"""Intensity statistics of prepared (cached) cases, for the fingerprint of ``medmae data prepare``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medmae.data.cache import CachedArray


def prepared_intensity(images: Sequence[CachedArray | np.ndarray], voxels: int) -> list[dict[str, float]]:
    """Per channel of the preprocessed arrays ``(C, *S)``: min/max over all voxels, mean/std/percentiles over
    a regular subsample (about ``voxels`` per channel in all). Reads each case's channel once, one case at a time."""
    if not images:
        return []
    budget = max(4096, voxels // len(images))
    out = []
    for c in range(min(x.shape[0] for x in images)):
        parts, lo, hi = [], math.inf, -math.inf
        for x in images:
            ch = np.asarray(x[c]).reshape(-1)
            parts.append(ch[:: max(1, math.ceil(ch.size / budget))].astype(np.float64))
            lo, hi = min(lo, float(ch.min())), max(hi, float(ch.max()))
        sample = np.concatenate(parts)
        p1, p50, p99 = np.percentile(sample, [1, 50, 99])
        out.append({
            "channel": c,
            "min": lo,
            "max": hi,
            "mean": float(sample.mean()),
            "std": float(sample.std()),
            "p1": float(p1),
            "p50": float(p50),
            "p99": float(p99),
        })
    return out
