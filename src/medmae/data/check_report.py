"""What :func:`medmae.data.check.check_source` returns: :class:`Finding` and :class:`CheckReport`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Finding:
    """One problem: ``code`` (machine-readable), ``message``, and where it is (source, case, file)."""

    code: str
    message: str
    source: str | None = None
    case_id: str | None = None
    file: str | None = None


@dataclass
class CheckReport:
    """Result of :func:`check_source`; ``errors`` non-empty means the data is not usable as it is."""

    sources: list[str]
    summary: dict[str, Any]
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "ok": self.ok,
            "summary": self.summary,
            "errors": [asdict(f) for f in self.errors],
            "warnings": [asdict(f) for f in self.warnings],
            "cases": self.cases,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=jsonable)


def jsonable(obj: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays, tuples, sets and paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
