"""Synthetic 3D abdominal CT (:func:`abdomen_ct`) in Hounsfield units with organ labels (:data:`ABDOMEN_LABELS`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medmae.data.synthetic.common import (
    F32,
    S_ANATOMY,
    S_NOISE,
    S_TEXTURE,
    VolumeCase,
    check_volume_args,
    ellipsoid,
    grid3,
    ras_affine,
    rng_stream,
    smooth_field,
)

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


def abdomen_ct(
    seed: int, shape: Sequence[int] = (96, 96, 64), spacing: Sequence[float] = (1.5, 1.5, 2.0)
) -> VolumeCase:
    """Synthetic abdominal CT (HU, float32 (1, X, Y, Z)) with ABDOMEN_LABELS organ labels.

    Air -1000 outside the body, subcutaneous fat, muscle wall, bowel/visceral fat with gas, a lumbar
    vertebra with discs, paraspinal and psoas muscles, liver (patient right = high x), spleen (left),
    two kidneys with sinus fat, contrast-filled aorta and IVC. Tissue means are drawn from
    ABDOMEN_HU, then a slight partial-volume blur and Gaussian noise of 10-20 HU are applied.
    """
    shape3, spacing3 = check_volume_args("abdomen_ct", seed, shape, spacing)
    ra, rt, rn = rng_stream(seed, S_ANATOMY), rng_stream(seed, S_TEXTURE), rng_stream(seed, S_NOISE)
    hu_of = {k: F32(ra.uniform(lo, hi)) for k, (lo, hi) in ABDOMEN_HU.items()}
    u, v, w = grid3(shape3)

    def jit(a: float) -> float:
        return float(ra.uniform(-a, a))

    # Body wall: elliptical cross-section, slightly wider inferiorly.
    ru, rv, v0 = 0.9 * ra.uniform(0.88, 1.0), 0.7 * ra.uniform(0.88, 1.0), jit(0.04)
    fat = ra.uniform(0.12, 0.25)
    rho = np.sqrt((u / (ru * (1 - 0.04 * w))) ** 2 + ((v - v0) / rv) ** 2)
    inside, cavity = rho < 1.0, rho < 1.0 - fat - 0.06
    hu = np.full(shape3, -1000.0, F32)
    hu[inside] = hu_of["subcutaneous_fat"]
    hu[(rho < 1.0 - fat) & ~cavity] = hu_of["muscle"]

    bowel_field = smooth_field(rt, shape3, 5.0)
    gas_field = smooth_field(rt, shape3, 3.0)
    hu[cavity] = hu_of["visceral_fat"]
    bowel = cavity & (bowel_field > 0.3)
    hu[bowel] = hu_of["bowel"]
    hu[bowel & (gas_field > 2.0)] = -700.0

    vs = v0 - 0.5 * rv  # vertebral body centre, posterior
    psoas_r = 0.06 + 0.04 * (0.5 - w)  # psoas thickens inferiorly
    muscles = inside & np.logical_or.reduce([
        ellipsoid(u, v, w, (side * 0.17, vs + dv, 0.0), (ru_m, rv_m, np.inf)) < 1
        for side in (-1, 1)
        for dv, ru_m, rv_m in ((-0.24, 0.13, 0.1), (0.02, psoas_r, 0.07))
    ])
    hu[muscles] = hu_of["muscle"]

    organ_field = smooth_field(rt, shape3, 10.0)
    allowed = cavity & ~muscles
    lumpy = 1.0 + 0.25 * organ_field
    liver_centre = (0.42 + jit(0.04), v0 + 0.05, 0.35 + jit(0.08))
    liver_right = ellipsoid(u, v, w, liver_centre, np.array((0.46, 0.5, 0.6)) * ra.uniform(0.9, 1.1, 3))
    liver_left = ellipsoid(u, v, w, (-0.1 + jit(0.05), v0 + 0.28, 0.45), (0.3, 0.2, 0.35))
    liver = ((liver_right < lumpy) | (liver_left < lumpy)) & allowed
    spleen_centre = (-0.47 + jit(0.04), v0 - 0.15, 0.35 + jit(0.08))
    spleen_radii = np.array((0.15, 0.3, 0.32)) * ra.uniform(0.85, 1.15, 3)
    spleen = (ellipsoid(u, v, w, spleen_centre, spleen_radii, angle=-0.7) < lumpy) & allowed
    kidneys, sinuses = {}, {}
    for lab_id, side, wc in ((3, 1, -0.12), (4, -1, 0.0)):  # side +1 = patient right (high x)
        centre = (side * (0.36 + jit(0.03)), vs + 0.06, wc + jit(0.08))
        radii = np.array((0.15, 0.18, 0.4)) * ra.uniform(0.9, 1.1, 3)
        kidney = (ellipsoid(u, v, w, centre, radii, angle=side * 0.5) < 1) & allowed
        hilum = (centre[0] - side * 0.09, centre[1] + 0.03, centre[2])
        sinus = ellipsoid(u, v, w, hilum, (0.07, 0.06, 0.16)) < 1
        kidneys[lab_id], sinuses[lab_id] = kidney & ~sinus, kidney & sinus
    r_aorta = 0.065 * ra.uniform(0.9, 1.1)
    aorta = (ellipsoid(u, v, w, (-0.07, vs + 0.13 + r_aorta, 0.0), (r_aorta, r_aorta, np.inf)) < 1) & allowed
    ivc = (ellipsoid(u, v, w, (0.12, vs + 0.17, 0.0), (0.06, 0.045, np.inf)) < 1) & allowed

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
    body_r = ellipsoid(u, v, w, (0.0, vs, 0.0), (0.13, 0.12, np.inf))
    z_phase = np.mod((w + 1.0 + jit(0.2)) / 0.42, 1.0)
    canal = ellipsoid(u, v, w, (0.0, vs - 0.19, 0.0), (0.055, 0.05, np.inf)) < 1
    arch = (ellipsoid(u, v, w, (0.0, vs - 0.19, 0.0), (0.09, 0.085, np.inf)) < 1) & ~canal
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
    hu += rn.normal(0.0, ra.uniform(10.0, 20.0), shape3).astype(F32)
    hu = np.clip(hu, -1024.0, 3071.0).astype(F32)
    affine = ras_affine(shape3, spacing3)
    return VolumeCase(hu[None], label, spacing3, affine, dict(ABDOMEN_LABELS), int(seed), ("CT",))
