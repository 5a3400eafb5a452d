"""The sweep directory's results and report: ``results.csv`` gathered from the cells' evaluations, mean ± std over
seeds/folds, bootstrap CIs, paired comparison with scratch and with each baseline arm, pretrainings that did not
learn flagged, the steps each cell got (budgets measured on a busy machine flagged), the label-efficiency plot,
the mask-ratio ablation, the pretraining-leakage check, the setup (data, configuration, plan) and reconstruction
figures -> ``summary.json``, ``report.md`` and ``report.html``.

This package owns the sweep directory's files (``docs/reference/run-dir.md``, "Sweeps"): ``medmae sweep``
(:mod:`medmae.tasks.sweep`) runs the cells and calls :func:`collect` and :func:`write_report`.

==================  =================================================================================
``sweep_files``     ``sweep.json``, ``results.csv``, a cell's evaluation and files
``tables``          aggregation, paired comparison, readable metric names, the Markdown tables
``context``         data, configuration, plan, initialisations and the leakage check of the cells
``arms``            scratch, baseline and pretrained arms; pairs with each baseline; pretrainings that did not learn
``budgets``         the steps and minutes each cell got; budgets measured on a busy machine
``plots``           the label-efficiency plot (PNG, SVG, PDF)
``html``            the Markdown subset as standalone HTML
``write``           :func:`write_report`
==================  =================================================================================
"""

from __future__ import annotations

from medmae.report.context import init_details, sweep_data
from medmae.report.html import markdown_to_html
from medmae.report.plots import plot_label_efficiency
from medmae.report.sweep_files import (
    CELLS_DIR,
    RESULT_COLUMNS,
    RESULTS_CSV,
    SWEEP_FILE,
    collect,
    find_summary,
    parse_cell,
    read_results,
    read_sweep,
    require_sweep,
    write_sweep,
)
from medmae.report.tables import HEADLINE, aggregate, headline_key, metric_label, paired_comparison
from medmae.report.write import REPORT_FILES, REPORT_HTML, REPORT_MD, write_report

__all__ = [
    "CELLS_DIR", "HEADLINE", "REPORT_FILES", "REPORT_HTML", "REPORT_MD", "RESULTS_CSV", "RESULT_COLUMNS", "SWEEP_FILE",
    "aggregate", "collect", "find_summary", "headline_key", "init_details", "markdown_to_html", "metric_label",
    "paired_comparison", "parse_cell", "plot_label_efficiency", "read_results", "read_sweep", "require_sweep",
    "sweep_data", "write_report", "write_sweep",
]
