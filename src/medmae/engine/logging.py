"""Run logs: ``metrics.jsonl`` (every key, strict JSON) and ``metrics.csv`` (fixed columns), resumable."""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from medmae.engine.tracking import Tracker
from medmae.errors import environment_problem
from medmae.run_layout import METRICS_CSV, METRICS_JSONL

CSV_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "skipped", "items_per_s", "time_s")


def json_line(row: dict[str, Any]) -> str:
    """One strict-JSON line: NaN and Inf become ``null`` (bare ``NaN`` / ``Infinity`` are not JSON)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """Append-only metrics files; on resume, rows after the restored step are dropped first. Every row written
    also goes to ``tracker`` (TensorBoard / MLflow, :mod:`medmae.engine.tracking`) when one is set."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tracker: Tracker | None = None):
        self.jsonl = run_dir / METRICS_JSONL
        self.csv = run_dir / METRICS_CSV
        self.enabled = enabled
        self.tracker = tracker

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is dropped
        return out

    def truncate_after(self, step: int) -> None:
        """Keep rows with ``step <= step`` (a resumed run re-logs the rest) and rewrite both files."""
        if not self.enabled:
            return
        keep = [r for r in self.rows() if r.get("step", 0) <= step]
        self.jsonl.write_text("".join(json_line(r) for r in keep))
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in keep if r.get("kind", "train") == "train")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self.jsonl.open("a") as f:
                f.write(json_line(row))
            if row.get("kind", "train") == "train":
                new = not self.csv.is_file()
                with self.csv.open("a", newline="") as f:
                    w = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
                    if new:
                        w.writeheader()
                    w.writerow(row)
        except OSError as e:  # a full disk: name the file (write() does not)
            raise (environment_problem(e, str(self.jsonl.parent / "metrics.*")) or e) from None
        if self.tracker is not None:
            self.tracker.row(row)


def is_interactive() -> bool:
    return sys.stderr.isatty()


def setup_cli_logging(verbose: bool = False, rank: int = 0) -> None:
    """Console logging for the CLI: rich on a terminal, plain lines otherwise; other ranks only warn."""
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if is_interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("matplotlib", "PIL", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
