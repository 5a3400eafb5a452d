"""Reconstruction figures (original | masked | reconstruction | error, 3D as three orthogonal slices), viewable
2D masks (a palette PNG and an overlay on the image), and labels that fit their figure."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # tensors are only read (.float().cpu().numpy()): the report and predict need no torch import here
    import torch

# label 0 black, then well-separated colours (matplotlib's tab10), repeated for labels past 10
MASK_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def short_label(text: str, width: int = 24, lines: int = 2) -> str:
    """``text`` in at most ``lines`` lines of at most ``width`` characters, wrapped at spaces and hyphens where it
    can; longer still, the last line becomes ``...`` and the end of the text, so a long case id keeps its start and
    its distinctive end."""
    text = str(text)
    if len(text) <= width:
        return text
    if lines == 1:
        keep = width - 3
        return text[: keep // 2] + "..." + text[len(text) - (keep - keep // 2):]
    wrapped = textwrap.wrap(text, width) or [text[:width]]
    if len(wrapped) <= lines:
        return "\n".join(wrapped)
    return "\n".join(wrapped[: lines - 1] + ["..." + text[len(text) - (width - 3):].lstrip()])


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


def reconstruction_figure(original_bcs: torch.Tensor, recon_bcs: torch.Tensor, mask_b1s: torch.Tensor, *,
                          titles: Sequence[str] | None = None, channel: int = 0):
    """The matplotlib figure of :func:`save_reconstruction_figure` (row labels shortened to fit their row)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    orig = original_bcs[:, channel].float().cpu().numpy()
    rec = recon_bcs[:, channel].float().cpu().numpy()
    mask = mask_b1s[:, 0].float().cpu().numpy()
    rows = []
    for b in range(orig.shape[0]):
        name = short_label(titles[b], 22) if titles else f"sample {b}"
        for (view, o), (_, r), (_, m) in zip(_views(orig[b]), _views(rec[b]), _views(mask[b])):
            rows.append((f"{name}\n{view}" if view else name, o, r, m))
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
    return fig


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
    import matplotlib.pyplot as plt

    fig = reconstruction_figure(original_bcs, recon_bcs, mask_b1s, titles=titles, channel=channel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mask_palette(n: int = 256) -> list[int]:
    """A flat PIL palette: label 0 black, label k the k-th of :data:`MASK_COLOURS` (cycled)."""
    colours = [(0, 0, 0)] + [MASK_COLOURS[(k - 1) % len(MASK_COLOURS)] for k in range(1, n)]
    return [v for c in colours for v in c]


def save_palette_mask(labels_hw: np.ndarray, path: str | Path) -> Path:
    """A label map as a palette PNG: the pixel values stay the labels (tools read them back unchanged), the
    palette makes them visible in any image viewer."""
    labels_hw = np.asarray(labels_hw)
    if labels_hw.ndim != 2 or labels_hw.size == 0 or labels_hw.min() < 0 or labels_hw.max() > 255:
        raise ValueError(f"{path}: a palette PNG holds a 2D map of labels 0..255, got shape {labels_hw.shape}")
    h, w = labels_hw.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(labels_hw, dtype=np.uint8).tobytes())
    img.putpalette(mask_palette())
    img.save(path)
    return Path(path)


def display_grey(image_chw: np.ndarray) -> np.ndarray:
    """An image (any value range, 1 or 3 channels) as uint8 ``(H, W, 3)`` for display, 1st-99th percentile stretch."""
    x = np.asarray(image_chw, dtype=np.float32)
    x = x.mean(axis=0) if x.shape[0] != 3 else np.moveaxis(x, 0, -1)
    lo, hi = np.percentile(x, [1, 99])
    x = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0, 1)
    x = (x * 255).astype(np.uint8)
    return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 2 else x


def save_mask_overlay(image_chw: np.ndarray, labels_hw: np.ndarray, path: str | Path, alpha: float = 0.45) -> Path:
    """The image in grey with each label's pixels tinted in its palette colour (``alpha`` of the colour)."""
    if tuple(np.shape(image_chw)[1:]) != tuple(np.shape(labels_hw)):
        raise ValueError(f"{path}: image {np.shape(image_chw)[1:]} and mask {np.shape(labels_hw)} differ in size")
    rgb = display_grey(image_chw).astype(np.float32)
    colours = np.array(mask_palette(), dtype=np.float32).reshape(-1, 3)
    labels = np.asarray(labels_hw).astype(np.int64) % 256
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colours[labels[fg]]
    Image.fromarray(rgb.round().astype(np.uint8)).save(path)
    return Path(path)
