"""The keys and defaults of ``data.include`` / ``data.exclude`` (regexes on DICOM attributes of each case).

Plain values and checks, read when a config is validated; applying the filters to cases is
:mod:`medmae.data.series_filter`. ``exclude`` is merged over :data:`DEFAULT_EXCLUDE`: DICOM objects that are
not images (SEG, RTSTRUCT, RTDOSE, ...) and label masks stored as ordinary image series (a SeriesDescription
naming a mask, label, segmentation or ROI) are left out unless a key is set to null
(``--set data.exclude.SeriesDescription=null``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FILTER_KEYWORDS: tuple[str, ...] = (
    "Modality", "SeriesDescription", "ProtocolName", "SeriesNumber", "ImageType", "BodyPartExamined",
    "StudyDescription", "SequenceName", "ScanningSequence", "ContrastBolusAgent", "ImageComments",
    "Manufacturer", "ManufacturerModelName", "ViewPosition", "Laterality", "SOPClassUID", "PatientID",
)
NON_IMAGE_MODALITIES = r"^(SEG|RTSTRUCT|RTDOSE|RTPLAN|RTRECORD|PR|SR|KO|REG|FID|RWV|AU|ECG|HD|DOC|PLAN)$"
MASK_DESCRIPTION = r"(?i)(?<![a-z])(masks?|labels?|seg|segmentations?|rois?)(?![a-z])"
DEFAULT_EXCLUDE: dict[str, str] = {"Modality": NON_IMAGE_MODALITIES, "SeriesDescription": MASK_DESCRIPTION}


def check_filter(mapping: Mapping[str, Any] | None) -> None:
    """ValueError naming the keyword, for an unknown keyword or a regex that does not compile."""
    for keyword, pattern in (mapping or {}).items():
        if keyword not in FILTER_KEYWORDS:
            raise ValueError(f"{keyword!r} is not a filterable DICOM attribute; use one of {', '.join(FILTER_KEYWORDS)}")
        if pattern is not None:
            try:
                re.compile(str(pattern))
            except re.error as e:
                raise ValueError(f"{keyword}: bad regex {pattern!r}: {e}") from None


def with_default_exclude(exclude: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``exclude`` merged over :data:`DEFAULT_EXCLUDE` (a null value switches a default off, and stays recorded)."""
    return {**DEFAULT_EXCLUDE, **(exclude or {})}
