"""``medmae export``: a run or an ``encoder.safetensors`` in another library's format (:mod:`medmae.interop`)."""

from __future__ import annotations

from pathlib import Path

from medmae.errors import ConfigError
from medmae.interop import FORMATS, ExportReport, export_source
from medmae.tasks.model_api import export_source_of


def export(source: str | Path, *, to: str, out: str | Path, device: str = "cpu") -> ExportReport:
    """Export a pretraining run, an ``encoder.safetensors`` or a fine-tuning run to ``to`` (one of
    :data:`medmae.interop.FORMATS`) into the folder ``out``, with ``report.json`` (strict-load report and
    output-equivalence check) beside the files; returns the report."""
    if to not in FORMATS:
        raise ConfigError(f"--to {to!r}: unknown export format; known: {', '.join(FORMATS)}")
    return export_source(export_source_of(source, device), to, out)
