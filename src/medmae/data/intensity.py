"""Intensity presets, applied once per image before caching. Arrays are channel-first (C, *S) float32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def ct_window(x_cs: np.ndarray, lo: float = -175.0, hi: float = 250.0) -> np.ndarray:
    """Clip Hounsfield units to [lo, hi] and scale to [0, 1] (SelfMedMAE's abdominal window by default)."""
    if hi <= lo:
        raise ValueError(f"ct_window needs lo < hi, got lo={lo}, hi={hi}")
    return ((np.clip(x_cs, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def mri_zscore_nonzero(x_cs: np.ndarray) -> np.ndarray:
    """Per-channel z-score over non-zero voxels (the brain); zero background stays zero."""
    out = np.zeros_like(x_cs, dtype=np.float32)
    for c in range(x_cs.shape[0]):
        ch = x_cs[c]
        fg = ch != 0
        if not fg.any():
            continue
        vals = ch[fg].astype(np.float64)
        std = vals.std()
        out[c][fg] = (vals - vals.mean()) / (std if std > 0 else 1.0)
    return out


def xray_histeq(x_cs: np.ndarray, bins: int = 4096) -> np.ndarray:
    """Per-channel histogram equalisation to [0, 1] (the CDF of the image's own intensities)."""
    out = np.empty_like(x_cs, dtype=np.float32)
    for c in range(x_cs.shape[0]):
        ch = x_cs[c].astype(np.float64)
        lo, hi = ch.min(), ch.max()
        if hi <= lo:
            out[c] = 0.0
            continue
        hist, edges = np.histogram(ch, bins=bins, range=(lo, hi))
        cdf = np.cumsum(hist).astype(np.float64)
        cdf = (cdf - cdf[0]) / max(cdf[-1] - cdf[0], 1.0)
        out[c] = np.interp(ch, edges[1:], cdf).astype(np.float32)
    return out


def minmax(x_cs: np.ndarray, percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Per-channel scale to [0, 1]; with ``percentiles`` clip to those percentiles first."""
    out = np.empty_like(x_cs, dtype=np.float32)
    for c in range(x_cs.shape[0]):
        ch = x_cs[c].astype(np.float32)
        lo, hi = (np.percentile(ch, percentiles) if percentiles else (ch.min(), ch.max()))
        out[c] = 0.0 if hi <= lo else (np.clip(ch, lo, hi) - lo) / (hi - lo)
    return out


def apply_intensity(x_cs: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Apply the preset described by ``spec`` (``IntensityConfig`` as a dict: name, lo, hi, percentiles)."""
    name = spec["name"]
    if name == "ct_window":
        return ct_window(x_cs, spec.get("lo", -175.0), spec.get("hi", 250.0))
    if name == "mri_zscore_nonzero":
        return mri_zscore_nonzero(x_cs)
    if name == "xray_histeq":
        return xray_histeq(x_cs)
    if name == "minmax":
        p = spec.get("percentiles")
        return minmax(x_cs, tuple(p) if p else None)
    if name == "none":
        return x_cs.astype(np.float32, copy=False)
    raise ValueError(f"unknown intensity preset {name!r}")


def describe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a preset that change its output (what the export contract records)."""
    name = spec["name"]
    if name == "ct_window":
        return {"name": name, "lo": float(spec.get("lo", -175.0)), "hi": float(spec.get("hi", 250.0))}
    if name == "minmax" and spec.get("percentiles"):
        return {"name": name, "percentiles": [float(p) for p in spec["percentiles"]]}
    return {"name": name}
