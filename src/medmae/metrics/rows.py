"""The row shape every metric summary shares (:class:`MetricRow`) and the confidence level of their intervals."""

from __future__ import annotations

from typing import TypedDict

SUMMARY_CONFIDENCE = 0.95  # CI level of every summary row

_MetricRowRequired = TypedDict(
    "_MetricRowRequired",
    {"metric": str, "value": float, "ci_low": float, "ci_high": float, "n": int},
)
_MetricRowOptional = TypedDict(
    "_MetricRowOptional",
    {
        "class": str,
        "region": str,
        "regions": str,
        "n_excluded": int,
        "excluded_reasons": str,
        "n_resamples_skipped": int,
        "note": str,
    },
    total=False,
)


class MetricRow(_MetricRowRequired, _MetricRowOptional):
    """One summary number: ``metric``, ``value``, its CI, and ``n`` (cases it is computed over).

    Optional keys: ``class`` / ``region`` (what it is about), ``regions`` (members of a mean
    row), ``n_excluded`` + ``excluded_reasons`` (e.g. ``"both_empty=2;missed=1"``),
    ``n_resamples_skipped`` (degenerate bootstrap resamples), ``note`` (why a CI is NaN, ...).
    """
