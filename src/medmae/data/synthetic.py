"""Seeded synthetic medical-like phantoms (medmae's built-in default data) and writers to real formats.

Three generators, each a pure function of its seed and arguments:

- :func:`chest_xray` — 2D frontal chest radiograph, values in [0, 1], optional findings
  (:data:`CXR_FINDINGS`) with a multi-hot label, an anatomy label map and a findings mask.
  Shown in radiological convention: the patient's right is on the image's left (column 0),
  so the heart bulges towards high column indices.
- :func:`abdomen_ct` — 3D abdominal CT in Hounsfield units with organ labels (:data:`ABDOMEN_LABELS`).
- :func:`brain_mr` — 3D head MR (1 or 4 contrasts, arbitrary positive units, background exactly 0)
  with either a BraTS-like tumour (:data:`BRATS_LABELS`) or tissue labels (:data:`BRAIN_TISSUE_LABELS`).

Volumes are ``(C, X, Y, Z)`` arrays in RAS voxel order: with the returned affine ``diag(+spacing)``,
increasing x goes to the patient's Right, y to Anterior, z to Superior. The anatomy is laid out in
coordinates normalised to the field of view, so any ``shape`` gives a body that fills the volume.

:func:`write_dataset` puts ``n`` cases on disk (PNG or NIfTI) with a ``manifest.csv`` and a
``dataset.json`` so the real readers can be exercised end to end. Its output is byte-identical for
identical arguments.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

CXR_FINDINGS: tuple[str, ...] = ("nodule", "opacity", "effusion")
CXR_ANATOMY_LABELS: dict[int, str] = {0: "background", 1: "lung", 2: "heart"}
CXR_FINDING_PREVALENCE = 0.35
CXR_FIELD_OF_VIEW_MM = 400.0

ABDOMEN_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidney_right",
    4: "kidney_left",
    5: "aorta",
}
# Per-case mean HU of each tissue is drawn uniformly from these ranges (before noise and blur).
ABDOMEN_HU: dict[str, tuple[float, float]] = {
    "subcutaneous_fat": (-110.0, -90.0),
    "visceral_fat": (-100.0, -80.0),
    "muscle": (35.0, 50.0),
    "bowel": (15.0, 35.0),
    "liver": (55.0, 65.0),
    "spleen": (45.0, 52.0),
    "kidney": (25.0, 35.0),
    "aorta": (140.0, 170.0),
    "ivc": (100.0, 120.0),
    "cancellous_bone": (300.0, 450.0),
    "cortical_bone": (800.0, 1000.0),
    "disc": (70.0, 100.0),
}

BRATS_LABELS: dict[int, str] = {0: "background", 1: "edema", 2: "non_enhancing", 3: "enhancing"}
BRAIN_TISSUE_LABELS: dict[int, str] = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter"}
BRAIN_MR_CHANNELS: tuple[str, ...] = ("FLAIR", "T1w", "T1gd", "T2w")  # MSD Task01 channel order

# Relative MR signal per tissue class (columns follow _BRAIN_CLASSES) for each contrast.
_BRAIN_CLASSES = ("air", "scalp", "skull", "csf", "grey", "white", "edema", "non_enhancing", "enhancing")
_BRAIN_SIGNAL: dict[str, tuple[float, ...]] = {
    "T1w": (0.0, 1.00, 0.08, 0.25, 0.60, 0.85, 0.50, 0.35, 0.55),
    "T1gd": (0.0, 1.00, 0.08, 0.25, 0.60, 0.85, 0.50, 0.30, 1.30),
    "T2w": (0.0, 0.70, 0.06, 1.40, 0.80, 0.55, 1.15, 1.30, 0.90),
    "FLAIR": (0.0, 0.80, 0.06, 0.15, 0.80, 0.60, 1.35, 0.75, 1.00),
}

SyntheticKind = Literal["cxr", "abdomen_ct", "brain_mr"]
_KINDS: tuple[str, ...] = ("cxr", "abdomen_ct", "brain_mr")

# Independent random streams per seed, so e.g. forcing a finding leaves the anatomy untouched.
_S_ANATOMY, _S_TEXTURE, _S_NOISE, _S_PREVALENCE, _S_TUMOUR = 1, 2, 3, 4, 5
_S_FINDING0 = 10
_S_CHANNEL0 = 20

_F32 = np.float32


@dataclass(frozen=True)
class CXRCase:
    """One synthetic chest radiograph.

    image_chw: float32 (1, H, W) in [0, 1]; labels: float32 (3,) multi-hot in CXR_FINDINGS order;
    anatomy: uint8 (H, W) 0 background / 1 lung / 2 heart; findings_mask: uint8 (H, W)
    0 none / 1 nodule / 2 opacity / 3 effusion (later wins); spacing: (row, col) mm per pixel.
    """

    image_chw: np.ndarray
    labels: np.ndarray
    anatomy: np.ndarray
    findings_mask: np.ndarray
    spacing: tuple[float, float]
    seed: int


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


# ----------------------------------------------------------------------------------------- helpers


def _check_seed(seed: int, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}: seed must be a non-negative int, got {seed!r}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(_F32, copy=False)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], corr_vox: float) -> np.ndarray:
    """Unit-variance smooth random field with correlation length ~corr_vox voxels.

    White noise is blurred on a grid corr_vox/2 times coarser and linearly upsampled, which is far
    cheaper than blurring at full resolution and looks the same at this smoothness.
    """
    step = max(1.0, corr_vox / 2.0)
    coarse_shape = tuple(int(np.ceil(s / step)) + 2 for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=_F32), sigma=1.0, mode="wrap")
    fine = ndimage.zoom(coarse, [step] * len(shape), order=1, grid_mode=False)
    fine = fine[tuple(slice(0, s) for s in shape)]
    fine -= fine.mean()
    return (fine / max(float(fine.std()), 1e-6)).astype(_F32, copy=False)


def _grid3(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Open voxel-centre grids normalised to [-1, 1] along each axis, shaped to broadcast as (X, Y, Z)."""
    axes = [((np.arange(n, dtype=_F32) + 0.5) / n * 2.0 - 1.0) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _ellipsoid(
    u: np.ndarray, v: np.ndarray, w: np.ndarray,
    centre: Sequence[float], radii: Sequence[float], angle: float = 0.0,
) -> np.ndarray:
    """Squared normalised radius of an ellipsoid rotated by `angle` (rad) about the z axis (<1 inside)."""
    du, dv, dw = u - _F32(centre[0]), v - _F32(centre[1]), w - _F32(centre[2])
    c, s = _F32(np.cos(angle)), _F32(np.sin(angle))
    a, b = du * c + dv * s, -du * s + dv * c
    r0, r1, r2 = (np.asarray(r, dtype=_F32) for r in radii)
    return (a / r0) ** 2 + (b / r1) ** 2 + (dw / r2) ** 2


def _ras_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """diag(spacing) affine with the volume centre at world (0, 0, 0)."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing)
    return affine


def _check_volume_args(
    what: str, seed: int, shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    _check_seed(seed, what)
    if len(shape) != 3 or any(int(s) != s or s < 16 for s in shape):
        raise ValueError(f"{what}: shape must be 3 ints >= 16, got {tuple(shape)}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"{what}: spacing must be 3 positive finite mm values, got {tuple(spacing)}")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    return shape3, (float(spacing[0]), float(spacing[1]), float(spacing[2]))


# ------------------------------------------------------------------------------------- chest x-ray


@dataclass(frozen=True)
class _Thorax:
    """Geometry of one radiograph that the findings need (body-frame coordinates X, Y; lungs per side)."""

    X: np.ndarray
    Y: np.ndarray
    lungs: dict[int, np.ndarray]  # side (-1 image left / patient right, +1) -> bool (H, W), heart excluded
    lung_soft: np.ndarray
    lung_cx: dict[int, float]
    lung_half_width: dict[int, tuple[float, float]]  # (medial, lateral) at the base
    diaphragm: dict[int, np.ndarray]  # Y of the hemidiaphragm below each lung, (H, W)


def _resolve_findings(seed: int, findings: Sequence[str] | None) -> tuple[str, ...]:
    if findings is None:
        draws = _rng(seed, _S_PREVALENCE).random(len(CXR_FINDINGS))
        return tuple(f for f, d in zip(CXR_FINDINGS, draws) if d < CXR_FINDING_PREVALENCE)
    if isinstance(findings, str):
        raise ValueError(f"chest_xray(seed={seed}): findings must be a sequence of names, not {findings!r}")
    unknown = sorted(set(findings) - set(CXR_FINDINGS))
    if unknown:
        raise ValueError(f"chest_xray(seed={seed}): unknown findings {unknown}; valid: {list(CXR_FINDINGS)}")
    return tuple(f for f in CXR_FINDINGS if f in set(findings))


def _cxr_anatomy(
    ra: np.random.Generator, rt: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, _Thorax]:
    """Density map (H, W) before display mapping, anatomy labels (H, W) and the geometry for findings."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(_F32) + 0.5) / size
    cx, cy = 0.5 + ra.uniform(-0.025, 0.025), 0.5 + ra.uniform(-0.02, 0.02)
    theta, scale = ra.uniform(-0.05, 0.05), ra.uniform(0.9, 1.04)
    c, s = np.cos(theta), np.sin(theta)
    X = (((xx - cx) * c + (yy - cy) * s) / scale).astype(_F32)
    Y = ((-(xx - cx) * s + (yy - cy) * c) / scale + 0.5).astype(_F32)
    ax = np.abs(X)

    # Body outline: narrow neck widening into shoulders and the chest wall.
    half_w = 0.09 + 0.35 * _sigmoid((Y - 0.075) / 0.018) + 0.03 * np.clip(Y - 0.1, 0.0, 1.0)
    body = _sigmoid((half_w - ax) / 0.006)
    thickness = np.sqrt(np.clip(1.0 - (X / half_w) ** 2, 0.0, 1.0))
    density = body * (0.30 + 0.20 * thickness)

    top = 0.10 + ra.uniform(-0.015, 0.015)
    domes = {-1: 0.64 + ra.uniform(-0.03, 0.03), 1: 0.67 + ra.uniform(-0.03, 0.03)}
    lung_cx, half_width, lungs, diaphragm = {}, {}, {}, {}
    for side in (-1, 1):
        lcx = side * (0.205 + ra.uniform(-0.015, 0.015))
        rx_lat, rx_med = 0.165 * ra.uniform(0.9, 1.1), 0.125 * ra.uniform(0.9, 1.1)
        bottom = domes[side] + 0.22  # below the dome: the diaphragm, not the ellipse, shapes the base
        ly, ry = (top + bottom) / 2.0, (bottom - top) / 2.0
        dx = X - lcx
        widen = 0.6 + 0.45 * np.clip((Y - top) / 0.45, 0.0, 1.0)
        rx = np.where(dx * side > 0, rx_lat, rx_med) * widen
        superellipse = np.abs(dx / rx) ** 2.3 + np.abs((Y - ly) / ry) ** 2.3 < 1.0
        diaphragm[side] = domes[side] + ra.uniform(0.08, 0.1) * (dx / 0.15) ** 2
        lungs[side] = superellipse & (Y < diaphragm[side])
        lung_cx[side], half_width[side] = lcx, (rx_med, rx_lat)

    # Heart: tilted ellipse sitting on the diaphragm, bulging to the patient's left (image right).
    hcx, hcy = 0.06 + ra.uniform(-0.02, 0.02), domes[1] - 0.07 + ra.uniform(-0.02, 0.02)
    hrx, hry, phi = 0.17 * ra.uniform(0.9, 1.12), 0.125 * ra.uniform(0.9, 1.1), ra.uniform(0.3, 0.5)
    ha = (X - hcx) * np.cos(phi) + (Y - hcy) * np.sin(phi)
    hb = -(X - hcx) * np.sin(phi) + (Y - hcy) * np.cos(phi)
    heart = ((ha / hrx) ** 2 + (hb / hry) ** 2 < 1.0) & (body > 0.5)
    aortic_knob = (X - 0.05) ** 2 + (Y - top - 0.2) ** 2 < 0.035**2
    for side in (-1, 1):
        lungs[side] &= ~heart & ~aortic_knob
    lung = lungs[-1] | lungs[1]

    lung_soft = ndimage.gaussian_filter(lung.astype(_F32), sigma=max(0.6, size / 300.0))
    density -= 0.30 * ra.uniform(0.9, 1.1) * lung_soft
    density += 0.03 * heart
    hilum = sum(np.exp(-((X - side * 0.1) ** 2 + (Y - 0.42) ** 2) / (2 * 0.07**2)) for side in (-1, 1))
    markings = _smooth_field(rt, (size, size), size / 90.0)
    density += lung_soft * (0.035 * markings + 0.10 * hilum)

    below = np.where(X < 0, Y > diaphragm[-1], Y > diaphragm[1])
    density += 0.08 * below * body
    if ra.random() < 0.6:  # gastric air bubble under the left hemidiaphragm
        gy = domes[1] + ra.uniform(0.04, 0.07)
        bubble = ((X - 0.17) / 0.04) ** 2 + ((Y - gy) / 0.025) ** 2 < 1.0
        density -= 0.15 * ndimage.gaussian_filter(bubble.astype(_F32), 1.0)
    density -= 0.10 * _sigmoid((0.018 - ax) / 0.004) * (Y < top + 0.22)  # trachea

    spine = _sigmoid((0.035 - ax) / 0.004) * body
    density += 0.10 * spine * (0.75 + 0.25 * np.cos(np.pi * Y / 0.05) ** 2)

    # Ribs are periodic bands along a curved coordinate, so all of them are drawn in one pass.
    period = (0.5 * (domes[-1] + domes[1]) - top) / 8.5
    chest_wall = _sigmoid((half_w - 0.012 - ax) / 0.006)
    r_post = (Y - (1.5 * ax**2 - 0.15 * ax) - (top - 0.01)) / period
    k = np.rint(r_post)
    dist = (r_post - k) * period
    post = np.exp(-((dist / (0.010 + 0.0012 * k)) ** 2)) * ((k >= 0) & (k <= 10))
    density += 0.09 * ra.uniform(0.8, 1.2) * post * _sigmoid((ax - 0.03) / 0.005) * chest_wall
    r_ant = (Y + 0.55 * ax - 0.3 * ax**2 - (top + 0.2)) / period
    ka = np.rint(r_ant)
    ant = np.exp(-(((r_ant - ka) * period / 0.012) ** 2)) * ((ka >= 0) & (ka <= 6))
    density += 0.05 * ant * _sigmoid((ax - 0.1) / 0.01) * chest_wall

    clavicle_y = top + 0.05 - 0.22 * ax + 0.3 * ax**2 + ra.uniform(-0.01, 0.01)
    clavicle = np.exp(-(((Y - clavicle_y) / 0.016) ** 2))
    density += 0.18 * clavicle * _sigmoid((ax - 0.025) / 0.005) * _sigmoid((0.33 - ax) / 0.01)

    density += body * 0.02 * _smooth_field(rt, (size, size), size / 25.0)
    density += 0.03

    anatomy = np.zeros((size, size), np.uint8)
    anatomy[lung] = 1
    anatomy[heart] = 2
    thorax = _Thorax(X, Y, lungs, lung_soft, lung_cx, half_width, diaphragm)
    return density.astype(_F32), anatomy, thorax


def _pick_in(mask: np.ndarray, rng: np.random.Generator, min_depth: float) -> tuple[int, int]:
    """A random pixel of `mask` at least `min_depth` px from its border (the deepest one if none is)."""
    depth = ndimage.distance_transform_edt(mask)
    candidates = np.flatnonzero(depth >= min_depth)
    flat = int(candidates[rng.integers(len(candidates))]) if len(candidates) else int(np.argmax(depth))
    return divmod(flat, mask.shape[1])


def _nodule(rng: np.random.Generator, th: _Thorax, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Small bright round blob inside one lung: (added density (H, W), mask (H, W))."""
    side = int(rng.choice([-1, 1]))
    radius = max(1.5, rng.uniform(0.018, 0.032) * size)
    r0, c0 = _pick_in(th.lungs[side], rng, radius + 1.5)
    rr, cc = np.ogrid[0:size, 0:size]
    rho = np.sqrt((rr - r0) ** 2 + (cc - c0) ** 2).astype(_F32) / _F32(radius)
    return rng.uniform(0.22, 0.32) * np.exp(-(rho**4)), rho <= 1.0


def _opacity(rng: np.random.Generator, th: _Thorax, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse patchy brightening of part of one lung: (added density (H, W), mask (H, W))."""
    side = int(rng.choice([-1, 1]))
    r0, c0 = _pick_in(th.lungs[side], rng, 3.0)
    y0, x0 = th.Y[r0, c0], th.X[r0, c0]
    ry, rx = rng.uniform(0.09, 0.15), rng.uniform(0.07, 0.12)
    blob = np.exp(-((((th.X - x0) / rx) ** 2 + ((th.Y - y0) / ry) ** 2) ** 2))
    patches = _sigmoid(2.0 * _smooth_field(rng, (size, size), size / 25.0) + 1.5)
    weight = ndimage.gaussian_filter(blob * patches * th.lungs[side], sigma=max(0.8, size / 150.0))
    return rng.uniform(0.22, 0.32) * weight, (weight > 0.15) & th.lungs[side]


def _effusion(rng: np.random.Generator, th: _Thorax, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fluid filling a costophrenic angle with a meniscus rising laterally: (added density, mask)."""
    side = int(rng.choice([-1, 1]))
    medial, lateral = th.lung_half_width[side]
    across = np.clip((th.X * side - abs(th.lung_cx[side]) + medial) / (medial + lateral), 0.0, 1.2)
    rise = np.clip((across - 0.25) / 0.75, 0.0, None) ** 1.5  # 0 medially, growing towards the chest wall
    meniscus = th.diaphragm[side] - rng.uniform(0.12, 0.22) * rise
    mask = th.lungs[side] & (th.Y > meniscus)
    fluid = ndimage.gaussian_filter(mask.astype(_F32), sigma=max(0.7, size / 300.0))
    return rng.uniform(0.30, 0.36) * fluid, mask


_FINDING_DRAWERS = {"nodule": _nodule, "opacity": _opacity, "effusion": _effusion}


def chest_xray(seed: int, size: int = 256, findings: Sequence[str] | None = None) -> CXRCase:
    """Synthetic frontal chest radiograph (size x size) with optional findings.

    findings=None draws each of CXR_FINDINGS independently with probability CXR_FINDING_PREVALENCE
    from the seed; a sequence forces exactly those (possibly none). Anatomy, texture, noise and each
    finding use separate random streams, so for a given seed adding a finding changes only the
    pixels around it.
    """
    _check_seed(seed, "chest_xray")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"chest_xray(seed={seed}): size must be an int >= 32 pixels, got {size!r}")
    size = int(size)
    present = _resolve_findings(seed, findings)
    ra, rt = _rng(seed, _S_ANATOMY), _rng(seed, _S_TEXTURE)
    density, anatomy, thorax = _cxr_anatomy(ra, rt, size)
    gain, offset, gamma = ra.uniform(0.85, 1.15), ra.uniform(-0.05, 0.05), ra.uniform(0.8, 1.25)
    noise_sd = ra.uniform(0.008, 0.02)

    labels = np.zeros(len(CXR_FINDINGS), _F32)
    findings_mask = np.zeros((size, size), np.uint8)
    for j, name in enumerate(CXR_FINDINGS):
        if name in present:
            added, mask = _FINDING_DRAWERS[name](_rng(seed, _S_FINDING0 + j), thorax, size)
            density += added.astype(_F32)
            findings_mask[mask] = j + 1
            labels[j] = 1.0

    image = np.clip(density * gain + offset, 0.0, 1.0) ** gamma
    image = image + _rng(seed, _S_NOISE).normal(0.0, noise_sd, image.shape).astype(_F32)
    image = np.clip(image, 0.0, 1.0).astype(_F32)
    mm = CXR_FIELD_OF_VIEW_MM / size
    return CXRCase(image[None], labels, anatomy, findings_mask, (mm, mm), int(seed))


# ------------------------------------------------------------------------------------- abdomen CT


def abdomen_ct(
    seed: int, shape: Sequence[int] = (96, 96, 64), spacing: Sequence[float] = (1.5, 1.5, 2.0)
) -> VolumeCase:
    """Synthetic abdominal CT (HU, float32 (1, X, Y, Z)) with ABDOMEN_LABELS organ labels.

    Air -1000 outside the body, subcutaneous fat, muscle wall, bowel/visceral fat with gas, a lumbar
    vertebra with discs, paraspinal and psoas muscles, liver (patient right = high x), spleen (left),
    two kidneys with sinus fat, contrast-filled aorta and IVC. Tissue means are drawn from
    ABDOMEN_HU, then a slight partial-volume blur and Gaussian noise of 10-20 HU are applied.
    """
    shape3, spacing3 = _check_volume_args("abdomen_ct", seed, shape, spacing)
    ra, rt, rn = _rng(seed, _S_ANATOMY), _rng(seed, _S_TEXTURE), _rng(seed, _S_NOISE)
    hu_of = {k: _F32(ra.uniform(lo, hi)) for k, (lo, hi) in ABDOMEN_HU.items()}
    u, v, w = _grid3(shape3)

    def jit(a: float) -> float:
        return float(ra.uniform(-a, a))

    # Body wall: elliptical cross-section, slightly wider inferiorly.
    ru, rv, v0 = 0.9 * ra.uniform(0.88, 1.0), 0.7 * ra.uniform(0.88, 1.0), jit(0.04)
    fat = ra.uniform(0.12, 0.25)
    rho = np.sqrt((u / (ru * (1 - 0.04 * w))) ** 2 + ((v - v0) / rv) ** 2)
    inside, cavity = rho < 1.0, rho < 1.0 - fat - 0.06
    hu = np.full(shape3, -1000.0, _F32)
    hu[inside] = hu_of["subcutaneous_fat"]
    hu[(rho < 1.0 - fat) & ~cavity] = hu_of["muscle"]

    bowel_field = _smooth_field(rt, shape3, 5.0)
    gas_field = _smooth_field(rt, shape3, 3.0)
    hu[cavity] = hu_of["visceral_fat"]
    bowel = cavity & (bowel_field > 0.3)
    hu[bowel] = hu_of["bowel"]
    hu[bowel & (gas_field > 2.0)] = -700.0

    vs = v0 - 0.5 * rv  # vertebral body centre, posterior
    psoas_r = 0.06 + 0.04 * (0.5 - w)  # psoas thickens inferiorly
    muscles = inside & np.logical_or.reduce([
        _ellipsoid(u, v, w, (side * 0.17, vs + dv, 0.0), (ru_m, rv_m, np.inf)) < 1
        for side in (-1, 1)
        for dv, ru_m, rv_m in ((-0.24, 0.13, 0.1), (0.02, psoas_r, 0.07))
    ])
    hu[muscles] = hu_of["muscle"]

    organ_field = _smooth_field(rt, shape3, 10.0)
    allowed = cavity & ~muscles
    lumpy = 1.0 + 0.25 * organ_field
    liver_centre = (0.42 + jit(0.04), v0 + 0.05, 0.35 + jit(0.08))
    liver_right = _ellipsoid(u, v, w, liver_centre, np.array((0.46, 0.5, 0.6)) * ra.uniform(0.9, 1.1, 3))
    liver_left = _ellipsoid(u, v, w, (-0.1 + jit(0.05), v0 + 0.28, 0.45), (0.3, 0.2, 0.35))
    liver = ((liver_right < lumpy) | (liver_left < lumpy)) & allowed
    spleen_centre = (-0.47 + jit(0.04), v0 - 0.15, 0.35 + jit(0.08))
    spleen_radii = np.array((0.15, 0.3, 0.32)) * ra.uniform(0.85, 1.15, 3)
    spleen = (_ellipsoid(u, v, w, spleen_centre, spleen_radii, angle=-0.7) < lumpy) & allowed
    kidneys, sinuses = {}, {}
    for lab_id, side, wc in ((3, 1, -0.12), (4, -1, 0.0)):  # side +1 = patient right (high x)
        centre = (side * (0.36 + jit(0.03)), vs + 0.06, wc + jit(0.08))
        radii = np.array((0.15, 0.18, 0.4)) * ra.uniform(0.9, 1.1, 3)
        kidney = (_ellipsoid(u, v, w, centre, radii, angle=side * 0.5) < 1) & allowed
        hilum = (centre[0] - side * 0.09, centre[1] + 0.03, centre[2])
        sinus = _ellipsoid(u, v, w, hilum, (0.07, 0.06, 0.16)) < 1
        kidneys[lab_id], sinuses[lab_id] = kidney & ~sinus, kidney & sinus
    r_aorta = 0.065 * ra.uniform(0.9, 1.1)
    aorta = (_ellipsoid(u, v, w, (-0.07, vs + 0.13 + r_aorta, 0.0), (r_aorta, r_aorta, np.inf)) < 1) & allowed
    ivc = (_ellipsoid(u, v, w, (0.12, vs + 0.17, 0.0), (0.06, 0.045, np.inf)) < 1) & allowed

    label = np.zeros(shape3, np.uint8)
    for mask, tissue, lab_id in (
        (liver, "liver", 1), (spleen, "spleen", 2), (kidneys[3], "kidney", 3), (kidneys[4], "kidney", 4)
    ):
        hu[mask] = hu_of[tissue] + 3.0 * organ_field[mask]
        label[mask] = lab_id
    for tissue_mask, tissue in ((sinuses[3] | sinuses[4], "visceral_fat"), (ivc, "ivc"), (aorta, "aorta")):
        hu[tissue_mask] = hu_of[tissue]
        label[tissue_mask] = 0
    label[aorta] = 5

    # Vertebra: cortical shell around cancellous bone, discs along z, canal and posterior elements.
    body_r = _ellipsoid(u, v, w, (0.0, vs, 0.0), (0.13, 0.12, np.inf))
    z_phase = np.mod((w + 1.0 + jit(0.2)) / 0.42, 1.0)
    canal = _ellipsoid(u, v, w, (0.0, vs - 0.19, 0.0), (0.055, 0.05, np.inf)) < 1
    arch = (_ellipsoid(u, v, w, (0.0, vs - 0.19, 0.0), (0.09, 0.085, np.inf)) < 1) & ~canal
    spinous = (np.abs(u) < 0.025) & (v < vs - 0.2) & (v > vs - 0.36)
    transverse = (np.abs(v - (vs - 0.1)) < 0.03) & (np.abs(u) < 0.24) & (np.abs(u) > 0.1)
    posterior = (arch | spinous | transverse) & (z_phase >= 0.25) & (z_phase < 0.85)
    bone = (body_r < 1) | posterior
    hu[bone] = hu_of["cortical_bone"]
    marrow = np.broadcast_to(body_r < 0.65, shape3)
    hu[marrow] = hu_of["cancellous_bone"] + 40.0 * organ_field[marrow]
    hu[(z_phase < 0.2) & (body_r < 1)] = hu_of["disc"]
    hu[np.broadcast_to(canal, shape3)] = 15.0
    label[bone | canal] = 0

    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    hu += rn.normal(0.0, ra.uniform(10.0, 20.0), shape3).astype(_F32)
    hu = np.clip(hu, -1024.0, 3071.0).astype(_F32)
    affine = _ras_affine(shape3, spacing3)
    return VolumeCase(hu[None], label, spacing3, affine, dict(ABDOMEN_LABELS), int(seed), ("CT",))


# -------------------------------------------------------------------------------------- brain MR


def _brain_tissues(
    ra: np.random.Generator, rt: np.random.Generator, shape: tuple[int, int, int]
) -> np.ndarray:
    """Tissue class map (X, Y, Z) indexing _BRAIN_CLASSES (air .. white; tumour classes not yet)."""
    u, v, w = _grid3(shape)
    size = ra.uniform(0.92, 1.02)
    centre = (0.0, -0.02 + ra.uniform(-0.03, 0.03), -0.08 + ra.uniform(-0.03, 0.03))
    rho = np.sqrt(_ellipsoid(u, v, w, centre, (0.74 * size, 0.9 * size, 0.86 * size)))
    gyri = _smooth_field(rt, shape, max(2.0, shape[0] / 24.0))
    sulci = _smooth_field(rt, shape, max(2.0, shape[0] / 20.0))
    brain_outer = 0.80 + 0.015 * gyri
    grey_inner = 0.70 + 0.04 * gyri

    tissue = np.zeros(shape, np.uint8)
    tissue[rho < 1.0] = 1  # scalp
    tissue[rho < 0.93] = 2  # skull
    tissue[rho < 0.86] = 3  # CSF
    tissue[rho < brain_outer] = 4  # cortex
    tissue[rho < grey_inner] = 5  # white matter
    tissue[(rho < brain_outer) & (rho > 0.68) & (sulci > 0.9)] = 3

    fissure = (np.abs(u) < 0.022) & (rho < 0.86) & (_ellipsoid(u, v, w, (0, 0.0, 0.0), (1.0, 0.45, 0.3)) > 1)
    tissue[fissure] = 3
    for side in (-1, 1):  # deep grey nuclei
        tissue[_ellipsoid(u, v, w, (side * 0.17, -0.05, -0.02), (0.1, 0.16, 0.1)) < 1] = 4
    vent = ra.uniform(0.8, 1.4)
    arc = 0.12 - 0.4 * (v - 0.05) ** 2  # lateral ventricles: centred at z 0.12, curving down at both ends
    for side in (-1, 1):
        tissue[_ellipsoid(u, v, w - arc, (side * 0.09, 0.05, 0.0), (0.06 * vent, 0.32, 0.09 * vent)) < 1] = 3
    tissue[_ellipsoid(u, v, w, (0, -0.02, -0.05), (0.02 * vent, 0.12, 0.08)) < 1] = 3  # third ventricle
    return tissue


def _brain_tumour(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """Nested tumour labels (X, Y, Z) in BRATS_LABELS codes, confined to the intracranial brain."""
    shape = tissue.shape
    u, v, w = _grid3(shape)
    centre = (rng.choice([-1, 1]) * rng.uniform(0.2, 0.42), rng.uniform(-0.4, 0.45), rng.uniform(-0.1, 0.4))
    core = rng.uniform(0.12, 0.2)
    irregular = 1.0 + 0.12 * _smooth_field(rng, shape, shape[0] / 10.0)
    rho = np.sqrt(_ellipsoid(u, v, w, centre, (1.0, 1.0, 1.0))) * irregular
    brain = (tissue >= 4) | ((tissue == 3) & (rho < core))
    label = np.zeros(shape, np.uint8)
    label[(rho < core * rng.uniform(1.5, 2.0)) & (tissue >= 4)] = 1
    label[(rho < core) & brain] = 3
    label[(rho < core * rng.uniform(0.4, 0.65)) & brain] = 2
    return label


def brain_mr(
    seed: int,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    channels: int = 1,
    tumour: bool = True,
) -> VolumeCase:
    """Synthetic head MR, float32 (C, X, Y, Z), arbitrary positive units with background exactly 0.

    channels=1 gives T1w; channels=4 gives BRAIN_MR_CHANNELS (FLAIR, T1w, T1gd, T2w, the MSD Task01
    order) of the same anatomy. tumour=True adds an edema / necrotic core / enhancing rim and labels
    only those (BRATS_LABELS); tumour=False labels tissues (BRAIN_TISSUE_LABELS; scalp and skull are 0).
    Each contrast has its own noise stream, so the T1w channel is the same for channels=1 and 4.
    """
    shape3, spacing3 = _check_volume_args("brain_mr", seed, shape, spacing)
    if channels not in (1, 4):
        raise ValueError(
            f"brain_mr(seed={seed}): channels must be 1 (T1w) or 4 {BRAIN_MR_CHANNELS}, got {channels!r}"
        )
    names = ("T1w",) if channels == 1 else BRAIN_MR_CHANNELS
    ra, rt = _rng(seed, _S_ANATOMY), _rng(seed, _S_TEXTURE)
    tissue = _brain_tissues(ra, rt, shape3)
    head = tissue > 0
    if tumour:
        label = _brain_tumour(_rng(seed, _S_TUMOUR), tissue)
        label_names = dict(BRATS_LABELS)
        tissue = np.where(label > 0, label + 5, tissue).astype(np.uint8)
    else:
        label = np.select([tissue == 3, tissue == 4, tissue == 5], [1, 2, 3], 0).astype(np.uint8)
        label_names = dict(BRAIN_TISSUE_LABELS)

    texture = 1.0 + 0.04 * _smooth_field(rt, shape3, 3.0)
    bias = 1.0 + 0.08 * _smooth_field(rt, shape3, shape3[0] / 2.0)
    noise_rel = ra.uniform(0.015, 0.035)
    images = []
    for name in names:
        rc = _rng(seed, _S_CHANNEL0 + BRAIN_MR_CHANNELS.index(name))
        gain = _F32(500.0 * rc.uniform(0.7, 1.4))
        signal = np.asarray(_BRAIN_SIGNAL[name], _F32)[tissue] * texture
        signal = ndimage.gaussian_filter(signal, sigma=0.5) * bias
        # Rician (magnitude) noise keeps the head strictly positive; air stays exactly 0.
        real = signal + rc.normal(0.0, noise_rel, shape3).astype(_F32)
        imag = rc.normal(0.0, noise_rel, shape3).astype(_F32)
        images.append(np.where(head, np.sqrt(real**2 + imag**2), 0.0).astype(_F32) * gain)
    image = np.stack(images).astype(_F32)
    return VolumeCase(image, label, spacing3, _ras_affine(shape3, spacing3), label_names, int(seed), names)


# ----------------------------------------------------------------------------------------- writers


def _subject_ids(n: int) -> list[str]:
    """Subject id per case: the first ~half of the cases come in pairs sharing a subject, the rest alone."""
    paired = (n // 2) // 2 * 2
    ids = [i // 2 for i in range(paired)] + [paired // 2 + j for j in range(n - paired)]
    return [f"sub{s:04d}" for s in ids]


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback for generator kwargs (tuples, numpy scalars/arrays) so they can be recorded."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"write_dataset: generator argument {obj!r} cannot be recorded in dataset.json")


def _case_seed(seed: int, i: int) -> int:
    """Independent 31-bit generator seed of case i in a dataset written with `seed`."""
    return int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint32)[0] >> 1)


def _write_gz(path: Path, payload: bytes) -> None:
    """gzip with mtime=0 and no file name in the header, so equal data give equal bytes."""
    path.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0))


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    _write_gz(path, img.to_bytes())


def _dataset_meta(
    kind: str, n: int, seed: int, kwargs: dict[str, Any],
    channel_names: tuple[str, ...], label_names: dict[int, str],
) -> dict[str, Any]:
    intensity: Any = {
        "cxr": "xray_histeq",
        "abdomen_ct": {"name": "ct_window", "lo": -175, "hi": 250},
        "brain_mr": "mri_zscore_nonzero",
    }[kind]
    return {
        "name": f"synthetic_{kind}",
        "kind": kind,
        "spatial_dims": 2 if kind == "cxr" else 3,
        "modality": {str(i): c for i, c in enumerate(channel_names)},
        "labels": {str(k): v for k, v in label_names.items()},
        "classes": list(CXR_FINDINGS) if kind == "cxr" else [],
        "multilabel": kind == "cxr",
        "intensity": intensity,
        "num_cases": n,
        "seed": seed,
        "generator_kwargs": kwargs,
        "case_seeds": [_case_seed(seed, i) for i in range(n)],
    }


def write_dataset(out_dir: str | Path, kind: SyntheticKind, n: int, seed: int = 0, **kwargs: Any) -> Path:
    """Write n synthetic cases of `kind` to out_dir in real formats; return the manifest.csv path.

    cxr: 8-bit grey PNG images (value = round(255 * image)) in images/, anatomy maps as 8-bit PNG
    with raw values 0/1/2 in masks/, label = present findings joined by '|'. abdomen_ct: int16 HU
    .nii.gz in imagesTr/, uint8 labels in labelsTr/. brain_mr: float32 .nii.gz, 4D (X, Y, Z, C) when
    channels=4 as in MSD BraTS. manifest.csv columns: path,label,mask,subject_id (paths relative to
    out_dir, forward slashes); dataset.json describes labels, classes, modality and the suggested
    intensity preset, and lists case_seeds (case i is generator(case_seeds[i], **kwargs)).
    Identical arguments give byte-identical files.
    """
    if kind not in _KINDS:
        raise ValueError(f"write_dataset: kind must be one of {list(_KINDS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"write_dataset({kind}): n must be a positive int, got {n!r}")
    _check_seed(seed, f"write_dataset({kind})")
    out = Path(out_dir)
    image_dir, mask_dir = ("images", "masks") if kind == "cxr" else ("imagesTr", "labelsTr")
    (out / image_dir).mkdir(parents=True, exist_ok=True)
    (out / mask_dir).mkdir(parents=True, exist_ok=True)
    json_kwargs = json.loads(json.dumps(kwargs, default=_jsonable))

    rows = []
    channel_names: tuple[str, ...] = ("XR",)
    label_names: dict[int, str] = CXR_ANATOMY_LABELS
    for i, subject in enumerate(_subject_ids(int(n))):
        stem, case_seed = f"case_{i:04d}", _case_seed(seed, i)
        if kind == "cxr":
            case = chest_xray(case_seed, **kwargs)
            img_rel, mask_rel = f"{image_dir}/{stem}.png", f"{mask_dir}/{stem}.png"
            pixels = np.rint(case.image_chw[0] * 255.0).astype(np.uint8)
            Image.fromarray(pixels).save(out / img_rel, format="PNG")
            Image.fromarray(case.anatomy).save(out / mask_rel, format="PNG")
            label = "|".join(f for f, on in zip(CXR_FINDINGS, case.labels) if on)
        else:
            vol = abdomen_ct(case_seed, **kwargs) if kind == "abdomen_ct" else brain_mr(case_seed, **kwargs)
            channel_names, label_names = vol.channel_names, vol.label_names
            img_rel, mask_rel = f"{image_dir}/{stem}.nii.gz", f"{mask_dir}/{stem}.nii.gz"
            if kind == "abdomen_ct":
                data = np.clip(np.rint(vol.image_cxyz[0]), -1024, 3071).astype(np.int16)
            else:
                xyzc = np.moveaxis(vol.image_cxyz, 0, -1)
                data = np.ascontiguousarray(xyzc[..., 0] if xyzc.shape[-1] == 1 else xyzc, dtype=np.float32)
            _write_nifti(out / img_rel, data, vol.affine)
            _write_nifti(out / mask_rel, vol.label_xyz, vol.affine)
            label = ""
        rows.append((img_rel, label, mask_rel, subject))

    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("path", "label", "mask", "subject_id"))
        writer.writerows(rows)
    meta = _dataset_meta(kind, int(n), int(seed), json_kwargs, channel_names, label_names)
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d synthetic %s cases to %s", n, kind, out)
    return manifest
