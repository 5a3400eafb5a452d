"""The preprocessing contract: orientation, spacing, size, channels and intensity, applied once per case.

A :class:`Preprocessing` is derived from the config, saved with every run and exported encoder, and
checked again when an encoder is fine-tuned, so pretraining and fine-tuning see images the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import zoom

from medmae.config import DataConfig, IntensityConfig, ModelConfig
from medmae.data.cases import Case
from medmae.data.image import ImageMeta
from medmae.data.intensity import apply_intensity, describe
from medmae.data.readers import read_image, read_label
from medmae.data.validity import require_valid
from medmae.errors import CaseError, ConfigError


@dataclass(frozen=True)
class Preprocessing:
    spatial_dims: int
    in_channels: int
    intensity: dict[str, Any]
    spacing: tuple[float, ...] | None = None
    orientation: str | None = "RAS"
    resize: tuple[int, ...] | None = None
    slice_axis: int | None = None
    label_map: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        dims = 3 if self.spatial_dims == 3 or self.slice_axis is not None else 2
        if self.spacing is not None and len(self.spacing) != dims:
            raise ConfigError(f"data.spacing {list(self.spacing)} needs {dims} values for these images")

    @classmethod
    def from_config(cls, data_cfg: DataConfig, model_cfg: ModelConfig,
                    intensity: IntensityConfig | None = None) -> Preprocessing:
        """The contract of a data + model config; ``intensity`` overrides ``data.intensity`` (pool sources)."""
        volumes = model_cfg.spatial_dims == 3 or data_cfg.slice_axis is not None
        return cls(
            spatial_dims=model_cfg.spatial_dims,
            in_channels=model_cfg.in_channels,
            intensity=describe((intensity or data_cfg.intensity).model_dump()),
            spacing=tuple(data_cfg.spacing) if data_cfg.spacing else None,
            orientation=data_cfg.orientation if volumes else None,
            resize=tuple(data_cfg.resize) if data_cfg.resize else None,
            slice_axis=data_cfg.slice_axis if model_cfg.spatial_dims == 2 else None,
            label_map=tuple(sorted(data_cfg.label_map.items())) if data_cfg.label_map else None,
        )

    def recipe(self) -> str:
        """Canonical string of the settings (part of the cache key)."""
        return json.dumps(asdict(self), sort_keys=True)

    def contract(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing else None
        d["resize"] = list(self.resize) if self.resize else None
        return d


ANISOTROPY_THRESHOLD = 3.0


def resample_anisotropic(x_cs: np.ndarray, shape: Sequence[int], axis: int) -> np.ndarray:
    """nnU-Net's rule for thick slices: cubic within each slice, nearest neighbour across slices (``axis``)."""
    out_slices = []
    n_in, n_out = x_cs.shape[1 + axis], int(shape[axis])
    in_plane = [int(s) for i, s in enumerate(shape) if i != axis]
    for c in x_cs:
        moved = np.moveaxis(c.astype(np.float32), axis, 0)
        factors = [o / i for o, i in zip(in_plane, moved.shape[1:])]
        planes = np.stack([zoom(p, factors, order=3, mode="nearest", grid_mode=True) for p in moved])
        pick = np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)
        out_slices.append(np.moveaxis(planes[pick], 0, axis))
    return np.stack(out_slices).astype(np.float32)


def resample_to_spacing(x_cs: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float], *,
                        label: bool = False) -> np.ndarray:
    """Resample (C, *S) from ``spacing`` to ``new_spacing``: linear for images (separate-slice cubic when the
    source is anisotropic beyond 3:1), nearest for labels."""
    shape = target_shape(x_cs.shape[1:], spacing, new_spacing)
    if tuple(shape) == tuple(x_cs.shape[1:]):
        return x_cs
    if not label and len(spacing) == 3 and max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD:
        return resample_anisotropic(x_cs, shape, int(np.argmax(spacing)))
    return resize_array(x_cs, shape, label=label)


def resize_array(x_cs: np.ndarray, shape: Sequence[int], *, label: bool = False) -> np.ndarray:
    """Resample (C, *S) to spatial ``shape``: (bi/tri)linear for images (antialiased in 2D), nearest for labels."""
    shape = tuple(int(s) for s in shape)
    if tuple(x_cs.shape[1:]) == shape:
        return x_cs
    t = torch.from_numpy(np.array(x_cs, dtype=np.float32))[None]
    if label:
        out = F.interpolate(t, size=shape, mode="nearest-exact")
        return out[0].numpy().astype(x_cs.dtype)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    out = F.interpolate(t, size=shape, mode=mode, align_corners=False, antialias=len(shape) == 2)
    return out[0].numpy()


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, int(round(s * a / b))) for s, a, b in zip(shape, spacing, new_spacing))


