"""Evaluation metrics for medmae: classification, per-case segmentation, bootstrap CIs, summaries.

Everything here is NumPy/SciPy (no torch), so ``medmae evaluate`` and the sweep/report code can
run it on saved predictions anywhere. Summaries share one row shape, :class:`MetricRow`.

Conventions
-----------
* Classification ``probs_nk`` are probabilities (softmax rows for multi-class, independent
  sigmoids for multi-label), never logits.
* Segmentation masks are integer label maps; a *region* is the union of some label values
  (BraTS WT = {1, 2, 3}); HD95 is in the unit of the voxel ``spacing``: ``hd95_mm``, or ``hd95_px``
  for images without physical spacing (PNG/JPEG/TIFF, ``.npz``).
* Undefined values are NaN *with a reason*: summaries report how many values each mean is over
  (``n``), how many were excluded (``n_excluded``) and why (``excluded_reasons``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence, TypedDict

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

logger = logging.getLogger(__name__)

__all__ = [
    "EMPTY_MASK_POLICY",
    "SEGMENTATION_METRICS",
    "BootstrapResult",
    "EmptyMaskPolicy",
    "MetricRow",
    "bootstrap_ci",
    "bootstrap_metric_ci",
    "classification_metrics",
    "hd95_mm",
    "regions_from_labels",
    "segmentation_case_metrics",
    "summarize_classification",
    "summarize_segmentation",
]

# ----------------------------------------------------------------------------------------------
# Row shape shared by every summary
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# ----------------------------------------------------------------------------------------------

_MAX_INDEX_ELEMENTS = 4_000_000  # resample index matrix is built in chunks of at most this size
_SUMMARY_CONFIDENCE = 0.95  # CI level of every summary row


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
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
    _check_bootstrap_args(n_resamples, confidence)
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


def _bootstrap_resamples(
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
    _check_bootstrap_args(n_resamples, confidence)
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
    return _bootstrap_resamples(lambda idx: fn(*(a[idx] for a in arrs)), value, n, n_resamples, confidence, seed)


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------

_PROB_SUM_TOL = 1e-3


def _validate_classification(
    probs: np.ndarray, targets: np.ndarray, multilabel: bool, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Check inputs; return ``(probs_nk float64, y_nk bool)`` with ``y_nk`` one-hot for multi-class."""
    probs_nk = np.asarray(probs, dtype=np.float64)
    if probs_nk.ndim != 2 or probs_nk.shape[0] == 0:
        raise ValueError(f"probs: expected shape (N, K) with N >= 1, got {probs_nk.shape}")
    n, k = probs_nk.shape
    names = list(class_names)
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names but probs has K={k} columns")
    if len(set(names)) != k:
        dupes = sorted(name for name, c in Counter(names).items() if c > 1)
        raise ValueError(f"class_names must be unique, duplicated: {dupes}")
    if not np.all(np.isfinite(probs_nk)):
        bad = np.argwhere(~np.isfinite(probs_nk))[0]
        raise ValueError(f"probs: non-finite value at case {bad[0]}, class {names[bad[1]]!r}")
    lo, hi = float(probs_nk.min()), float(probs_nk.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"probs must be probabilities in [0, 1], got range [{lo:.4g}, {hi:.4g}] (logits?)")
    t = np.asarray(targets)
    if not (np.issubdtype(t.dtype, np.number) or t.dtype == np.bool_):
        raise ValueError(f"targets: expected a numeric array, got dtype {t.dtype}")
    if multilabel:
        if t.shape != (n, k):
            raise ValueError(f"multi-label targets: expected shape {(n, k)} like probs, got {t.shape}")
        bad_values = np.unique(t[(t != 0) & (t != 1)])
        if bad_values.size:
            raise ValueError(f"multi-label targets must be 0/1, got values {bad_values[:5].tolist()}")
        return probs_nk, t.astype(bool)
    if k < 2:
        raise ValueError(f"multi-class needs K >= 2 columns, got {k} (use multilabel=True for one sigmoid)")
    if t.shape != (n,):
        raise ValueError(f"multi-class targets: expected shape ({n},) of class indices, got {t.shape}")
    if not np.all(np.isfinite(t)) or not np.array_equal(t, np.round(t)):
        raise ValueError("multi-class targets must be integer class indices")
    t_int = t.astype(np.int64)
    out_of_range = t_int[(t_int < 0) | (t_int >= k)]
    if out_of_range.size:
        raise ValueError(f"multi-class targets must be in [0, {k - 1}], got {np.unique(out_of_range)[:5].tolist()}")
    row_sums = probs_nk.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _PROB_SUM_TOL:
        raise ValueError(
            f"multi-class probs rows must sum to 1 (softmax); case {worst} sums to {row_sums[worst]:.4g}"
        )
    y_nk = np.zeros((n, k), dtype=bool)
    y_nk[np.arange(n), t_int] = True
    return probs_nk, y_nk


