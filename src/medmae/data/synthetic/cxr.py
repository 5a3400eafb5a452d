"""Synthetic 2D frontal chest radiograph (:func:`chest_xray`), values in [0, 1], with optional findings
(:data:`CXR_FINDINGS`), a multi-hot label, an anatomy label map and a findings mask.

Shown in radiological convention: the patient's right is on the image's left (column 0), so the heart bulges
towards high column indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medmae.data.synthetic.common import (
    F32,
    S_ANATOMY,
    S_FINDING0,
    S_NOISE,
    S_PREVALENCE,
    S_TEXTURE,
    check_seed,
    rng_stream,
    sigmoid,
    smooth_field,
)

CXR_FINDINGS: tuple[str, ...] = ("nodule", "opacity", "effusion")
CXR_ANATOMY_LABELS: dict[int, str] = {0: "background", 1: "lung", 2: "heart"}
CXR_FINDING_PREVALENCE = 0.35
CXR_FIELD_OF_VIEW_MM = 400.0


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
        draws = rng_stream(seed, S_PREVALENCE).random(len(CXR_FINDINGS))
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
    yy, xx = (np.mgrid[0:size, 0:size].astype(F32) + 0.5) / size
    cx, cy = 0.5 + ra.uniform(-0.025, 0.025), 0.5 + ra.uniform(-0.02, 0.02)
    theta, scale = ra.uniform(-0.05, 0.05), ra.uniform(0.9, 1.04)
    c, s = np.cos(theta), np.sin(theta)
    X = (((xx - cx) * c + (yy - cy) * s) / scale).astype(F32)
    Y = ((-(xx - cx) * s + (yy - cy) * c) / scale + 0.5).astype(F32)
    ax = np.abs(X)

    # Body outline: narrow neck widening into shoulders and the chest wall.
    half_w = 0.09 + 0.35 * sigmoid((Y - 0.075) / 0.018) + 0.03 * np.clip(Y - 0.1, 0.0, 1.0)
    body = sigmoid((half_w - ax) / 0.006)
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

    lung_soft = ndimage.gaussian_filter(lung.astype(F32), sigma=max(0.6, size / 300.0))
    density -= 0.30 * ra.uniform(0.9, 1.1) * lung_soft
    density += 0.03 * heart
    hilum = sum(np.exp(-((X - side * 0.1) ** 2 + (Y - 0.42) ** 2) / (2 * 0.07**2)) for side in (-1, 1))
    markings = smooth_field(rt, (size, size), size / 90.0)
    density += lung_soft * (0.035 * markings + 0.10 * hilum)

    below = np.where(X < 0, Y > diaphragm[-1], Y > diaphragm[1])
    density += 0.08 * below * body
    if ra.random() < 0.6:  # gastric air bubble under the left hemidiaphragm
        gy = domes[1] + ra.uniform(0.04, 0.07)
        bubble = ((X - 0.17) / 0.04) ** 2 + ((Y - gy) / 0.025) ** 2 < 1.0
        density -= 0.15 * ndimage.gaussian_filter(bubble.astype(F32), 1.0)
    density -= 0.10 * sigmoid((0.018 - ax) / 0.004) * (Y < top + 0.22)  # trachea

    spine = sigmoid((0.035 - ax) / 0.004) * body
    density += 0.10 * spine * (0.75 + 0.25 * np.cos(np.pi * Y / 0.05) ** 2)

    # Ribs are periodic bands along a curved coordinate, so all of them are drawn in one pass.
    period = (0.5 * (domes[-1] + domes[1]) - top) / 8.5
    chest_wall = sigmoid((half_w - 0.012 - ax) / 0.006)
    r_post = (Y - (1.5 * ax**2 - 0.15 * ax) - (top - 0.01)) / period
    k = np.rint(r_post)
    dist = (r_post - k) * period
    post = np.exp(-((dist / (0.010 + 0.0012 * k)) ** 2)) * ((k >= 0) & (k <= 10))
    density += 0.09 * ra.uniform(0.8, 1.2) * post * sigmoid((ax - 0.03) / 0.005) * chest_wall
    r_ant = (Y + 0.55 * ax - 0.3 * ax**2 - (top + 0.2)) / period
    ka = np.rint(r_ant)
    ant = np.exp(-(((r_ant - ka) * period / 0.012) ** 2)) * ((ka >= 0) & (ka <= 6))
    density += 0.05 * ant * sigmoid((ax - 0.1) / 0.01) * chest_wall

    clavicle_y = top + 0.05 - 0.22 * ax + 0.3 * ax**2 + ra.uniform(-0.01, 0.01)
    clavicle = np.exp(-(((Y - clavicle_y) / 0.016) ** 2))
    density += 0.18 * clavicle * sigmoid((ax - 0.025) / 0.005) * sigmoid((0.33 - ax) / 0.01)

    density += body * 0.02 * smooth_field(rt, (size, size), size / 25.0)
    density += 0.03

    anatomy = np.zeros((size, size), np.uint8)
    anatomy[lung] = 1
    anatomy[heart] = 2
    thorax = _Thorax(X, Y, lungs, lung_soft, lung_cx, half_width, diaphragm)
    return density.astype(F32), anatomy, thorax


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
    rho = np.sqrt((rr - r0) ** 2 + (cc - c0) ** 2).astype(F32) / F32(radius)
    return rng.uniform(0.22, 0.32) * np.exp(-(rho**4)), rho <= 1.0


def _opacity(rng: np.random.Generator, th: _Thorax, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse patchy brightening of part of one lung: (added density (H, W), mask (H, W))."""
    side = int(rng.choice([-1, 1]))
    r0, c0 = _pick_in(th.lungs[side], rng, 3.0)
    y0, x0 = th.Y[r0, c0], th.X[r0, c0]
    ry, rx = rng.uniform(0.09, 0.15), rng.uniform(0.07, 0.12)
    blob = np.exp(-((((th.X - x0) / rx) ** 2 + ((th.Y - y0) / ry) ** 2) ** 2))
    patches = sigmoid(2.0 * smooth_field(rng, (size, size), size / 25.0) + 1.5)
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
    fluid = ndimage.gaussian_filter(mask.astype(F32), sigma=max(0.7, size / 300.0))
    return rng.uniform(0.30, 0.36) * fluid, mask


