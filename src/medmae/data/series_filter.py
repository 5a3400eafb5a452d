"""Series filters: ``data.include`` / ``data.exclude``, regexes on DICOM attributes of each case.

A DICOM tree records, per series, the attributes of :data:`FILTER_KEYWORDS` (from its first file) in
``Case.attributes``; any other case has at most ``Modality`` (its modality tag). ``include`` keeps a case
when every named attribute matches its regex (``re.search``; a missing attribute does not match);
``exclude`` drops a case when any named attribute matches. ``exclude`` is merged over
:data:`DEFAULT_EXCLUDE`: DICOM objects that are not images (SEG, RTSTRUCT, RTDOSE, ...) and label masks
stored as ordinary image series (a SeriesDescription naming a mask, label, segmentation or ROI) are left
out unless a key is set to null (``--set data.exclude.SeriesDescription=null``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medmae.config import DataConfig
from medmae.config.filters import DEFAULT_EXCLUDE, FILTER_KEYWORDS, with_default_exclude
from medmae.data.cases import LazyCases, distinct
from medmae.errors import ConfigError

log = logging.getLogger(__name__)

SHOWN = 10  # excluded cases named in a warning


@dataclass(frozen=True)
class SeriesFilter:
    """The ``data.include`` / ``data.exclude`` of a config (``exclude`` already merged with the defaults)."""

    include: Mapping[str, str] = field(default_factory=dict)
    exclude: Mapping[str, str | None] = field(default_factory=lambda: dict(DEFAULT_EXCLUDE))

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> SeriesFilter:
        return cls(dict(data_cfg.include or {}), with_default_exclude(data_cfg.exclude))

    def reason_to_drop(self, attributes: Mapping[str, str]) -> str | None:
        """Why a case with these attributes is left out (the key and value that decided), or None to keep it."""
        for keyword, pattern in self.include.items():
            value = attributes.get(keyword)
            if value is None or not re.search(pattern, value):
                return f"data.include.{keyword} does not match {value!r}"
        for keyword, pattern in self.exclude.items():
            value = attributes.get(keyword)
            if pattern is not None and value is not None and re.search(pattern, value):
                return f"data.exclude.{keyword} matches {value!r}"
        return None


def series_attributes(ds: Any) -> tuple[tuple[str, str], ...]:
    """The filterable attributes a DICOM header holds, as text (multiple values joined by ``\\``)."""
    out = []
    for keyword in FILTER_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        text = "\\".join(str(v) for v in value) if isinstance(value, Sequence) and not isinstance(value, str) else str(value)
        out.append((keyword, text))
    return tuple(out)


def attributes_with_modality(attributes: Sequence[tuple[str, str]], modality: str | None) -> dict[str, str]:
    """A case's DICOM attributes, with its modality tag as ``Modality`` when the header gave none."""
    out = dict(attributes)
    if "Modality" not in out and modality:
        out["Modality"] = str(modality)
    return out


def split_cases(cases: Sequence[Any], series_filter: SeriesFilter) -> tuple[Sequence[Any], list[tuple[Any, str]]]:
    """(kept cases, [(dropped case, reason)]); each distinct (attributes, modality) is judged once, and a lazy
    case list stays lazy."""
    values, codes = distinct(cases, "attributes", "modality")
    reasons = [series_filter.reason_to_drop(attributes_with_modality(a, m)) for a, m in values]
    drop = np.isin(codes, [k for k, r in enumerate(reasons) if r is not None])
    keep = np.flatnonzero(~drop)
    kept = cases.take(keep) if isinstance(cases, LazyCases) else [cases[i] for i in keep]
    return kept, [(cases[i], reasons[codes[i]]) for i in np.flatnonzero(drop)]


def describe_dropped(source: str, dropped: Sequence[tuple[Any, str]], total: int) -> str:
    """One line: how many cases of ``source`` the filters left out, why, and which (the first ones)."""
    reasons = Counter(reason.split(" ")[0] for _, reason in dropped)
    why = ", ".join(f"{n} by {key}" for key, n in reasons.most_common())
    shown = "; ".join(f"{case.case_id} ({reason})" for case, reason in dropped[:SHOWN])
    more = f"; ... and {len(dropped) - SHOWN} more" if len(dropped) > SHOWN else ""
    return (f"{source}: {len(dropped)} of {total} series left out ({why}): {shown}{more}; to keep them, set the key "
            "to null (e.g. --set data.exclude.SeriesDescription=null) or change data.include")


def select_series(spec: Any, series_filter: SeriesFilter, source: str) -> Any:
    """``spec`` with the cases the filters keep; a warning names the others; ConfigError when none is left."""
    kept, dropped = split_cases(spec.cases, series_filter)
    if dropped and not kept:
        case, reason = dropped[0]
        raise ConfigError(f"data.include / data.exclude leave none of the {len(dropped)} cases of {source} "
                          f"(e.g. {case.case_id}: {reason})")
    if dropped:
        log.warning("%s", describe_dropped(source, dropped, len(spec.cases)))
    return replace(spec, cases=kept)
