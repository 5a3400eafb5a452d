"""What a sweep ran on and with: the data and its split, the fine-tuning configuration, the grid, how each
initialisation was loaded (the adaptation plan's load report) and the pretraining-leakage check of every
evaluation. Read from ``sweep.json`` and the cells' ``config.yaml``, ``task.json``, ``splits.json`` and
``eval/test/summary.json``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medmae.report.arms import BASELINE_PREFIX
from medmae.report.sweep_files import CELLS_DIR, parse_cell, read_cell_json
from medmae.report.tables import md_table, percent
from medmae.run_layout import CONFIG_FILE, FIGURES_DIR, SPLITS_FILE, TASK_FILE

# fine-tuning keys shown in the report's configuration table (the full config.yaml follows it)
KEY_SETTINGS = ("mode", "model.arch", "model.img_size", "model.spatial_dims", "train.epochs", "train.min_steps",
                "train.batch_size", "train.precision", "optim.name", "optim.lr", "optim.layer_decay",
                "optim.weight_decay", "optim.warmup_epochs", "head.pool", "eval.threshold", "eval.bootstrap")
PER_CELL_KEYS = ("data.label_fraction", "data.label_seed", "train.seed", "eval.fold")


def init_details(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pretraining facts of each initialisation that is a medmae run: mask ratio, preset, latest figure."""
    out = {}
    for name, init in meta["inits"].items():
        p = Path(init)
        if init == "scratch" or init.startswith(BASELINE_PREFIX) or not (p / CONFIG_FILE).is_file():
            continue
        cfg = yaml.safe_load((p / CONFIG_FILE).read_text())
        figs = sorted((p / FIGURES_DIR).glob("*.png"))
        out[name] = {"mask_ratio": cfg.get("mask", {}).get("ratio"), "preset": cfg.get("name"),
                     "arch": cfg.get("model", {}).get("arch"), "figure": str(figs[-1]) if figs else None}
    return out


def sweep_data(run_dir: Path, meta: dict[str, Any]) -> str:
    """The dataset a sweep ran on: given on the command line, else the one its cells' configs name."""
    if meta.get("data"):
        return str(meta["data"])
    for cfg_path in sorted((run_dir / CELLS_DIR).glob(f"*/{CONFIG_FILE}")):
        return str(yaml.safe_load(cfg_path.read_text()).get("data", {}).get("path") or "synthetic")
    return "synthetic"


