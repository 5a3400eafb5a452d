"""The arms of a sweep in its report: scratch, MONAI baselines (``baseline:NAME``) and pretrained encoders; the
paired comparison of every arm with each baseline; and the cells whose pretraining did not learn, flagged.

A cell's arm and its pretraining verdict come from its ``task.json`` (written by ``medmae finetune``);
:mod:`medmae.report.sweep_files` puts the verdict into ``results.csv`` and :mod:`medmae.report.write` the rest
into the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmae.report.tables import paired_comparison, paired_table, percent
from medmae.run_layout import TASK_FILE

BASELINE_PREFIX = "baseline:"
LEARNED_COLUMN = "init_learned"


def arm_of(meta: dict[str, Any], name: str) -> str:
    """``scratch``, ``baseline`` or ``pretrained`` for an init name of the sweep."""
    init = str(meta.get("inits", {}).get(name, name))
    return "scratch" if init == "scratch" else "baseline" if init.startswith(BASELINE_PREFIX) else "pretrained"


def baselines(meta: dict[str, Any]) -> list[str]:
    return sorted(n for n in meta.get("inits", {}) if arm_of(meta, n) == "baseline")


def cell_learned(cell_dir: Path) -> str:
    """``true`` / ``false`` when the cell's init is a pretraining with a verdict, else empty (``results.csv``)."""
    path = Path(cell_dir) / TASK_FILE
    if not path.is_file():
        return ""
    check = json.loads(path.read_text()).get("init_pretraining")
    return "" if not check else str(bool(check["learned"])).lower()


def not_learned(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Init -> number of its cells whose pretraining did not beat the patch-mean baseline."""
    cells: dict[str, set] = {}
    for r in rows:
        if str(r.get(LEARNED_COLUMN, "")).lower() == "false":
            cells.setdefault(r["init"], set()).add((r["fraction"], r["seed"], r["fold"]))
    return {k: len(v) for k, v in sorted(cells.items())}


def learned_label(rows: Sequence[dict[str, Any]], init: str, meta: dict[str, Any]) -> str:
    """The report's column: ``yes`` / ``**no**`` for pretrained inits with a verdict, ``-`` otherwise."""
    if arm_of(meta, init) != "pretrained":
        return "-"
    values = {str(r.get(LEARNED_COLUMN, "")).lower() for r in rows if r["init"] == init} - {""}
    return "**no**" if "false" in values else "yes" if values else "-"


def baseline_comparisons(rows: Sequence[dict[str, Any]], meta: dict[str, Any], metric: str,
                         where: str) -> list[dict[str, Any]]:
    """Every other arm minus each baseline on the same cells (:func:`medmae.report.tables.paired_comparison`)."""
    out = []
    for b in baselines(meta):
        out += [p for p in paired_comparison(rows, metric, where, reference=b) if arm_of(meta, p["init"]) != "baseline"]
    return out


def markdown(paired: Sequence[dict[str, Any]], flagged: dict[str, int], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's sections on baselines and on pretrainings that learned nothing."""
    md: list[str] = []
    for init, n in flagged.items():
        check = next((r for r in rows if r["init"] == init), {})
        md += ["", f"**Warning: the pretraining of `{init}` did not learn** (its final masked loss does not beat "
               f"predicting each masked patch by its own mean); its {n} cell(s) are flagged `no` in the column "
               f"`MAE learned` and `{LEARNED_COLUMN}=false` in `results.csv`{_cells(check)}."]
    for ref in sorted({p["reference"] for p in paired}):
        md += ["", f"## Paired comparison with the baseline {ref}", "",
               f"Difference on the same label subset, seed and fold; positive = better than {ref} (a standard "
               "supervised network trained from scratch on the same data, split, augmentation, loss and budget). "
               "One pair has no interval and no test (n/a).", "",
               paired_table([p for p in paired if p["reference"] == ref])]
    return md


def _cells(row: dict[str, Any]) -> str:
    return "" if not row else f" (e.g. the cell at {percent(row['fraction'])}, seed {row['seed']})"
