"""What ``medmae data check`` takes from a config (``--preset`` / ``--set``), and the findings it adds with them.

- the series filters ``data.include`` / ``data.exclude`` (always on: the default excludes non-image DICOM
  objects and mask series), with a warning naming what they left out;
- ``data.labels``: the label names masks are checked against, instead of the dataset's own;
- ``data.label_map``: mask values replaced before they are checked (``{255: 1}``);
- the intensity preset, checked against the cases' modality (:mod:`medmae.data.modality_fit`).

Findings are returned as ``(code, message)`` pairs; :mod:`medmae.data.check_case` and :mod:`medmae.data.check_dataset` make them findings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from medmae.config import DataConfig
from medmae.data.cases import DatasetSpec, tag_cases
from medmae.data.modality_fit import intensity_misfit
from medmae.data.series_filter import SeriesFilter, describe_dropped, split_cases

SAVED_IMAGE_VALUES = {0, 255}  # a binary mask saved as an 8-bit picture


@dataclass(frozen=True)
class CheckOptions:
    series_filter: SeriesFilter = field(default_factory=SeriesFilter)
    labels: Mapping[int, str] | None = None
    label_map: Mapping[int, int] | None = None
    intensity: str | None = None

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> CheckOptions:
        return cls(SeriesFilter.from_config(data_cfg), data_cfg.labels, data_cfg.label_map, data_cfg.intensity.name)

    def source(self, name: str, spec: DatasetSpec) -> tuple[DatasetSpec, list[tuple[str, str]]]:
        """The source as training would see it (filtered cases, ``data.labels``) and its warnings."""
        kept, dropped = split_cases(spec.cases, self.series_filter)
        notes = [("excluded_series", describe_dropped(name, dropped, len(spec.cases)))] if dropped else []
        labels = {0: "background", **self.labels} if self.labels else spec.label_names  # as fine-tuning reads them
        spec = replace(spec, cases=kept, label_names=labels)
        if self.intensity:
            tagged = tag_cases(kept, default_modality=spec.modality)
            misfit = intensity_misfit(tagged, self.intensity, name, "data.intensity.name")
            notes += [("intensity_modality", misfit)] if misfit else []
        return spec, notes

    def mask_values(self, counts: Mapping[int, int]) -> dict[int, int]:
        """Voxel count per label value after ``data.label_map``."""
        out: Counter[int] = Counter()
        for value, n in counts.items():
            out[int((self.label_map or {}).get(value, value))] += n
        return dict(out)


def saved_image_masks(name: str, declared: Mapping[int, str], stats: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """A warning when masks hold only {0, 255} (and 255 is not a declared label): suggest ``data.label_map``."""
    if 255 in declared:
        return []
    masks = [s for s in stats if s.get("label_values")]
    saved = [s for s in masks if "255" in s["label_values"] and {int(v) for v in s["label_values"]} <= SAVED_IMAGE_VALUES]
    if not saved:
        return []
    return [("mask_0_255", f"{name}: {len(saved)} of {len(masks)} masks hold only the values 0 and 255 (binary masks "
                           f"saved as 8-bit pictures, e.g. {saved[0]['mask']}): map them to label 1 with "
                           "--set 'data.label_map={255: 1}'")]
