"""``report.md``, ``report.html`` and ``summary.json`` of a sweep directory, with the label-efficiency plot and the
reconstruction figures under ``report_files/``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from medmae.errors import RunDirError
from medmae.report.arms import baseline_comparisons, learned_label, not_learned
from medmae.report.arms import markdown as arms_markdown
from medmae.report.budgets import markdown as training_markdown
from medmae.report.budgets import training_rows
from medmae.report.cases import cases_table, paired_over_cases
from medmae.report.context import init_details, labelled_counts, leakage, leakage_table, setup_section, sweep_data
from medmae.report.html import markdown_to_html
from medmae.report.plots import init_label, plot_label_efficiency
from medmae.report.sweep_files import (
    CELLS_DIR,
    RESULTS_CSV,
    collect,
    finished_cells,
    read_results,
    require_sweep,
)
from medmae.report.tables import (
    TASK_NAMES,
    ablation_table,
    aggregate,
    all_metrics_table,
    headline_key,
    metric_label,
    paired_comparison,
    paired_table,
    percent,
    results_table,
)
from medmae.run_layout import SUMMARY_FILE

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_FILES = "report_files"
LABEL_EFFICIENCY = "label_efficiency"


def strict(value: Any) -> Any:
    """NaN / Inf as ``null`` all the way down, so ``summary.json`` is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def leakage_lines(leaks: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The leakage section, and a warning for the top of the report when some MAE saw evaluated cases."""
    section = ["## Pretraining leakage check", "",
               "Each evaluation compares the content (sha256) of its held-out images with the images its encoder "
               "was pretrained on (`pretrain_cases.json` of the MAE run). Seen images were unlabelled during "
               "pretraining, but the comparison with scratch is then transductive.", "", leakage_table(leaks)]
    seen = [n for n, e in sorted(leaks.items()) if e["checked"] and sum(e["seen"])]
    warn = [f"**Leakage:** the pretraining of {', '.join(f'`{n}`' for n in seen)} saw evaluated (held-out) images, "
            "unlabelled; see the leakage check below.", ""] if seen else []
    return section, warn


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html``, ``summary.json`` and the figures of a sweep directory."""
    run_dir = Path(run_dir)
    meta = require_sweep(run_dir)
    collect(run_dir)
    rows = read_results(run_dir / RESULTS_CSV)
    if not rows:
        raise RunDirError(f"{run_dir}: no finished cells to report on")
    cells = finished_cells(run_dir)
    task = meta["task"]
    metric, where = headline_key(rows, task)
    agg = aggregate(rows)
    paired = paired_comparison(rows, metric, where) if "scratch" in meta["inits"] else []
    vs_baseline = baseline_comparisons(rows, meta, metric, where)
    by_case = paired_over_cases(cells, meta, metric, where) if "scratch" in meta["inits"] else []
    flagged = not_learned(rows)
    files = run_dir / REPORT_FILES
    files.mkdir(exist_ok=True)
    label = metric_label(metric, where)
    details = init_details(meta)
    plot_label_efficiency(agg, metric, where, files / f"{LABEL_EFFICIENCY}.png",
                          f"{TASK_NAMES.get(task, task)}: {label} vs labelled fraction (mean, 95 % CI)",
                          labels={n: init_label(n, p, details) for n, p in meta["inits"].items()},
                          counts=labelled_counts(cells, meta))
    recon = {}
    for name, d in details.items():
        if d["figure"]:
            recon[name] = files / f"recon_{name}.png"
            shutil.copyfile(d["figure"], recon[name])
    head = [a for a in agg if a["metric"] == metric and a["where"] == where]
    leaks = leakage(cells, meta)
    leak_section, leak_warning = leakage_lines(leaks)
    training = training_rows(cells, meta)
    training_section, busy_warning = training_markdown(training)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(strict({
        "task": task, "headline": {"metric": metric, "where": where}, "aggregate": agg, "paired": paired,
        "paired_baseline": vs_baseline, "paired_over_cases": by_case, "not_learned": flagged, "inits": details, "leakage": leaks,
        "training": training}), indent=1))
    md = [f"# Label-efficiency sweep: {TASK_NAMES.get(task, task)}", "",
          f"Data `{sweep_data(run_dir, meta)}`, seeds {', '.join(map(str, meta['seeds']))}, "
          f"{'%d-fold CV' % meta['folds'] if meta.get('folds') else 'one held-out split'}, fractions "
          f"{', '.join(percent(f) for f in meta['fractions'])}. Headline: **{label}**. "
          "Mean ± std over seeds/folds; 95 % CI by bootstrap over seeds/folds (over test cases when there is one run). "
          "Setup (data, configuration, plan) at the end.", "", *leak_warning, *busy_warning,
          f"![label efficiency]({REPORT_FILES}/{LABEL_EFFICIENCY}.png)", "",
          f"Vector versions for papers: `{REPORT_FILES}/{LABEL_EFFICIENCY}.svg`, `{REPORT_FILES}/{LABEL_EFFICIENCY}.pdf`.",
          "", "## Results", "",
          results_table(head, label, learned={n: learned_label(rows, n, meta) for n in meta["inits"]})]
    md += arms_markdown(vs_baseline, flagged, rows)
    if paired:
        md += ["", "## Paired comparison with scratch", "",
               "Difference on the same label subset, seed and fold; positive = better than scratch. One pair has no "
               "interval and no test (n/a).", "", paired_table(paired)]
    if by_case:
        md += ["", "## Paired over test cases", "",
               (f"Per case, the mean {metric} over the regions both arms define, arm minus scratch" if task != "cls"
                else f"{label} of the arm minus that of scratch") + " in the same cell (both predicted the same "
               "images); 95 % CI by paired bootstrap over the cases. It says whether a difference is larger than the "
               "choice of test cases explains, which one seed and one split still allow (not the spread over seeds).",
               "", cases_table(by_case)]
    ratios = {n: d["mask_ratio"] for n, d in details.items() if d["mask_ratio"] is not None}
    if len(set(ratios.values())) > 1:
        md += ["", "## Mask-ratio ablation", "", ablation_table(head, ratios)]
    if {(a["metric"], a["where"]) for a in agg} - {(metric, where)}:
        md += ["", "## All metrics", "", "Mean over seeds/folds and its 95 % CI (as in the results table).", "",
               all_metrics_table(agg, (metric, where))]
    md += ["", *training_section] if training_section else []
    md += ["", *leak_section]
    if recon:
        md += ["", "## Reconstructions of the pretrained models", ""]
        md += [f"**{n}** (mask ratio {details[n]['mask_ratio']}):\n\n![{n}]({REPORT_FILES}/{p.name})\n" for n, p in recon.items()]
    md += ["", *setup_section(run_dir, cells, meta, details)]
    md += ["", f"Raw results: `{RESULTS_CSV}` (one row per cell and metric); per-cell runs under `{CELLS_DIR}/`."]
    text = "\n".join(md) + "\n"
    (run_dir / REPORT_MD).write_text(text)
    (run_dir / REPORT_HTML).write_text(markdown_to_html(text, run_dir, f"medmae sweep: {run_dir.name}"))
    return run_dir / REPORT_MD
