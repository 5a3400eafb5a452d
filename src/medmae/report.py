"""The sweep directory's results and report: ``results.csv`` gathered from the cells' evaluations, mean ± std over
seeds/folds, bootstrap CIs, paired comparison with scratch, the label-efficiency plot, the mask-ratio ablation and
reconstruction figures -> ``summary.json``, ``report.md`` and ``report.html``.

This module owns the sweep directory's files (``docs/reference/run-dir.md``, "Sweeps"): ``medmae sweep``
(:mod:`medmae.tasks.sweep`) runs the cells and calls :func:`collect` and :func:`write_report`.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medmae.errors import RunDirError
from medmae.metrics import bootstrap_ci
from medmae import report_arms as arms
from medmae.run_layout import CONFIG_FILE, EVAL_DIR, FIGURES_DIR, SUMMARY_FILE, eval_split_dir

SWEEP_FILE = "sweep.json"
RESULTS_CSV = "results.csv"
RESULT_COLUMNS = ("task", "fold", "fraction", "seed", "init", "metric", "class", "region", "value", "ci_low", "ci_high", "n",
                  arms.LEARNED_COLUMN)
CELLS_DIR = "cells"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_FILES = "report_files"
HEADLINE = {"cls": [("macro_auroc", ""), ("auroc", "")], "seg": [("dice", "mean")]}


# ------------------------------------------------------------------------------------- sweep.json, results.csv


def read_sweep(run_dir: str | Path) -> dict[str, Any] | None:
    """The sweep's definition (``sweep.json``: task, preset, data, inits, fractions, seeds, folds, ...), or None."""
    path = Path(run_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def require_sweep(run_dir: Path) -> dict[str, Any]:
    meta = read_sweep(run_dir)
    if meta is None:
        raise RunDirError(f"{run_dir}: not a sweep directory (no {SWEEP_FILE}; see `medmae sweep`)")
    return meta


def write_sweep(run_dir: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(run_dir) / SWEEP_FILE
    path.write_text(json.dumps(meta, indent=1))
    return path


def find_summary(run_dir: str | Path, split: str = "test") -> Path | None:
    """The evaluation summary of a run's own ``split``: ``eval/<split>/summary.json``, or the single
    ``eval/summary.json`` of runs evaluated by older versions (when it is of that split); None if neither."""
    new = eval_split_dir(run_dir, split) / SUMMARY_FILE
    if new.is_file():
        return new
    old = Path(run_dir) / EVAL_DIR / SUMMARY_FILE
    if old.is_file() and json.loads(old.read_text()).get("split", split) == split:
        return old
    return None


def parse_cell(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Cell coordinates from its folder name (``<task>_frac<f>_seed<s>_<init>[_fold<k>]``)."""
    task, rest = name.split("_frac", 1)
    frac, rest = rest.split("_seed", 1)
    seed, rest = rest.split("_", 1)
    fold = ""
    if meta.get("folds") and "_fold" in rest:
        rest, fold = rest.rsplit("_fold", 1)
    return {"task": task, "fold": fold, "fraction": float(frac), "seed": int(seed), "init": rest}


def collect(run_dir: str | Path) -> list[dict[str, Any]]:
    """Gather every finished cell's evaluation into the tidy ``results.csv`` (one row per cell and metric)."""
    run_dir = Path(run_dir)
    meta = require_sweep(run_dir)
    rows = []
    for cell_dir in sorted((run_dir / CELLS_DIR).glob("*")):
        summary_path = find_summary(cell_dir)
        if summary_path is None:
            continue
        summary = json.loads(summary_path.read_text())
        cfg = parse_cell(cell_dir.name, meta)
        learned = arms.cell_learned(cell_dir)
        for r in summary["rows"]:
            rows.append({**cfg, "metric": r["metric"], "class": r.get("class", ""), "region": r.get("region", ""),
                         "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
                         arms.LEARNED_COLUMN: learned})
    with (run_dir / RESULTS_CSV).open("w", newline="") as f:
        w = csv.DictWriter(f, RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows


def read_results(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["fraction"] = float(r["fraction"])
        r["seed"] = int(r["seed"])
        for k in ("value", "ci_low", "ci_high"):
            r[k] = float(r[k]) if r[k] not in ("", "nan") else math.nan
        r["n"] = int(r["n"])
    return rows


# ------------------------------------------------------------------------------------- aggregation


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
    over the pairs, and a paired t-test p-value (two-sided; needs at least 2 pairs)."""
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
            if len(d) > 1 and np.ptp(d) > 0:
                lo, hi = bootstrap_ci(d, seed=seed)
                p = float(stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
            else:
                lo = hi = float(d.mean())
                p = math.nan
            out.append({"init": init, "reference": reference, "fraction": frac, "metric": metric, "where": where,
                        "mean_diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n_pairs": len(d),
                        "p_value": p, "wins": int((d > 0).sum()), "losses": int((d < 0).sum())})
    return out


def plot_label_efficiency(agg: Sequence[dict[str, Any]], metric: str, where: str, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for init in sorted({a["init"] for a in agg}):
        pts = sorted((a for a in agg if a["init"] == init and a["metric"] == metric and a["where"] == where),
                     key=lambda a: a["fraction"])
        if not pts:
            continue
        x = [100 * p["fraction"] for p in pts]
        ax.plot(x, [p["mean"] for p in pts], marker="o", label=init)
        ax.fill_between(x, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training cases (%)")
    ax.set_ylabel(_label(metric, where))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def init_details(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pretraining facts of each initialisation that is a medmae run: mask ratio, preset, latest figure."""
    out = {}
    for name, init in meta["inits"].items():
        p = Path(init)
        if init == "scratch" or not (p / CONFIG_FILE).is_file():
            continue
        cfg = yaml.safe_load((p / CONFIG_FILE).read_text())
        figs = sorted((p / FIGURES_DIR).glob("*.png"))
        out[name] = {"mask_ratio": cfg.get("mask", {}).get("ratio"), "preset": cfg.get("name"),
                     "arch": cfg.get("model", {}).get("arch"), "figure": str(figs[-1]) if figs else None}
    return out


def _label(metric: str, where: str) -> str:
    return f"{metric} ({where})" if where else metric


def _fmt(v: float, digits: int = 3) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def sweep_data(run_dir: Path, meta: dict[str, Any]) -> str:
    """The dataset a sweep ran on: given on the command line, else the one its cells' configs name."""
    if meta.get("data"):
        return str(meta["data"])
    for cfg_path in sorted((run_dir / CELLS_DIR).glob(f"*/{CONFIG_FILE}")):
        return str(yaml.safe_load(cfg_path.read_text()).get("data", {}).get("path") or "synthetic")
    return "synthetic"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html``, ``summary.json`` and the figures of a sweep directory."""
    run_dir = Path(run_dir)
    meta = require_sweep(run_dir)
    collect(run_dir)
    rows = read_results(run_dir / RESULTS_CSV)
    if not rows:
        raise RunDirError(f"{run_dir}: no finished cells to report on")
    task = meta["task"]
    metric, where = headline_key(rows, task)
    agg = aggregate(rows)
    paired = paired_comparison(rows, metric, where) if "scratch" in meta["inits"] else []
    vs_baseline = arms.baseline_comparisons(rows, meta, metric, where, paired_comparison)
    flagged = arms.not_learned(rows)
    files = run_dir / REPORT_FILES
    files.mkdir(exist_ok=True)
    label = _label(metric, where)
    plot_label_efficiency(agg, metric, where, files / "label_efficiency.png",
                                 f"{task}: {label} vs labelled fraction (mean and 95 % CI)")
    details = init_details(meta)
    recon = {}
    for name, d in details.items():
        if d["figure"]:
            recon[name] = files / f"recon_{name}.png"
            shutil.copyfile(d["figure"], recon[name])
    head = [a for a in agg if a["metric"] == metric and a["where"] == where]
    (run_dir / SUMMARY_FILE).write_text(json.dumps({"task": task, "headline": {"metric": metric, "where": where},
                                                     "aggregate": agg, "paired": paired, "paired_baseline": vs_baseline,
                                                     "not_learned": flagged, "inits": details}, indent=1))
    setup = f"preset `{meta['preset']}`" if meta.get("preset") else f"config `{meta.get('config')}`"
    md = [f"# Label-efficiency sweep: {task}", "",
          f"{setup[0].upper() + setup[1:]}, data `{sweep_data(run_dir, meta)}`, seeds {meta['seeds']}, "
          f"{'%d-fold CV' % meta['folds'] if meta.get('folds') else 'one held-out split'}, fractions "
          f"{', '.join(f'{100 * f:g} %' for f in meta['fractions'])}. Headline: **{label}**. "
          "Mean ± std over seeds/folds; 95 % CI by bootstrap over seeds/folds (over test cases when there is one run).",
          "", f"![label efficiency]({REPORT_FILES}/label_efficiency.png)", "", "## Results", "",
          _table(["init", "labels", label, "± std", "95 % CI", "runs", "MAE learned"],
                 [[a["init"], f"{100 * a['fraction']:g} %", _fmt(a["mean"]), _fmt(a["std"]) if a["n_runs"] > 1 else "-",
                   f"{_fmt(a['ci_low'])} - {_fmt(a['ci_high'])}", str(a["n_runs"]), arms.learned_label(rows, a["init"], meta)]
                  for a in head])]
    md += arms.markdown(vs_baseline, flagged, rows, _table, _fmt)
    if paired:
        md += ["", "## Paired comparison with scratch", "",
               "Difference on the same label subset, seed and fold; positive = better than scratch.", "",
               _table(["init", "labels", "mean difference", "95 % CI", "pairs", "wins/losses", "paired t-test p"],
                      [[p["init"], f"{100 * p['fraction']:g} %", _fmt(p["mean_diff"], 4),
                        f"{_fmt(p['ci_low'], 4)} - {_fmt(p['ci_high'], 4)}", str(p["n_pairs"]),
                        f"{p['wins']}/{p['losses']}", _fmt(p["p_value"], 3)] for p in paired])]
    ratios = {n: d["mask_ratio"] for n, d in details.items() if d["mask_ratio"] is not None}
    if len(set(ratios.values())) > 1:
        fracs = sorted({a["fraction"] for a in head})
        md += ["", "## Mask-ratio ablation", "",
               _table(["init", "mask ratio", *[f"{100 * f:g} %" for f in fracs]],
                      [[n, f"{r:g}", *[_fmt(next((a["mean"] for a in head if a["init"] == n and a["fraction"] == f), math.nan))
                                        for f in fracs]] for n, r in sorted(ratios.items(), key=lambda kv: kv[1])])]
    other = sorted({(a["metric"], a["where"]) for a in agg} - {(metric, where)})
    if other:
        md += ["", "## All metrics (mean over seeds/folds)", "",
               _table(["init", "labels", "metric", "mean", "± std", "95 % CI"],
                      [[a["init"], f"{100 * a['fraction']:g} %", _label(a["metric"], a["where"]),
                        _fmt(a["mean"]), _fmt(a["std"]) if a["n_runs"] > 1 else "-",
                        f"{_fmt(a['ci_low'])} - {_fmt(a['ci_high'])}"]
                       for a in agg if (a["metric"], a["where"]) != (metric, where)])]
    if recon:
        md += ["", "## Reconstructions of the pretrained models", ""]
        md += [f"**{n}** (mask ratio {details[n]['mask_ratio']}):\n\n![{n}]({REPORT_FILES}/{p.name})\n" for n, p in recon.items()]
    md += ["", f"Raw results: `{RESULTS_CSV}` (one row per cell and metric); per-cell runs under `{CELLS_DIR}/`."]
    text = "\n".join(md) + "\n"
    (run_dir / REPORT_MD).write_text(text)
    (run_dir / REPORT_HTML).write_text(markdown_to_html(text, run_dir))
    return run_dir / REPORT_MD


def markdown_to_html(text: str, base: Path) -> str:
    """The small subset of Markdown the report uses (headings, tables, images, bold, code) as standalone HTML
    with the images inlined, so the file opens anywhere."""
    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, body = table[0], [r for r in table[2:]]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            table = []
        m = re.match(r"!\[(.*?)\]\((.+?)\)", line)
        if m:
            data = base64.b64encode((base / m.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}" style="max-width:100%"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em}th{background:#eee}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>medmae report</title><style>{style}</style></head><body>{''.join(out)}</body></html>\n"
