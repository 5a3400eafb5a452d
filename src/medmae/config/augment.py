"""The ``data.augment`` section: spatial and intensity augmentation beyond crops and flips (MONAI transforms).

A ``preset`` gives every value; a key set explicitly overrides the preset's value. The transforms themselves are
built in :mod:`medmae.data.augment` (floor 3); this module only holds the numbers (no torch, no MONAI).
Mirroring stays ``data.flip_axes`` / ``data.flip_prob``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medmae.config.base import Strict, refuse

Prob = Annotated[float, Field(ge=0.0, le=1.0)]

# nnU-Net v2's default training transforms (probabilities per sample), as MONAI transforms in medmae.data.augment:
# rotation and isotropic-ish scaling p 0.2 each (one affine here, p 0.3), Gaussian noise 0.1, Gaussian blur 0.2,
# multiplicative brightness 0.15, contrast 0.15, simulated low resolution 0.25, gamma 0.3 (and inverted gamma 0.1).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"spatial_prob": 0.0, "rotate_deg": 0.0, "rotate_deg_2d": 0.0, "scale": (1.0, 1.0), "elastic_prob": 0.0,
             "brightness_prob": 0.0, "contrast_prob": 0.0, "gamma_prob": 0.0, "noise_prob": 0.0, "blur_prob": 0.0,
             "low_res_prob": 0.0},
    "light": {"spatial_prob": 0.2, "rotate_deg": 15.0, "rotate_deg_2d": 15.0, "scale": (0.85, 1.15), "elastic_prob": 0.0,
              "brightness_prob": 0.15, "contrast_prob": 0.15, "gamma_prob": 0.1, "noise_prob": 0.0, "blur_prob": 0.0,
              "low_res_prob": 0.0},
    "nnunet": {"spatial_prob": 0.3, "rotate_deg": 30.0, "rotate_deg_2d": 180.0, "scale": (0.7, 1.4), "elastic_prob": 0.0,
               "brightness_prob": 0.15, "contrast_prob": 0.15, "gamma_prob": 0.3, "noise_prob": 0.1, "blur_prob": 0.2,
               "low_res_prob": 0.25},
}


class AugmentConfig(Strict):
    """Augmentation of training crops (MONAI transforms seeded per (seed, epoch, case)): ``preset`` ``none`` (crops and
    flips only), ``light`` (small rotations / scaling, brightness, contrast, gamma) or ``nnunet`` (nnU-Net's default
    set); each key below, when set, overrides the preset's value."""

    preset: Literal["none", "light", "nnunet"] = "none"
    spatial_prob: Prob | None = Field(None, description="probability of one random rotation + scaling (affine)")
    rotate_deg: float | None = Field(None, ge=0.0, le=180.0, description="3D: rotation range +-deg about each axis")
    rotate_deg_2d: float | None = Field(None, ge=0.0, le=180.0, description="2D: rotation range +-deg")
    scale: tuple[float, float] | None = Field(None, description="zoom factor range of the affine (per axis)")
    elastic_prob: Prob | None = Field(None, description="2D only: elastic deformation (slow; nnU-Net: off)")
    brightness_prob: Prob | None = Field(None, description="multiplicative brightness x U(0.75, 1.25)")
    contrast_prob: Prob | None = Field(None, description="contrast about the mean x U(0.75, 1.25), range kept")
    gamma_prob: Prob | None = Field(None, description="gamma U(0.7, 1.5), statistics kept (a third inverted)")
    noise_prob: Prob | None = Field(None, description="additive Gaussian noise, std U(0, 0.1)")
    blur_prob: Prob | None = Field(None, description="Gaussian blur, sigma U(0.5, 1.0)")
    low_res_prob: Prob | None = Field(None, description="simulated low resolution: down x U(0.5, 1), nearest, back up")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            refuse([f"scale: {list(self.scale)} must be zoom factors with 0 < low <= high"])
        return self

    def resolved(self) -> dict[str, Any]:
        """Every value: the preset's, with the keys set here on top."""
        out = dict(AUGMENT_PRESETS[self.preset])
        out.update({k: v for k, v in self.model_dump().items() if k != "preset" and v is not None})
        return out

    @property
    def active(self) -> bool:
        """True when any transform can fire."""
        return any(v > 0 for k, v in self.resolved().items() if k.endswith("_prob"))
