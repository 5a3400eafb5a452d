"""Aggregation over seeds/folds, the paired comparison with scratch, readable metric names and the Markdown
tables of the report."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmae.metrics import bootstrap_ci

HEADLINE = {"cls": [("macro_auroc", ""), ("auroc", "")], "seg": [("dice", "mean")]}
METRIC_NAMES = {"macro_auroc": "ROC-AUC (macro)", "auroc": "ROC-AUC", "macro_auprc": "PR-AUC (macro)", "auprc": "PR-AUC",
                "accuracy": "accuracy", "dice": "Dice", "precision": "precision", "recall": "recall",
                "hd95_mm": "HD95 (mm)", "hd95_px": "HD95 (px)", "sensitivity": "sensitivity", "specificity": "specificity"}
CHANCE = {"macro_auroc": 0.5, "auroc": 0.5}  # the level a model without information scores (PR-AUC: prevalence)
TASK_NAMES = {"cls": "classification", "seg": "segmentation"}
ONE_PAIR = "n/a (1 pair)"


def metric_label(metric: str, where: str) -> str:
    """``ROC-AUC (macro)``, ``ROC-AUC: PNEUMONIA``, ``Dice: mean``, ``HD95 (mm): Anterior``."""
    name = METRIC_NAMES.get(metric, metric)
    return f"{name}: {where}" if where else name


def headline_key(rows: Sequence[dict[str, Any]], task: str) -> tuple[str, str]:
    """(metric, region/class) of the task's headline: macro ROC-AUC (binary: ROC-AUC), mean Dice."""
    present = {(r["metric"], r["region"] or r["class"]) for r in rows}
    for metric, where in HEADLINE[task]:
        if metric == "auroc" and not where:
            match = sorted(w for m, w in present if m == "auroc")
            if match:
                return "auroc", match[0]
        elif (metric, where) in present:
            return metric, where
    raise ValueError(f"no headline metric for task {task!r} in the results")


