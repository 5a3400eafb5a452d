"""Does an intensity preset fit the cases' modality? ``ct_window`` expects CT (Hounsfield units),
``mri_zscore_nonzero`` expects MR (zero background). One warning line per source that does not fit.

A case's modality is its tag (DICOM Modality from the header, a manifest's ``modality`` column, a
``dataset.json`` modality, a pool entry's ``modality``); an untagged PNG / JPEG / BMP / GIF / TIFF is a
``raster`` picture (8- or 16-bit, never HU, rarely MR). Untagged volumes are not judged.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from medmae.data.cases import distinct

CT, MR, RASTER, OTHER = "CT", "MR", "raster", "other"
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_MR_NAMES = re.compile(r"^(MR|MRI|T1|T2|FLAIR|ADC|DWI|PD|SWI|DCE|DIXON|BOLD|FMRI|STIR|TOF|MRA|DTI)", re.IGNORECASE)
FITS = {"ct_window": CT, "mri_zscore_nonzero": MR}  # preset -> the one modality family it is made for
SUGGEST = {CT: "ct_window", MR: "mri_zscore_nonzero", RASTER: "minmax", OTHER: "minmax"}


def modality_family(modality: str | None, path: str) -> str | None:
    """CT, MR, raster (an untagged 2D picture), other (any other tag) or None (untagged, not a picture)."""
    if modality:
        tag = str(modality).strip().upper()
        return CT if tag.startswith("CT") else MR if _MR_NAMES.match(tag) else OTHER
    return RASTER if str(path).lower().endswith(RASTER_SUFFIXES) else None


def intensity_misfit(cases: Sequence[Any], preset: str, source: str, key: str = "data.intensity.name") -> str | None:
    """One warning line when ``preset`` does not fit the modality of some ``cases`` of ``source``, else None.

    The line gives the counts per modality and the fix (``key``: the config key that sets this source's preset).
    """
    wanted = FITS.get(preset)
    if wanted is None:
        return None
    values, codes = distinct(cases, "modality")  # one pass, O(distinct) objects: a pack's millions of cases too
    counts = np.bincount(codes, minlength=len(values))
    misfits: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    for k, modality in enumerate(values):
        if modality:
            family, tag, n = modality_family(modality, ""), str(modality), int(counts[k])
        else:  # untagged: a picture by its suffix (the only cases looked at one by one)
            family, tag = RASTER, RASTER
            n = sum(1 for i in np.flatnonzero(codes == k) if modality_family(None, cases[i].path) == RASTER)
        if n and family != wanted:
            misfits[family] += n
            tags[tag] += n
    if not misfits:
        return None
    listed = ", ".join(f"{t}: {n}" for t, n in tags.most_common())
    fix = SUGGEST[misfits.most_common(1)[0][0]]
    return (f"{source}: intensity preset {preset} is made for {wanted} images, but {sum(misfits.values())} of "
            f"{len(cases)} cases are not {wanted} ({listed}); set {key}={fix} (or tag the cases' modality)")
