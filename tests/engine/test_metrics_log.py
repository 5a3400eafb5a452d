"""``metrics.jsonl`` is strict JSON (non-finite numbers are ``null``), and files with bare NaN still read."""

from __future__ import annotations

import json
import math

from medmae.engine.logging import MetricsLog


def strict(line: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_written_as_null(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": -float("inf"), "skipped": 1})
    log.write({"step": 2, "loss": 0.5, "grad_norm": 1.0, "lr": 0.1, "skipped": 1})
    rows = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 1, "loss": None, "grad_norm": None, "lr": None, "skipped": 1}
    assert rows[1]["loss"] == 0.5
    log.truncate_after(1)
    assert [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == rows[:1]


def test_old_files_with_bare_nan_are_read_and_rewritten_strictly(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": NaN}\n{"step": 2, "loss": Infinity}\n{"step": 3, "loss": 1.0}\n')
    log = MetricsLog(tmp_path)
    rows = log.rows()
    assert [r["step"] for r in rows] == [1, 2, 3] and math.isnan(rows[0]["loss"]) and rows[1]["loss"] == math.inf
    log.truncate_after(2)
    assert [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "loss": None}, {"step": 2, "loss": None}]
