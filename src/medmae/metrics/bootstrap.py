"""Percentile-bootstrap confidence intervals over cases: of a mean (:func:`bootstrap_ci`) and of any metric
function of the cases (:func:`bootstrap_metric_ci`, degenerate resamples skipped and counted)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

_MAX_INDEX_ELEMENTS = 4_000_000  # resample index matrix is built in chunks of at most this size


def check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    values: np.ndarray,
    *,
    statistic: Callable[..., Any] = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic`` over case-level values ``values_n``.

    Cases are resampled with replacement; ``statistic`` must accept ``axis=`` like NumPy
    reductions (``np.mean``, ``np.median``) so all resamples are evaluated in one call.

    Degenerate inputs, by rule rather than by accident:
    * NaN in ``values`` -> ``ValueError`` (exclude undefined values explicitly, and count them);
    * no values -> ``ValueError``;
    * one value -> ``(nan, nan)``: a single case says nothing about sampling variability;
    * all values equal -> ``(v, v)`` with ``v = statistic(values)``: every resample is identical.
    """
    check_bootstrap_args(n_resamples, confidence)
    values_n = np.asarray(values, dtype=np.float64)
    if values_n.ndim != 1:
        raise ValueError(f"bootstrap_ci: expected 1-D case values, got shape {values_n.shape}")
    n = values_n.shape[0]
    if n == 0:
        raise ValueError("bootstrap_ci: no values to resample")
    n_nan = int(np.isnan(values_n).sum())
    if n_nan:
        raise ValueError(
            f"bootstrap_ci: {n_nan} of {n} values are NaN; exclude undefined values explicitly "
            "and report how many were excluded"
        )
    if n == 1:
        return float("nan"), float("nan")
    if np.all(values_n == values_n[0]):
        v = float(statistic(values_n))
        return v, v
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_INDEX_ELEMENTS // n)
    stats = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = statistic(values_n[idx], axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


class BootstrapResult(NamedTuple):
    """Result of :func:`bootstrap_metric_ci`; arrays when ``fn`` returns a vector."""

    value: float | np.ndarray  # fn on the original cases
    low: float | np.ndarray
    high: float | np.ndarray
    n_valid: int  # resamples used
    n_skipped: int  # degenerate resamples skipped
    skip_reason: str  # first degenerate resample's message ("" if none)


def _scalar_or_array(a: np.ndarray) -> float | np.ndarray:
    return float(a) if a.ndim == 0 else a


def bootstrap_resamples(
    stat: Callable[[np.ndarray], Any], value: np.ndarray, n: int, n_resamples: int, confidence: float, seed: int
) -> BootstrapResult:
    """Percentile CI of ``stat(idx_n)`` over resampled case indices, skipping degenerate resamples.

    A resample is degenerate when ``stat`` raises ``ValueError`` or returns a non-finite value.
    One case gives a NaN CI (no resampling), as in :func:`bootstrap_ci`.
    """
    if n == 1:
        nan = _scalar_or_array(np.full(value.shape, np.nan))
        return BootstrapResult(_scalar_or_array(value), nan, nan, 0, 0, "")
    rng = np.random.default_rng(seed)
    stats: list[np.ndarray] = []
    n_skipped = 0
    skip_reason = ""
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        try:
            s = np.asarray(stat(idx), dtype=np.float64)
        except ValueError as err:
            n_skipped += 1
            skip_reason = skip_reason or str(err)
            continue
        if not np.all(np.isfinite(s)):
            n_skipped += 1
            skip_reason = skip_reason or "statistic was not finite"
            continue
        stats.append(s)
    if n_skipped:
        level = logging.WARNING if n_skipped > 0.1 * n_resamples else logging.DEBUG
        logger.log(level, "bootstrap: skipped %d of %d degenerate resamples (%s)", n_skipped, n_resamples, skip_reason)
    if len(stats) < 2:
        low_a = high_a = np.full(value.shape, np.nan)
    else:
        alpha = 1.0 - confidence
        low_a, high_a = np.quantile(np.stack(stats), [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return BootstrapResult(
        _scalar_or_array(value), _scalar_or_array(low_a), _scalar_or_array(high_a), len(stats), n_skipped, skip_reason
    )


def bootstrap_metric_ci(
    fn: Callable[..., Any],
    *arrays: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile-bootstrap CI of ``fn(*arrays)``, resampling cases (axis 0) jointly in all arrays.

    ``fn`` returns a scalar or 1-D array (several metrics from the same resamples). A resample on
    which ``fn`` raises ``ValueError`` (e.g. only one class present, as for sklearn's
    ``roc_auc_score`` or :func:`classification_metrics`) or returns a non-finite value is
    *skipped* and counted in ``n_skipped``; skipping conditions the CI on non-degenerate
    resamples, which is the usual practice for AUC. ``fn`` on the original arrays is not
    guarded: if the data themselves are degenerate (error or non-finite value) it raises.
    With one case, or fewer than 2 valid resamples, the CI is NaN.
    """
    check_bootstrap_args(n_resamples, confidence)
    if not arrays:
        raise ValueError("bootstrap_metric_ci: no arrays to resample")
    arrs = [np.asarray(a) for a in arrays]
    lengths = [a.shape[0] if a.ndim else 0 for a in arrs]
    n = lengths[0]
    if any(length != n for length in lengths):
        raise ValueError(f"bootstrap_metric_ci: arrays must share the case axis 0, got lengths {lengths}")
    if n == 0:
        raise ValueError("bootstrap_metric_ci: no cases to resample")
    value = np.asarray(fn(*arrs), dtype=np.float64)
    if not np.all(np.isfinite(value)):
        raise ValueError(f"bootstrap_metric_ci: fn on the original {n} cases is not finite ({value}); degenerate data")
    return bootstrap_resamples(lambda idx: fn(*(a[idx] for a in arrs)), value, n, n_resamples, confidence, seed)
