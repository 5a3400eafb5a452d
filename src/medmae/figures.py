"""Reconstruction figures: original | masked | reconstruction | error, 3D as three orthogonal slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def _views(x_s: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """2D: the image; 3D (X, Y, Z in RAS): axial, coronal and sagittal slices through the centre."""
    if x_s.ndim == 2:
        return [("", x_s)]
    cx, cy, cz = (s // 2 for s in x_s.shape)
    return [
        ("axial", np.rot90(x_s[:, :, cz])),
        ("coronal", np.rot90(x_s[:, cy, :])),
        ("sagittal", np.rot90(x_s[cx, :, :])),
    ]


def save_reconstruction_figure(
    original_bcs: torch.Tensor,
    recon_bcs: torch.Tensor,
    mask_b1s: torch.Tensor,
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    channel: int = 0,
) -> Path:
    """Write a PNG grid: one row per sample (per slice orientation in 3D), columns
    original | masked input | reconstruction | absolute error. Intensities share one range per row."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    orig = original_bcs[:, channel].float().cpu().numpy()
    rec = recon_bcs[:, channel].float().cpu().numpy()
    mask = mask_b1s[:, 0].float().cpu().numpy()
    rows = []
    for b in range(orig.shape[0]):
        name = titles[b] if titles else f"sample {b}"
        for (view, o), (_, r), (_, m) in zip(_views(orig[b]), _views(rec[b]), _views(mask[b])):
            rows.append((f"{name} {view}".strip(), o, r, m))
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for i, (name, o, r, m) in enumerate(rows):
        lo, hi = float(np.min(o)), float(np.max(o))
        masked = np.where(m > 0.5, np.nan, o)
        err = np.abs(r - o) * (m > 0.5)
        for j, (img, title) in enumerate([(o, "original"), (masked, "masked"), (r, "reconstruction"), (err, "|error| on masked")]):
            ax = axes[i, j]
            cmap = plt.get_cmap("magma" if j == 3 else "gray").with_extremes(bad="#4c5a8c")  # bad = masked patches
            kw = {} if j == 3 else {"vmin": lo, "vmax": hi}
            ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