def _geometry(x_cs: np.ndarray, meta: ImageMeta, prep: Preprocessing, *, label: bool) -> np.ndarray:
    """Spacing and size changes; each applies to images whose dimensionality it matches (a pool may mix
    2D images with 3D volumes that a 2D model reads as slices)."""
    ndim = x_cs.ndim - 1
    if prep.spacing is not None and len(prep.spacing) == ndim:
        x_cs = resample_to_spacing(x_cs, meta.spacing, prep.spacing, label=label)
    if prep.resize is not None and len(prep.resize) == ndim:
        x_cs = resize_array(x_cs, prep.resize, label=label)
    return x_cs


class LoadedImage(NamedTuple):
    array: np.ndarray  # (C, *S) float32 after preprocessing
    meta: ImageMeta  # the reader's metadata (geometry of the file)
    spacing: tuple[float, ...]  # voxel spacing after preprocessing (mm)
    read_shape: tuple[int, ...]  # spatial shape as read (after reorientation, before resampling)


def load_image(case: Case, prep: Preprocessing) -> LoadedImage:
    """Read and preprocess a case's image following ``prep``; errors name the case."""
    paths = case.image if len(case.image) > 1 else case.image[0]
    try:
        x, meta = read_image(
            paths,
            reorient=prep.orientation is not None,
            expect_channels=prep.in_channels,
            grey=True if prep.in_channels == 1 and prep.spatial_dims == 2 else None,
        )
        if meta.spatial_dims != prep.spatial_dims and not (meta.spatial_dims == 3 and prep.slice_axis is not None):
            hint = " (set data.slice_axis to train a 2D model on slices)" if meta.spatial_dims == 3 else ""
            raise ValueError(f"{meta.spatial_dims}D image, but the model is {prep.spatial_dims}D{hint}")
        require_valid(x, meta.channel_names)  # data check's rule: no NaN/Inf, no constant image (slices may be)
        shape_in = x.shape[1:]
        x = apply_intensity(_geometry(x, meta, prep, label=False), prep.intensity)
        spacing = tuple(float(sp) * a / b for sp, a, b in zip(meta.spacing, shape_in, x.shape[1:]))
        if not np.isfinite(x).all():
            raise ValueError(f"{int((~np.isfinite(x)).sum())} non-finite values after preprocessing")
    except Exception as e:  # noqa: BLE001 - any failure becomes an error naming the case
        raise CaseError(f"case {case.case_id} ({case.path}): {e}") from e
    return LoadedImage(x.astype(np.float32, copy=False), meta, spacing, tuple(shape_in))


def remap_labels(y: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Replace label values (e.g. {255: 1} for masks saved as 0/255 images); other values are kept."""
    out = y.copy()
    for src, dst in mapping.items():
        out[y == src] = dst
    return out


def load_mask(case: Case, prep: Preprocessing, image_meta: ImageMeta, image_shape: Sequence[int]) -> np.ndarray:
    """Read a case's label map, resampled like its image: (*S) integer; its geometry must match the image's."""
    if case.mask is None:
        raise CaseError(f"case {case.case_id} ({case.path}): no mask")
    try:
        y, meta = read_label(case.mask, reorient=prep.orientation is not None)
        if tuple(meta.original_shape) != tuple(image_meta.original_shape):
            raise ValueError(f"mask shape {tuple(meta.original_shape)} differs from image shape {tuple(image_meta.original_shape)}")
        if prep.label_map:
            y = remap_labels(y, dict(prep.label_map))
        if not np.allclose(meta.spacing, image_meta.spacing, rtol=1e-3, atol=1e-4):
            raise ValueError(f"mask spacing {tuple(meta.spacing)} differs from image spacing {tuple(image_meta.spacing)}")
        y = _geometry(y[None], meta, prep, label=True)[0]
        if tuple(y.shape) != tuple(image_shape):
            raise ValueError(f"mask shape {tuple(y.shape)} differs from image shape {tuple(image_shape)}")
    except CaseError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CaseError(f"case {case.case_id} ({case.mask}): {e}") from e
    return y
