"""The names of the files and folders in a run directory: the one place they are spelled.

Every module that writes or reads a run directory takes its names from here, whatever its floor (the engine
writes checkpoints and metrics, the tasks write the rest, the report reads evaluations and figures), so this
module sits on the bottom floor and imports nothing. It mirrors ``docs/reference/run-dir.md``
(``tests/test_run_layout.py`` checks that every name here is in that page). Setting a run directory up
(lock, ``config.yaml``, the bad-case log) is :mod:`medmae.tasks.run_dir`; what is inside each file belongs
to the module that writes it (``docs/architecture.md``, "One owner per file").
"""

from __future__ import annotations

import re
from pathlib import Path

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.yaml"
TASK_FILE = "task.json"
SPLITS_FILE = "splits.json"
PRETRAIN_CASES = "pretrain_cases.json"
SUMMARY_FILE = "summary.json"
BAD_CASES_FILE = "bad_cases.jsonl"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CHECKPOINTS_DIR = "checkpoints"
FIGURES_DIR = "figures"
EXPORT_DIR = "export"
ENCODER_PART = "encoder"
EVAL_DIR = "eval"
PER_CASE_FILE = "per_case.csv"
TENSORBOARD_DIR = "tensorboard"
TRACKING_FILE = "tracking.json"
PLAN_FILE = "plan.yaml"


def export_path(run_dir: str | Path, part: str = ENCODER_PART) -> Path:
    """``R/export/<part>.safetensors``: the encoder (``export/encoder.safetensors``) or another pretrained
    part of its family (``export/decoder.safetensors``)."""
    return Path(run_dir) / EXPORT_DIR / f"{part}.safetensors"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """``R/checkpoints``."""
    return Path(run_dir) / CHECKPOINTS_DIR


def slug(text: str) -> str:
    """A folder-name-safe version of ``text`` (letters, digits, ``.-_`` kept)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def eval_split_dir(run_dir: str | Path, split: str) -> Path:
    """``R/eval/<split>``: the evaluation of a run's own split (runs evaluated by older versions have a single
    ``R/eval/summary.json`` instead)."""
    return Path(run_dir) / EVAL_DIR / slug(split)
