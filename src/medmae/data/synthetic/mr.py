"""Synthetic 3D head MR (:func:`brain_mr`): 1 or 4 contrasts, arbitrary positive units, background exactly 0,
with either a BraTS-like tumour (:data:`BRATS_LABELS`) or tissue labels (:data:`BRAIN_TISSUE_LABELS`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medmae.data.synthetic.common import (
    F32,
    S_ANATOMY,
    S_CHANNEL0,
    S_TEXTURE,
    S_TUMOUR,
    VolumeCase,
    check_volume_args,
    ellipsoid,
    grid3,
    ras_affine,
    rng_stream,
    smooth_field,
)

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


def _brain_tissues(
    ra: np.random.Generator, rt: np.random.Generator, shape: tuple[int, int, int]
) -> np.ndarray:
    """Tissue class map (X, Y, Z) indexing _BRAIN_CLASSES (air .. white; tumour classes not yet)."""
    u, v, w = grid3(shape)
    size = ra.uniform(0.92, 1.02)
    centre = (0.0, -0.02 + ra.uniform(-0.03, 0.03), -0.08 + ra.uniform(-0.03, 0.03))
    rho = np.sqrt(ellipsoid(u, v, w, centre, (0.74 * size, 0.9 * size, 0.86 * size)))
    gyri = smooth_field(rt, shape, max(2.0, shape[0] / 24.0))
    sulci = smooth_field(rt, shape, max(2.0, shape[0] / 20.0))
    brain_outer = 0.80 + 0.015 * gyri
    grey_inner = 0.70 + 0.04 * gyri

    tissue = np.zeros(shape, np.uint8)
    tissue[rho < 1.0] = 1  # scalp
    tissue[rho < 0.93] = 2  # skull
    tissue[rho < 0.86] = 3  # CSF
    tissue[rho < brain_outer] = 4  # cortex
    tissue[rho < grey_inner] = 5  # white matter
    tissue[(rho < brain_outer) & (rho > 0.68) & (sulci > 0.9)] = 3

    fissure = (np.abs(u) < 0.022) & (rho < 0.86) & (ellipsoid(u, v, w, (0, 0.0, 0.0), (1.0, 0.45, 0.3)) > 1)
    tissue[fissure] = 3
    for side in (-1, 1):  # deep grey nuclei
        tissue[ellipsoid(u, v, w, (side * 0.17, -0.05, -0.02), (0.1, 0.16, 0.1)) < 1] = 4
    vent = ra.uniform(0.8, 1.4)
    arc = 0.12 - 0.4 * (v - 0.05) ** 2  # lateral ventricles: centred at z 0.12, curving down at both ends
    for side in (-1, 1):
        tissue[ellipsoid(u, v, w - arc, (side * 0.09, 0.05, 0.0), (0.06 * vent, 0.32, 0.09 * vent)) < 1] = 3
    tissue[ellipsoid(u, v, w, (0, -0.02, -0.05), (0.02 * vent, 0.12, 0.08)) < 1] = 3  # third ventricle
    return tissue


def _brain_tumour(rng: np.random.Generator, tissue: np.ndarray) -> np.ndarray:
    """Nested tumour labels (X, Y, Z) in BRATS_LABELS codes, confined to the intracranial brain."""
    shape = tissue.shape
    u, v, w = grid3(shape)
    centre = (rng.choice([-1, 1]) * rng.uniform(0.2, 0.42), rng.uniform(-0.4, 0.45), rng.uniform(-0.1, 0.4))
    core = rng.uniform(0.12, 0.2)
    irregular = 1.0 + 0.12 * smooth_field(rng, shape, shape[0] / 10.0)
    rho = np.sqrt(ellipsoid(u, v, w, centre, (1.0, 1.0, 1.0))) * irregular
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
    shape3, spacing3 = check_volume_args("brain_mr", seed, shape, spacing)
    if channels not in (1, 4):
        raise ValueError(
            f"brain_mr(seed={seed}): channels must be 1 (T1w) or 4 {BRAIN_MR_CHANNELS}, got {channels!r}"
        )
    names = ("T1w",) if channels == 1 else BRAIN_MR_CHANNELS
    ra, rt = rng_stream(seed, S_ANATOMY), rng_stream(seed, S_TEXTURE)
    tissue = _brain_tissues(ra, rt, shape3)
    head = tissue > 0
    if tumour:
        label = _brain_tumour(rng_stream(seed, S_TUMOUR), tissue)
        label_names = dict(BRATS_LABELS)
        tissue = np.where(label > 0, label + 5, tissue).astype(np.uint8)
    else:
        label = np.select([tissue == 3, tissue == 4, tissue == 5], [1, 2, 3], 0).astype(np.uint8)
        label_names = dict(BRAIN_TISSUE_LABELS)

    texture = 1.0 + 0.04 * smooth_field(rt, shape3, 3.0)
    bias = 1.0 + 0.08 * smooth_field(rt, shape3, shape3[0] / 2.0)
    noise_rel = ra.uniform(0.015, 0.035)
    images = []
    for name in names:
        rc = rng_stream(seed, S_CHANNEL0 + BRAIN_MR_CHANNELS.index(name))
        gain = F32(500.0 * rc.uniform(0.7, 1.4))
        signal = np.asarray(_BRAIN_SIGNAL[name], F32)[tissue] * texture
        signal = ndimage.gaussian_filter(signal, sigma=0.5) * bias
        # Rician (magnitude) noise keeps the head strictly positive; air stays exactly 0.
        real = signal + rc.normal(0.0, noise_rel, shape3).astype(F32)
        imag = rc.normal(0.0, noise_rel, shape3).astype(F32)
        images.append(np.where(head, np.sqrt(real**2 + imag**2), 0.0).astype(F32) * gain)
    image = np.stack(images).astype(F32)
    return VolumeCase(image, label, spacing3, ras_affine(shape3, spacing3), label_names, int(seed), names)