_FINDING_DRAWERS = {"nodule": _nodule, "opacity": _opacity, "effusion": _effusion}


def chest_xray(seed: int, size: int = 256, findings: Sequence[str] | None = None) -> CXRCase:
    """Synthetic frontal chest radiograph (size x size) with optional findings.

    findings=None draws each of CXR_FINDINGS independently with probability CXR_FINDING_PREVALENCE
    from the seed; a sequence forces exactly those (possibly none). Anatomy, texture, noise and each
    finding use separate random streams, so for a given seed adding a finding changes only the
    pixels around it.
    """
    check_seed(seed, "chest_xray")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"chest_xray(seed={seed}): size must be an int >= 32 pixels, got {size!r}")
    size = int(size)
    present = _resolve_findings(seed, findings)
    ra, rt = rng_stream(seed, S_ANATOMY), rng_stream(seed, S_TEXTURE)
    density, anatomy, thorax = _cxr_anatomy(ra, rt, size)
    gain, offset, gamma = ra.uniform(0.85, 1.15), ra.uniform(-0.05, 0.05), ra.uniform(0.8, 1.25)
    noise_sd = ra.uniform(0.008, 0.02)

    labels = np.zeros(len(CXR_FINDINGS), F32)
    findings_mask = np.zeros((size, size), np.uint8)
    for j, name in enumerate(CXR_FINDINGS):
        if name in present:
            added, mask = _FINDING_DRAWERS[name](rng_stream(seed, S_FINDING0 + j), thorax, size)
            density += added.astype(F32)
            findings_mask[mask] = j + 1
            labels[j] = 1.0

    image = np.clip(density * gain + offset, 0.0, 1.0) ** gamma
    image = image + rng_stream(seed, S_NOISE).normal(0.0, noise_sd, image.shape).astype(F32)
    image = np.clip(image, 0.0, 1.0).astype(F32)
    mm = CXR_FIELD_OF_VIEW_MM / size
    return CXRCase(image[None], labels, anatomy, findings_mask, (mm, mm), int(seed))