def leakage(cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per initialisation: how many of its evaluations were checked and how many evaluated cases the MAE had seen."""
    out: dict[str, dict[str, Any]] = {}
    for cell_dir, summary in cells:
        init = parse_cell(cell_dir.name, meta)["init"]
        entry = out.setdefault(init, {"cells": 0, "checked": 0, "seen": [], "cases": [], "reasons": set()})
        entry["cells"] += 1
        leak = summary.get("leakage")
        if not leak or not leak.get("checked"):
            entry["reasons"].add((leak or {}).get("reason", "evaluated by a version without the check"))
            continue
        entry["checked"] += 1
        entry["seen"].append(int(leak.get("n_overlap", 0)))
        entry["cases"].append(int(summary.get("n_cases", 0)))
    return {k: {**v, "reasons": sorted(v["reasons"])} for k, v in out.items()}


def leakage_verdict(entry: dict[str, Any]) -> str:
    """One sentence on what the check found for one initialisation."""
    if not entry["checked"]:
        return "not checked: " + "; ".join(entry["reasons"])
    seen, cases = np.array(entry["seen"]), np.array(entry["cases"])
    if seen.sum() == 0:
        return "none of the evaluated cases was in the pretraining data"
    if (seen == cases).all():
        return "every evaluated case was in the pretraining data (unlabelled): the MAE saw the test images"
    return (f"{seen.min()}-{seen.max()} of {cases.min()}-{cases.max()} evaluated cases per evaluation were in "
            "the pretraining data (unlabelled)")


def leakage_table(leaks: dict[str, dict[str, Any]]) -> str:
    def seen(e: dict[str, Any]) -> str:
        if not e["checked"]:
            return "-"
        lo, hi, n = min(e["seen"]), max(e["seen"]), max(e["cases"])
        return f"{lo} of {n}" if lo == hi else f"{lo}-{hi} of up to {n}"

    return md_table(["init", "evaluations checked", "evaluated cases seen in pretraining", "finding"],
                    [[name, f"{e['checked']} of {e['cells']}", seen(e), leakage_verdict(e)] for name, e in sorted(leaks.items())])


def dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def data_rows(run_dir: Path, cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any]) -> list[list[str]]:
    """Data, split origin, held-out and training sizes, and labelled training cases per fraction (from splits.json)."""
    splits = [(parse_cell(c.name, meta), read_cell_json(c, SPLITS_FILE)) for c, _ in cells]
    splits = [(cell, s) for cell, s in splits if s]
    rows = [["data", f"`{sweep_data(run_dir, meta)}`"]]
    if not splits:
        return rows
    origins = sorted({s.get("origin", "?") for _, s in splits})
    rows.append(["held-out split", "; ".join(origins[:3]) + (" ..." if len(origins) > 3 else "")])
    tests = sorted({len(s.get("test", [])) for _, s in splits})
    rows.append(["held-out (test) cases per evaluation", " / ".join(map(str, tests))])
    trains = sorted({len(s.get("train", [])) for _, s in splits})
    rows.append(["training cases (all labels)", " / ".join(map(str, trains))])
    used: dict[float, list[int]] = defaultdict(list)
    for cell, s in splits:
        used[cell["fraction"]].append(len(s.get("train_used", [])))
    rows.append(["labelled training cases used", ", ".join(f"{percent(f)}: {round(float(np.mean(v)))}" for f, v in sorted(used.items()))])
    return rows


def labelled_counts(cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any]) -> dict[float, int]:
    """Mean number of labelled training cases at each fraction (for the plot's x labels)."""
    used: dict[float, list[int]] = defaultdict(list)
    for cell_dir, _ in cells:
        s = read_cell_json(cell_dir, SPLITS_FILE)
        if s and "train_used" in s:
            used[parse_cell(cell_dir.name, meta)["fraction"]].append(len(s["train_used"]))
    return {f: round(float(np.mean(v))) for f, v in used.items()}


def load_summary(report: dict[str, Any] | None) -> str:
    """The load report of a cell's ``task.json`` in a few words: what the adaptation plan did."""
    if not report:
        return "random initialisation"
    parts = [f"{len(report.get('loaded', []))} tensors loaded"]
    for key in ("missing", "unexpected", "reshaped"):
        if report.get(key):
            parts.append(f"{len(report[key])} {key}")
    parts += report.get("adaptations", [])
    return "; ".join(parts)


def inits_table(cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any], details: dict[str, dict[str, Any]]) -> str:
    """One row per initialisation: where it came from, what it is, how its weights were loaded."""
    first = {}
    for cell_dir, _ in cells:
        first.setdefault(parse_cell(cell_dir.name, meta)["init"], cell_dir)
    rows = []
    for name, path in meta["inits"].items():
        d = details.get(name)
        if path == "scratch":
            what = "scratch"
        elif path.startswith(BASELINE_PREFIX):
            what = f"MONAI `{path[len(BASELINE_PREFIX):]}` from scratch (baseline)"
        else:
            what = f"medmae MAE run: preset `{d['preset']}`, `{d['arch']}`, mask ratio {d['mask_ratio']}" if d else "encoder file"
        task = read_cell_json(first[name], TASK_FILE) if name in first else None
        rows.append([name, f"`{path}`", what, load_summary((task or {}).get("load_report")) if task else "-"])
    return md_table(["init", "source", "what", "weights (fine-tuning's load report)"], rows)


def config_rows(cells: Sequence[tuple[Path, dict[str, Any]]]) -> tuple[list[list[str]], str | None]:
    """Key fine-tuning settings of the first finished cell, and its whole ``config.yaml`` text."""
    for cell_dir, _ in cells:
        path = cell_dir / CONFIG_FILE
        if path.is_file():
            text = path.read_text()
            cfg = yaml.safe_load(text) or {}
            rows = [[f"`{k}`", f"`{dotted(cfg, k)}`"] for k in KEY_SETTINGS if dotted(cfg, k) is not None]
            return rows, text
    return [], None


def setup_section(run_dir: Path, cells: Sequence[tuple[Path, dict[str, Any]]], meta: dict[str, Any],
                  details: dict[str, dict[str, Any]]) -> list[str]:
    """The report's "Setup" section: data, initialisations, grid, configuration (Markdown lines)."""
    setup = f"preset `{meta['preset']}`" if meta.get("preset") else f"config `{meta.get('config')}`"
    planned = meta.get("cells") or []
    grid = [["fine-tuning settings", setup], ["label fractions", ", ".join(percent(f) for f in meta["fractions"])],
            ["seeds", ", ".join(map(str, meta["seeds"]))],
            ["folds", f"{meta['folds']}-fold cross-validation" if meta.get("folds") else "one held-out split"],
            ["cells finished", f"{len(cells)} of {len(planned) or '?'}"],
            ["overrides", ", ".join(f"`{o}`" for o in meta.get("overrides") or []) or "none"],
            ["max steps per cell", str(meta.get("max_steps") or "from the config")]]
    key_rows, text = config_rows(cells)
    lines = ["## Setup", "", "### Data", "", md_table(["what", "value"], data_rows(run_dir, cells, meta)), "",
             "### Initialisations", "", inits_table(cells, meta, details), "", "### Plan", "", md_table(["what", "value"], grid)]
    if key_rows:
        lines += ["", "### Fine-tuning configuration", "",
                  "Shared by every cell except " + ", ".join(f"`{k}`" for k in PER_CELL_KEYS) + " (set per cell).", "",
                  md_table(["key", "value"], key_rows), "", "Full `config.yaml` of the first cell:", "",
                  "```yaml", text.rstrip(), "```"]
    return lines
