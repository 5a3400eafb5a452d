"""The ``data`` section: where images come from and how they are prepared (intensity, spacing, crops, filters)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from medmae.config.augment import AugmentConfig
from medmae.config.base import Strict, refuse
from medmae.config.checks import intensity_problems
from medmae.config.filters import DEFAULT_EXCLUDE, check_filter, with_default_exclude


class IntensityConfig(Strict):
    """Intensity preset applied once per image before caching (see :mod:`medmae.data.intensity`)."""

    name: Literal["ct_window", "mri_zscore_nonzero", "xray_histeq", "minmax", "none"] = "minmax"
    lo: float = -175.0
    hi: float = 250.0
    percentiles: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ranges(self) -> IntensityConfig:
        refuse(intensity_problems(self.lo, self.hi, self.percentiles) if self.name != "none" else [])
        return self


class SyntheticConfig(Strict):
    kind: Literal["cxr", "abdomen_ct", "brain_mr"] = "cxr"
    n: int = Field(64, ge=2)
    size: list[int] | None = None
    seed: int = Field(0, ge=0)


class SourceEntry(Strict):
    """One source of a pretraining pool (MedMAE's MID, VIS-MAE's multi-modality pool)."""

    path: str
    weight: float = Field(1.0, gt=0.0)
    modality: str | None = None
    intensity: IntensityConfig | None = None
    splits: list[str] | None = None


class DataConfig(Strict):
    """Where the images come from and how they are prepared.

    ``path`` names one dataset; ``sources`` a pool of several (each with its own modality tag, intensity
    preset and sampling weight); neither means built-in synthetic data.
    """

    path: str | None = None
    sources: list[SourceEntry] | None = None
    sampling: Literal["uniform", "source", "modality"] = "uniform"
    modality_weights: dict[str, float] | None = None
    splits: list[str] | None = None
    slice_axis: Literal[0, 1, 2] | None = Field(None, description="2D models: train on slices of 3D volumes along this axis")
    on_bad_case: Literal["raise", "skip"] = "raise"
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    synthetic: SyntheticConfig = SyntheticConfig()
    intensity: IntensityConfig = IntensityConfig()
    spacing: list[Annotated[float, Field(gt=0.0)]] | None = None
    orientation: Literal["RAS"] | None = "RAS"
    resize: list[Annotated[int, Field(ge=1)]] | None = None
    crop_scale: tuple[float, float] | None = None
    flip_axes: list[int] = []
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    augment: AugmentConfig = AugmentConfig()
    cache_dir: str | None = None
    num_workers: int = Field(0, ge=0)
    figure_cases: int = Field(4, ge=1)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fine-tuning: share of the labelled training cases used")
    label_seed: int | None = Field(None, ge=0, description="seed of the label subset (default: eval.split_seed)")
    label_map: dict[int, int] | None = Field(None, description="mask values to replace, e.g. {255: 1} for 0/255 masks")
    foreground_prob: float = Field(0.0, ge=0.0, le=1.0, description="segmentation: share of crops centred on foreground")
    labels: dict[int, str] | None = Field(
        None, description="segmentation label names by mask value, e.g. {1: lesion}; replaces the labels a dataset.json "
                          "declares (0 is background when not named)")
    include: dict[str, str] = Field(
        default_factory=dict, description="keep only cases whose DICOM attributes match every regex, e.g. {Modality: MR, "
                                          "SeriesDescription: '(?i)t1'} (medmae.config.filters.FILTER_KEYWORDS)")
    exclude: dict[str, str | None] = Field(
        default_factory=lambda: dict(DEFAULT_EXCLUDE),
        description="drop cases whose DICOM attribute matches any regex; merged over the defaults (non-image Modality "
                    "SEG/RTSTRUCT/RTDOSE/..., SeriesDescription naming a mask/label/seg/ROI); null switches one off")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _regex_text(cls, value: Any) -> Any:
        """Regexes as text (``SeriesNumber: 3`` is '3'); an unknown keyword or a bad regex names the keyword."""
        if isinstance(value, dict):
            value = {k: v if v is None else str(v) for k, v in value.items()}
            check_filter(value)
        return value

    @field_validator("exclude")
    @classmethod
    def _over_defaults(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        return with_default_exclude(value)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is not None and self.sources:
            raise ValueError("give data.path or data.sources, not both")
        return self