def _require_both_classes(y_nk: np.ndarray, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(n_pos_k, n_neg_k)``; raise if any class lacks positive or negative cases."""
    n = y_nk.shape[0]
    n_pos = y_nk.sum(axis=0)
    n_neg = n - n_pos
    bad = [
        f"{class_names[j]!r} has {int(n_pos[j])} positive and {int(n_neg[j])} negative cases"
        for j in range(y_nk.shape[1])
        if n_pos[j] == 0 or n_neg[j] == 0
    ]
    if bad:
        raise ValueError(
            f"ROC-AUC/PR-AUC need positive and negative cases for every class, but among N={n} cases "
            + "; ".join(bad)
            + ". The evaluation split must contain both for each class."
        )
    return n_pos, n_neg


class _RankedScores(NamedTuple):
    """Per-class descending score order with tie blocks, computed once and reused per resample."""

    order_nk: np.ndarray  # case index at each rank position (descending score), per class
    y_nk: np.ndarray  # float 0/1 targets in that order
    start_flat: np.ndarray  # flat (N, K) index of the first position of each position's tie block
    end_flat: np.ndarray  # flat (N, K) index of its last position


def _rank_scores(scores_nk: np.ndarray, y_nk: np.ndarray) -> _RankedScores:
    n, k = scores_nk.shape
    order = np.argsort(-scores_nk, axis=0, kind="stable")
    s = np.take_along_axis(scores_nk, order, axis=0)
    y = np.take_along_axis(y_nk, order, axis=0).astype(np.float64)
    rows = np.broadcast_to(np.arange(n)[:, None], s.shape)
    new_block = np.ones(s.shape, dtype=bool)
    new_block[1:] = s[1:] != s[:-1]
    block_end = np.ones(s.shape, dtype=bool)
    block_end[:-1] = new_block[1:]
    start = np.maximum.accumulate(np.where(new_block, rows, 0), axis=0)
    end = np.minimum.accumulate(np.where(block_end, rows, n - 1)[::-1], axis=0)[::-1]
    # flat indices: plain fancy indexing is several times faster than take_along_axis here
    cols = np.arange(k)
    return _RankedScores(order, y, (start * k + cols).ravel(), (end * k + cols).ravel())


def _weighted_auroc_auprc(ranked: _RankedScores, w_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class one-vs-rest ROC-AUC and average precision with case weights ``w_n``.

    Unit weights give the metrics of the data (equal to sklearn's ``roc_auc_score`` and
    ``average_precision_score``); bootstrap counts give those of a resample without re-sorting,
    because a case drawn c times is the same as c tied copies of it.
    AUC: each positive beats the negatives below its tie block and gets half credit for the
    negatives tied with it (Mann-Whitney). AP: sum over thresholds of (delta recall) * precision,
    i.e. each positive is credited with the precision at the end of its tie block.
    Both are NaN for a class with zero positive or negative weight.
    """
    w = w_n[ranked.order_nk].astype(np.float64)
    wp = w * ranked.y_nk
    wn = w - wp
    cum_p = np.cumsum(wp, axis=0)
    cum_n = np.cumsum(wn, axis=0)
    total_p, total_n = cum_p[-1], cum_n[-1]
    cum_p_end = cum_p.ravel()[ranked.end_flat].reshape(w.shape)
    cum_n_end = cum_n.ravel()[ranked.end_flat].reshape(w.shape)
    cum_n_before = (cum_n - wn).ravel()[ranked.start_flat].reshape(w.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        beaten = total_n - cum_n_end + 0.5 * (cum_n_end - cum_n_before)
        auroc = (wp * beaten).sum(axis=0) / (total_p * total_n)
        # where nothing has been seen yet the weight wp is 0 too, so any finite precision will do
        precision = cum_p_end / np.maximum(cum_p_end + cum_n_end, np.finfo(np.float64).tiny)
        auprc = (wp * precision).sum(axis=0) / total_p
    return auroc, auprc


def _predictions(probs_nk: np.ndarray, multilabel: bool, threshold: float) -> tuple[np.ndarray, str]:
    """Hard decisions ``pred_nk`` (bool) and a description of the rule used."""
    n, k = probs_nk.shape
    if multilabel:
        return probs_nk >= threshold, f"p >= {threshold} per label"
    if k == 2:
        pos = probs_nk[:, 1] >= threshold
        return np.stack([~pos, pos], axis=1), f"p[positive] >= {threshold}"
    pred_nk = np.zeros((n, k), dtype=bool)
    pred_nk[np.arange(n), probs_nk.argmax(axis=1)] = True
    return pred_nk, "argmax (threshold unused for K > 2)"


def _prepare_classification(
    probs: np.ndarray, targets: np.ndarray, multilabel: bool, names: list[str], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Validated ``(probs_nk, y_nk, pred_nk, decision_rule)``; raises on a degenerate class."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    probs_nk, y_nk = _validate_classification(probs, targets, multilabel, names)
    _require_both_classes(y_nk, names)
    pred_nk, rule = _predictions(probs_nk, multilabel, threshold)
    return probs_nk, y_nk, pred_nk, rule


def _correct_n(pred_nk: np.ndarray, y_nk: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per-case accuracy: 0/1 for multi-class, fraction of correct labels for multi-label."""
    if multilabel:
        return (pred_nk == y_nk).mean(axis=1)
    return (pred_nk.argmax(axis=1) == y_nk.argmax(axis=1)).astype(np.float64)


def classification_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    multilabel: bool,
    class_names: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC (average precision), sensitivity/specificity and accuracy.

    probs: ``(N, K)`` softmax (multi-class; K == 2 for binary) or sigmoid (multi-label) outputs.
    targets: ``(N,)`` class indices (multi-class) or ``(N, K)`` 0/1 (multi-label).

    Decisions for sensitivity/specificity/accuracy: multi-label ``p >= threshold`` per label;
    binary (K == 2) ``p[:, 1] >= threshold``; K > 2 ``argmax`` (one-vs-rest per class, threshold
    unused). ``accuracy`` is the fraction of correct argmax/binary decisions (multi-class) or the
    mean per-label accuracy = fraction of correct (case, label) decisions (multi-label).
    AUCs are one-vs-rest per class; ``macro_*`` is their unweighted mean. ``headline_*`` is the
    positive class (index 1) for binary and the macro value otherwise.

    Raises ``ValueError`` if a class has no positive or no negative case (message names the
    class and the counts): AUCs are undefined there and silently dropping the class would change
    the macro average.
    """
    names = list(class_names)
    probs_nk, y_nk, pred_nk, rule = _prepare_classification(probs, targets, multilabel, names, threshold)
    auroc, auprc = _weighted_auroc_auprc(_rank_scores(probs_nk, y_nk), np.ones(probs_nk.shape[0]))
    tp = (pred_nk & y_nk).sum(axis=0)
    fp = (pred_nk & ~y_nk).sum(axis=0)
    fn = (~pred_nk & y_nk).sum(axis=0)
    tn = (~pred_nk & ~y_nk).sum(axis=0)
    accuracy = float(_correct_n(pred_nk, y_nk, multilabel).mean())
    binary = not multilabel and len(names) == 2
    per_class = {
        name: {
            "auroc": float(auroc[j]),
            "auprc": float(auprc[j]),
            "sensitivity": float(tp[j] / (tp[j] + fn[j])),
            "specificity": float(tn[j] / (tn[j] + fp[j])),
            "tp": int(tp[j]),
            "fp": int(fp[j]),
            "tn": int(tn[j]),
            "fn": int(fn[j]),
            "n_pos": int(tp[j] + fn[j]),
            "n_neg": int(tn[j] + fp[j]),
        }
        for j, name in enumerate(names)
    }
    macro_auroc, macro_auprc = float(auroc.mean()), float(auprc.mean())
    return {
        "task": "multilabel" if multilabel else ("binary" if binary else "multiclass"),
        "n": int(probs_nk.shape[0]),
        "threshold": float(threshold),
        "decision_rule": rule,
        "accuracy": accuracy,
        "macro_auroc": macro_auroc,
        "macro_auprc": macro_auprc,
        "headline": f"auroc[{names[1]}]" if binary else "macro_auroc",
        "headline_auroc": float(auroc[1]) if binary else macro_auroc,
        "headline_auprc": float(auprc[1]) if binary else macro_auprc,
        "per_class": per_class,
    }


def summarize_classification(
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    multilabel: bool,
    class_names: Sequence[str],
    threshold: float = 0.5,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[MetricRow], list[dict[str, Any]]]:
    """Headline rows with case-bootstrap 95% CIs, plus one row per case.

    Rows: binary -> ``auroc``, ``auprc`` (positive class, ``class`` key) and ``accuracy``;
    otherwise ``macro_auroc``, ``macro_auprc``, ``accuracy`` and per-class ``auroc``/``auprc``.
    All CIs come from the same joint resamples; resamples in which some class has no positive
    or no negative case are skipped, counted in ``n_resamples_skipped``.
    Per-case rows: ``case`` (index), ``target`` + ``pred`` (multi-class) or ``target_<class>``
    (multi-label), and ``prob_<class>``.
    """
    _check_bootstrap_args(n_resamples, _SUMMARY_CONFIDENCE)
    names = list(class_names)
    probs_nk, y_nk, pred_nk, _ = _prepare_classification(probs, targets, multilabel, names, threshold)
    correct_n = _correct_n(pred_nk, y_nk, multilabel)
    k = len(names)
    n = int(probs_nk.shape[0])
    ranked = _rank_scores(probs_nk, y_nk)

    def metrics_vector(w_n: np.ndarray) -> np.ndarray:
        """``[macro_auroc, macro_auprc, accuracy, auroc_1..K, auprc_1..K]`` for case weights."""
        auroc, auprc = _weighted_auroc_auprc(ranked, w_n)
        if not (np.all(np.isfinite(auroc)) and np.all(np.isfinite(auprc))):
            raise ValueError("a class has no positive or no negative case in this resample")
        accuracy = float(w_n @ correct_n) / float(w_n.sum())
        return np.concatenate([[auroc.mean(), auprc.mean(), accuracy], auroc, auprc])

    # a resample is evaluated as case weights (draw counts), so scores are sorted only once
    boot = _bootstrap_resamples(
        lambda idx: metrics_vector(np.bincount(idx, minlength=n)),
        metrics_vector(np.ones(n)), n, n_resamples, _SUMMARY_CONFIDENCE, seed,
    )
    note = (
        f"{boot.n_skipped} of {n_resamples} resamples skipped: {boot.skip_reason}" if boot.n_skipped else ""
    )
    if boot.n_valid < 2:
        note = f"CI undefined: only {boot.n_valid} valid resamples. " + note

    def row(metric: str, i: int, cls: str | None = None) -> MetricRow:
        r: MetricRow = {
            "metric": metric,
            "value": float(boot.value[i]),
            "ci_low": float(boot.low[i]),
            "ci_high": float(boot.high[i]),
            "n": n,
        }
        if cls is not None:
            r["class"] = cls
        r["n_resamples_skipped"] = boot.n_skipped
        r["note"] = note
        return r

    if not multilabel and k == 2:
        rows = [row("auroc", 3 + 1, names[1]), row("auprc", 3 + k + 1, names[1]), row("accuracy", 2)]
    else:
        rows = [row("macro_auroc", 0), row("macro_auprc", 1), row("accuracy", 2)]
        for j, name in enumerate(names):
            rows += [row("auroc", 3 + j, name), row("auprc", 3 + k + j, name)]

    per_case: list[dict[str, Any]] = []
    for i in range(n):
        case: dict[str, Any] = {"case": i}
        if multilabel:
            case.update({f"target_{name}": int(y_nk[i, j]) for j, name in enumerate(names)})
        else:
            case["target"] = int(y_nk[i].argmax())
            case["pred"] = int(pred_nk[i].argmax())
        case.update({f"prob_{name}": float(probs_nk[i, j]) for j, name in enumerate(names)})
        per_case.append(case)
    return rows, per_case


# ----------------------------------------------------------------------------------------------
# Segmentation, per case
# ----------------------------------------------------------------------------------------------

SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "precision", "recall", "hd95_mm")
HD95_KEYS = {"mm": "hd95_mm", "px": "hd95_px"}  # HD95 is named by the unit of the spacing it was measured with
_STATUSES = ("ok", "both_empty", "missed", "false_positive")
_MEAN_REGION = "mean"  # region name of the across-regions mean row


@dataclass(frozen=True)
class EmptyMaskPolicy:
    """What each segmentation metric is when the reference and/or prediction region is empty.

    Recorded verbatim (``asdict``) in :func:`summarize_segmentation` outputs. Undefined ratios
    (0/0) are NaN, never 0 or 1, and every NaN is excluded from means *and counted* by reason.
    """

    version: str = "medmae-empty-mask-v2"
    both_empty: str = (
        "status 'both_empty': dice, precision, recall, hd95 = NaN; the case is excluded from the "
        "region's means and counted in n_both_empty"
    )
    missed: str = (
        "status 'missed' (ref present, pred empty): dice 0, precision 0, recall 0, hd95 = worst case "
        "(precision is 0/0 here but counts as 0: a NaN the prediction chose would bias the precision mean upward)"
    )
    false_positive: str = (
        "status 'false_positive' (ref empty, pred present): dice 0, precision 0, hd95 = worst case; "
        "recall NaN (0/0: nothing to find, whatever is predicted), excluded from the recall mean and counted"
    )
    hd95_worst_case: str = (
        "diagonal of the image field of view, ||shape * spacing|| (BraTS convention: "
        "373.13 mm for 240x240x155 at 1 mm)"
    )
    hd95_definition: str = (
        "max of the two directed 95th percentiles (linear interpolation) of Euclidean distances between "
        "edge voxels, edges = mask minus its face-connected erosion (as MONAI "
        "compute_hausdorff_distance(percentile=95)); hd95_mm in mm, hd95_px in pixels for images without "
        "physical spacing (PNG/JPEG/TIFF, .npz)"
    )


EMPTY_MASK_POLICY = EmptyMaskPolicy()


def regions_from_labels(label_names: Mapping[int, str]) -> dict[str, list[int]]:
    """One region per non-background label: ``{1: "liver"} -> {"liver": [1]}`` (label 0 skipped)."""
    regions: dict[str, list[int]] = {}
    for label, name in sorted(label_names.items()):
        if int(label) == 0:
            continue
        if int(label) < 0:
            raise ValueError(f"label values must be >= 0, got {label} ({name!r})")
        if name in regions or name == _MEAN_REGION:
            raise ValueError(f"region name {name!r} (label {label}) is duplicated or reserved")
        regions[name] = [int(label)]
    if not regions:
        raise ValueError(f"no foreground label in {dict(label_names)}")
    return regions


def _validate_label_map(arr: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{what}: expected an integer label map, got dtype {a.dtype} (probabilities?)")
    if a.ndim not in (2, 3):
        raise ValueError(f"{what}: expected a 2D or 3D label map, got shape {a.shape}")
    return a


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty ``mask``."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _edge_coords_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(M, ndim)`` mm coordinates of edge voxels: the mask minus its face-connected erosion."""
    edges = mask & ~ndimage.binary_erosion(mask)
    return np.argwhere(edges) * spacing


def hd95_mm(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two non-empty boolean masks.

    Definition in :attr:`EmptyMaskPolicy.hd95_definition`; exact distances via a KD-tree over
    edge voxels. Work is cropped to the union's bounding box: erosion pads with background, and
    everything outside the box is background, so the crop cannot change the edges.
    """
    pred_mask = np.asarray(pred_mask, dtype=bool)
    ref_mask = np.asarray(ref_mask, dtype=bool)
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"hd95_mm: pred shape {pred_mask.shape} != ref shape {ref_mask.shape}")
    spacing_d = _validate_spacing(spacing, pred_mask.ndim)
    if not pred_mask.any() or not ref_mask.any():
        raise ValueError(
            f"hd95_mm: needs non-empty masks, got {int(pred_mask.sum())} pred and {int(ref_mask.sum())} "
            "ref voxels (see EmptyMaskPolicy)"
        )
    box = _foreground_box(pred_mask | ref_mask)
    pred_mm = _edge_coords_mm(pred_mask[box], spacing_d)
    ref_mm = _edge_coords_mm(ref_mask[box], spacing_d)
    d_pred_to_ref = cKDTree(ref_mm).query(pred_mm, k=1)[0]
    d_ref_to_pred = cKDTree(pred_mm).query(ref_mm, k=1)[0]
    return float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))


def _validate_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    spacing_d = np.asarray(spacing, dtype=np.float64)
    if spacing_d.shape != (ndim,) or not np.all(np.isfinite(spacing_d)) or np.any(spacing_d <= 0):
        raise ValueError(f"spacing: expected {ndim} positive values (one per axis), got {list(np.ravel(spacing))}")
    return spacing_d


def _region_metrics(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_d: np.ndarray, worst_mm: float, hd95_key: str
) -> dict[str, Any]:
    """Metrics of one region from boolean masks, following :data:`EMPTY_MASK_POLICY`."""
    n_pred = int(np.count_nonzero(pred_mask))
    n_ref = int(np.count_nonzero(ref_mask))
    tp = int(np.count_nonzero(pred_mask & ref_mask)) if n_pred and n_ref else 0
    fp, fn = n_pred - tp, n_ref - tp
    nan = float("nan")
    if n_pred == 0 and n_ref == 0:
        status, dice, precision, recall, hd95 = "both_empty", nan, nan, nan, nan
    elif n_pred == 0:
        status, dice, precision, recall, hd95 = "missed", 0.0, 0.0, 0.0, worst_mm
    elif n_ref == 0:
        status, dice, precision, recall, hd95 = "false_positive", 0.0, 0.0, nan, worst_mm
    else:
        status = "ok"
        dice = 2.0 * tp / (2 * tp + fp + fn)
        precision, recall = tp / n_pred, tp / n_ref
        hd95 = hd95_mm(pred_mask, ref_mask, spacing_d)
    return {"dice": dice, "precision": precision, "recall": recall, hd95_key: hd95, "tp": tp, "fp": fp, "fn": fn,
            "ref_empty": n_ref == 0, "pred_empty": n_pred == 0, "status": status}


def segmentation_case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
    unit: str = "mm",
) -> dict[str, dict[str, Any]]:
    """Per-region Dice, precision, recall, HD95, voxel counts and status for one case.

    pred, ref: integer label maps of the same 2D ``(H, W)`` or 3D ``(D, H, W)`` shape.
    regions: name -> label values whose union is the region (e.g. BraTS ``{"TC": [2, 3]}``).
    spacing: voxel size per axis in ``unit`` (``mm``, or ``px`` for images without physical spacing).
    Returns ``{region: {"dice", "precision", "recall", "hd95_<unit>", "tp", "fp", "fn",
    "ref_empty", "pred_empty", "status"}}``; empty regions follow :data:`EMPTY_MASK_POLICY`.
    """
    if unit not in HD95_KEYS:
        raise ValueError(f"unit must be one of {sorted(HD95_KEYS)}, got {unit!r}")
    pred_a = _validate_label_map(pred, "pred")
    ref_a = _validate_label_map(ref, "ref")
    if pred_a.shape != ref_a.shape:
        raise ValueError(f"pred shape {pred_a.shape} != ref shape {ref_a.shape}")
    spacing_d = _validate_spacing(spacing, pred_a.ndim)
    if not regions:
        raise ValueError("regions is empty")
    worst_mm = float(np.linalg.norm(np.asarray(pred_a.shape) * spacing_d))
    out: dict[str, dict[str, Any]] = {}
    for name, labels in regions.items():
        labels_l = [int(v) for v in labels]
        if not labels_l or min(labels_l) <= 0:
            raise ValueError(f"region {name!r}: needs foreground label values (> 0), got {labels_l}")
        if name == _MEAN_REGION:
            raise ValueError(f"region name {name!r} is reserved for the across-regions mean row")
        out[name] = _region_metrics(np.isin(pred_a, labels_l), np.isin(ref_a, labels_l), spacing_d, worst_mm,
                                    HD95_KEYS[unit])
    return out


# ----------------------------------------------------------------------------------------------
# Segmentation summary
# ----------------------------------------------------------------------------------------------


def _reasons(statuses: np.ndarray) -> str:
    """``"both_empty=2;missed=1"`` for the statuses of excluded values (fixed order)."""
    counts = Counter(statuses.tolist())
    return ";".join(f"{s}={counts[s]}" for s in _STATUSES if counts.get(s))


def _mean_over_regions(values_nr: np.ndarray) -> float:
    """Mean over regions of each region's mean over its defined (non-NaN) cases."""
    defined_r = (~np.isnan(values_nr)).sum(axis=0)
    if np.any(defined_r == 0):
        raise ValueError("a region has no defined value in this resample")
    return float(np.mean(np.nansum(values_nr, axis=0) / defined_r))


def summarize_segmentation(
    per_case: Sequence[Mapping[str, Mapping[str, Any]]],
    *,
    mean_over: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Means with case-bootstrap CIs of per-case segmentation metrics, excluding NaN *by reason*.

    per_case: outputs of :func:`segmentation_case_metrics`, one per case, same regions each.
    Returns ``{"rows", "policy", "counts", "mean_over"}``:

    * ``rows``: one :class:`MetricRow` per (region, metric) with ``value`` = mean over the cases
      where the metric is defined, ``n`` = that many cases, ``n_excluded`` + ``excluded_reasons``
      (statuses of the NaN cases); then, per metric, a ``region="mean"`` row = mean over the
      ``mean_over`` regions (default all) of their region means (e.g. BTCV 8-organ average),
      with CIs from resampling cases jointly across regions (resamples leaving a region without
      a defined value are skipped and counted). For that row ``n`` = cases with at least one
      defined value and ``n_excluded`` counts excluded (case, region) values.
    * ``policy``: :data:`EMPTY_MASK_POLICY` as a dict.
    * ``counts``: per region ``n_cases``, ``n_ok``, ``n_both_empty``, ``n_missed``, ``n_false_positive``.
    """
    if not per_case:
        raise ValueError("summarize_segmentation: no cases")
    region_names = list(per_case[0].keys())
    first = per_case[0][region_names[0]] if region_names else {}
    metrics = (*SEGMENTATION_METRICS[:3], HD95_KEYS["px"] if HD95_KEYS["px"] in first else HD95_KEYS["mm"])
    for i, case in enumerate(per_case):
        if list(case.keys()) != region_names:
            raise ValueError(f"case {i}: regions {list(case.keys())} differ from case 0's {region_names}")
        for name in region_names:
            missing = [m for m in (*metrics, "status") if m not in case[name]]
            if missing:
                raise ValueError(f"case {i}, region {name!r}: missing keys {missing}")
            if case[name]["status"] not in _STATUSES:
                raise ValueError(f"case {i}, region {name!r}: unknown status {case[name]['status']!r}")
    selected = list(region_names) if mean_over is None else list(mean_over)
    unknown = [r for r in selected if r not in region_names]
    if unknown or not selected:
        raise ValueError(f"mean_over: unknown regions {unknown} (available: {region_names})")
    if len(set(selected)) != len(selected):
        raise ValueError(f"mean_over: duplicated regions in {selected}")

    statuses_nr = np.array([[case[r]["status"] for r in region_names] for case in per_case], dtype=object)
    counts = {
        r: {"n_cases": len(per_case)}
        | {f"n_{s}": int((statuses_nr[:, j] == s).sum()) for s in _STATUSES}
        for j, r in enumerate(region_names)
    }
    rows: list[MetricRow] = []
    sel_idx = [region_names.index(r) for r in selected]
    for metric in metrics:
        values_nr = np.array([[float(case[r][metric]) for r in region_names] for case in per_case])
        nan_nr = np.isnan(values_nr)
        bad = np.argwhere(nan_nr & (statuses_nr == "ok"))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"case {i}, region {region_names[j]!r}: {metric} is NaN but status is 'ok'")
        for j, region in enumerate(region_names):
            rows.append(_region_row(metric, region, values_nr[:, j], statuses_nr[:, j], n_resamples, seed))
        rows.append(_mean_row(metric, selected, values_nr[:, sel_idx], statuses_nr[:, sel_idx], n_resamples, seed))
    return {"rows": rows, "policy": asdict(EMPTY_MASK_POLICY), "counts": counts, "mean_over": selected}


def _region_row(
    metric: str, region: str, values_n: np.ndarray, statuses_n: np.ndarray, n_resamples: int, seed: int
) -> MetricRow:
    excluded = np.isnan(values_n)
    kept = values_n[~excluded]
    n = int(kept.size)
    note = ""
    if n == 0:
        value = low = high = float("nan")
        note = "no case with a defined value"
    else:
        value = float(kept.mean())
        low, high = bootstrap_ci(kept, n_resamples=n_resamples, seed=seed)
        if n == 1:
            note = "CI undefined for n=1"
    return {
        "metric": metric,
        "region": region,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_excluded": int(excluded.sum()),
        "excluded_reasons": _reasons(statuses_n[excluded]),
        "note": note,
    }


def _mean_row(
    metric: str, regions: list[str], values_nr: np.ndarray, statuses_nr: np.ndarray, n_resamples: int, seed: int
) -> MetricRow:
    excluded = np.isnan(values_nr)
    empty_regions = [r for j, r in enumerate(regions) if excluded[:, j].all()]
    row: MetricRow = {
        "metric": metric,
        "region": _MEAN_REGION,
        "regions": ",".join(regions),
        "value": float("nan"),
        "ci_low": float("nan"),
        "ci_high": float("nan"),
        "n": int((~excluded).any(axis=1).sum()),
        "n_excluded": int(excluded.sum()),
        "excluded_reasons": _reasons(statuses_nr[excluded]),
        "n_resamples_skipped": 0,
        "note": "",
    }
    if empty_regions:
        row["note"] = f"undefined: no case with a defined {metric} in regions {empty_regions}"
        return row
    boot = bootstrap_metric_ci(_mean_over_regions, values_nr, n_resamples=n_resamples, seed=seed)
    row.update(value=boot.value, ci_low=boot.low, ci_high=boot.high, n_resamples_skipped=boot.n_skipped)
    if values_nr.shape[0] == 1:
        row["note"] = "CI undefined for n=1"
    elif boot.n_valid < 2:
        row["note"] = f"CI undefined: only {boot.n_valid} valid resamples"
    elif boot.n_skipped:
        row["note"] = f"{boot.n_skipped} of {n_resamples} resamples skipped: a region had no defined value"
    return row
