"""Shared pieces of the synthetic phantoms: seeded random streams, smooth fields, grids and shapes, argument checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Independent random streams per seed, so e.g. forcing a finding leaves the anatomy untouched.
S_ANATOMY, S_TEXTURE, S_NOISE, S_PREVALENCE, S_TUMOUR = 1, 2, 3, 4, 5
S_FINDING0 = 10
S_CHANNEL0 = 20
F32 = np.float32


@dataclass(frozen=True)
class VolumeCase:
    """One synthetic 3D volume.

    image_cxyz: float32 (C, X, Y, Z) (HU for CT, arbitrary positive units for MR);
    label_xyz: uint8 (X, Y, Z) with names in label_names; spacing: mm per voxel along x, y, z;
    affine: float64 (4, 4) voxel -> RAS mm; channel_names: one contrast name per channel.
    """

    image_cxyz: np.ndarray
    label_xyz: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    label_names: dict[int, str]
    seed: int
    channel_names: tuple[str, ...] = ("CT",)


def check_seed(seed: int, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}: seed must be a non-negative int, got {seed!r}")


def rng_stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(F32, copy=False)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], corr_vox: float) -> np.ndarray:
    """Unit-variance smooth random field with correlation length ~corr_vox voxels.

    White noise is blurred on a grid corr_vox/2 times coarser and linearly upsampled, which is far
    cheaper than blurring at full resolution and looks the same at this smoothness.
    """
    step = max(1.0, corr_vox / 2.0)
    coarse_shape = tuple(int(np.ceil(s / step)) + 2 for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=F32), sigma=1.0, mode="wrap")
    fine = ndimage.zoom(coarse, [step] * len(shape), order=1, grid_mode=False)
    fine = fine[tuple(slice(0, s) for s in shape)]
    fine -= fine.mean()
    return (fine / max(float(fine.std()), 1e-6)).astype(F32, copy=False)


def grid3(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open voxel-centre grids normalised to [-1, 1] along each axis, shaped to broadcast as (X, Y, Z)."""
    axes = [((np.arange(n, dtype=F32) + 0.5) / n * 2.0 - 1.0) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def ellipsoid(
    u: np.ndarray, v: np.ndarray, w: np.ndarray,
    centre: Sequence[float], radii: Sequence[float], angle: float = 0.0,
) -> np.ndarray:
    """Squared normalised radius of an ellipsoid rotated by `angle` (rad) about the z axis (<1 inside)."""
    du, dv, dw = u - F32(centre[0]), v - F32(centre[1]), w - F32(centre[2])
    c, s = F32(np.cos(angle)), F32(np.sin(angle))
    a, b = du * c + dv * s, -du * s + dv * c
    r0, r1, r2 = (np.asarray(r, dtype=F32) for r in radii)
    return (a / r0) ** 2 + (b / r1) ** 2 + (dw / r2) ** 2


def ras_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """diag(spacing) affine with the volume centre at world (0, 0, 0)."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing)
    return affine


def check_volume_args(
    what: str, seed: int, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    check_seed(seed, what)
    if len(shape) != 3 or any(int(s) != s or s < 16 for s in shape):
        raise ValueError(f"{what}: shape must be 3 ints >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"{what}: spacing must be 3 positive finite mm values, got {tuple(spacing)}")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    return shape3, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