def aggregate(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Per (init, fraction, metric, class/region): mean, std and a bootstrap 95 % CI over seeds and folds.

    With a single seed/fold the interval is that cell's own case-level bootstrap interval.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["init"], r["fraction"], r["metric"], r["region"] or r["class"])].append(r)
    out = []
    for (init, frac, metric, where), items in sorted(groups.items()):
        vals = np.array([i["value"] for i in items], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(vals) == 0:
            continue
        if len(vals) > 1 and np.ptp(vals) > 0:
            lo, hi = bootstrap_ci(vals, seed=seed)
            source = "seeds/folds"
        elif len(vals) > 1:
            lo = hi = float(vals[0])
            source = "seeds/folds"
        else:
            lo, hi, source = items[0]["ci_low"], items[0]["ci_high"], "cases"
        out.append({"init": init, "fraction": frac, "metric": metric, "where": where, "mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "ci_low": float(lo), "ci_high": float(hi),
                    "ci_over": source, "n_runs": int(len(vals))})
    return out


def paired_comparison(rows: Sequence[dict[str, Any]], metric: str, where: str, reference: str = "scratch",
                      seed: int = 0) -> list[dict[str, Any]]:
    """Each initialisation minus ``reference`` on the same (fraction, seed, fold): mean difference, bootstrap CI
    over the pairs, and a paired t-test p-value (two-sided). With one pair, or pairs that all differ by the same
    amount, there is no interval and no test: ``ci_low``/``ci_high``/``p_value`` are None."""
    from scipy import stats

    table: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["metric"] == metric and (r["region"] or r["class"]) == where and math.isfinite(r["value"]):
            table[(r["fraction"], r["seed"], r["fold"])][r["init"]] = r["value"]
    inits = sorted({i for v in table.values() for i in v} - {reference})
    out = []
    for init in inits:
        for frac in sorted({k[0] for k in table}):
            pairs = [(v[init], v[reference]) for k, v in table.items() if k[0] == frac and init in v and reference in v]
            if not pairs:
                continue
            d = np.array([a - b for a, b in pairs])
            lo = hi = p = None
            if len(d) > 1 and np.ptp(d) > 0:
                lo, hi = (float(x) for x in bootstrap_ci(d, seed=seed))
                p = float(stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
            out.append({"init": init, "reference": reference, "fraction": frac, "metric": metric, "where": where,
                        "mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "n_pairs": len(d),
                        "p_value": p, "wins": int((d > 0).sum()), "losses": int((d < 0).sum())})
    return out


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def fmt_signed(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.{digits}f}"


def percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "/")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def interval(a: dict[str, Any]) -> str:
    """An aggregate's 95 % CI, or why there is none."""
    if a["n_runs"] > 1 and a["ci_low"] == a["ci_high"]:
        return f"n/a ({a['n_runs']} equal runs)"
    return f"{fmt(a['ci_low'])} - {fmt(a['ci_high'])}"


def results_table(head: Sequence[dict[str, Any]], label: str, learned: dict[str, str] | None = None) -> str:
    """The headline per (init, fraction); ``learned`` (init -> ``yes`` / ``**no**`` / ``-``) adds the column
    ``MAE learned``."""
    extra = ["MAE learned"] if learned is not None else []
    return md_table(["init", "labels", label, "± std", "95 % CI", "runs", *extra],
                    [[a["init"], percent(a["fraction"]), fmt(a["mean"]), fmt(a["std"]) if a["n_runs"] > 1 else "-",
                      interval(a), str(a["n_runs"]), *([learned.get(a["init"], "-")] if learned is not None else [])]
                     for a in head])


def paired_table(paired: Sequence[dict[str, Any]]) -> str:
    """One row per (init, fraction); one pair has no interval and no test: ``n/a (1 pair)``."""
    def ci(p: dict[str, Any]) -> str:
        if p["n_pairs"] == 1:
            return ONE_PAIR
        if p["ci_low"] is None:
            return f"n/a ({p['n_pairs']} equal differences)"
        return f"{fmt_signed(p['ci_low'])} to {fmt_signed(p['ci_high'])}"

    return md_table(["init", "labels", "mean difference", "95 % CI", "pairs", "wins/losses", "paired t-test p"],
                    [[p["init"], percent(p["fraction"]), fmt_signed(p["mean_diff"]), ci(p), str(p["n_pairs"]),
                      f"{p['wins']}/{p['losses']}", ONE_PAIR if p["n_pairs"] == 1 else fmt(p["p_value"], 3)]
                     for p in paired])


def all_metrics_table(agg: Sequence[dict[str, Any]], skip: tuple[str, str]) -> str:
    """Every other metric: one row per (metric, init), one column per fraction, ``mean (95 % CI)``."""
    order = {m: i for i, m in enumerate(METRIC_NAMES)}
    fracs = sorted({a["fraction"] for a in agg})
    cells = {(a["metric"], a["where"], a["init"], a["fraction"]): a for a in agg if (a["metric"], a["where"]) != skip}
    keys = sorted({k[:3] for k in cells}, key=lambda k: (order.get(k[0], len(order)), k[0], k[1], k[2]))

    def cell(a: dict[str, Any] | None) -> str:
        if a is None:
            return "-"
        equal = a["n_runs"] > 1 and a["ci_low"] == a["ci_high"]
        ci = f" ({a['n_runs']} equal runs)" if equal else f" ({fmt(a['ci_low'])}-{fmt(a['ci_high'])})"
        return fmt(a["mean"]) + ci

    return md_table(["metric", "init", *[percent(f) for f in fracs]],
                    [[metric_label(m, w), init, *[cell(cells.get((m, w, init, f))) for f in fracs]] for m, w, init in keys])


def ablation_table(head: Sequence[dict[str, Any]], ratios: dict[str, float]) -> str:
    fracs = sorted({a["fraction"] for a in head})
    means = {(a["init"], a["fraction"]): a["mean"] for a in head}
    return md_table(["init", "mask ratio", *[percent(f) for f in fracs]],
                    [[n, f"{r:g}", *[fmt(means.get((n, f), math.nan)) for f in fracs]]
                     for n, r in sorted(ratios.items(), key=lambda kv: kv[1])])
