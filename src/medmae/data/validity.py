"""The one rule for "can this image be trained on", shared by ``medmae data check`` and training.

``data check`` reports each :class:`Problem` as an error finding; :func:`medmae.data.preprocess.load_image`
raises it as a :class:`~medmae.errors.CaseError` naming the case (skippable with ``data.on_bad_case=skip``).
The rule looks at the whole image as read: a 2D model reading a volume as slices (``data.slice_axis``) may
meet constant slices (background), which are fine; only a constant whole image is not.

Also here: the declared size of an image file, checked from its header before any voxel is read, so a corrupt
header (a NIfTI declaring 32767^3 voxels) is a :class:`~medmae.errors.ReadError` naming the file, not a bare
``MemoryError``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmae.errors import ReadError

MAX_VOXELS = 2**32  # per image, all channels: 16 GiB as float32; a larger header is taken as corrupt


@dataclass(frozen=True)
class Problem:
    """Why an image cannot be used: ``code`` (the data-check finding code) and a one-line ``message``."""

    code: str
    message: str


def is_colour(channel_names: Sequence[str] | None) -> bool:
    """RGB(A) channels of one picture, as opposed to channels that are separate images (MR sequences)."""
    return channel_names is not None and tuple(channel_names)[:3] == ("R", "G", "B")


def image_problems(shape_s: Sequence[int], nonfinite: int, ranges_c: Sequence[tuple[float | None, float | None]],
                   *, colour: bool = False) -> list[Problem]:
    """The rule, on an image's spatial shape, its NaN/Inf count and each channel's finite (min, max).

    A channel that is a separate image (an MR sequence) must not be constant; a colour picture must not be
    constant in all its channels (a pure red image has constant green and blue, and is fine)."""
    problems = []
    if nonfinite:
        problems.append(Problem("nonfinite", f"{nonfinite} NaN/Inf voxels in the image"))
    if math.prod(shape_s) < 2:
        problems.append(Problem("constant_image", f"spatial shape {tuple(int(s) for s in shape_s)} is a single voxel"))
        return problems
    constant = [c for c, (lo, hi) in enumerate(ranges_c) if lo is not None and lo == hi]
    if colour and len(constant) == len(ranges_c):
        values = ", ".join(f"{ranges_c[c][0]:g}" for c in constant)
        problems.append(Problem("constant_image", f"the colour image is one colour ({values}) everywhere"))
    elif not colour:
        problems += [Problem("constant_image", f"channel {c} is constant ({ranges_c[c][0]:g}) over the whole image")
                     for c in constant]
    return problems


def channel_ranges(x_cs: np.ndarray) -> list[tuple[float | None, float | None]]:
    """Per channel of (C, *S): (min, max) over its finite values, (None, None) when it has none."""
    out: list[tuple[float | None, float | None]] = []
    for ch in x_cs:
        finite = np.isfinite(ch)
        values = ch if finite.all() else ch[finite]
        out.append((float(values.min()), float(values.max())) if values.size else (None, None))
    return out


def array_problems(x_cs: np.ndarray, channel_names: Sequence[str] | None = None) -> list[Problem]:
    """The rule on an image (C, *S) as read (``channel_names`` from its :class:`~medmae.data.image.ImageMeta`)."""
    nonfinite = int(x_cs.size - np.count_nonzero(np.isfinite(x_cs)))
    return image_problems(x_cs.shape[1:], nonfinite, channel_ranges(x_cs), colour=is_colour(channel_names))


def require_valid(x_cs: np.ndarray, channel_names: Sequence[str] | None = None) -> None:
    """ValueError listing the problems of an image (C, *S) as read; nothing when it can be used."""
    problems = array_problems(x_cs, channel_names)
    if problems:
        raise ValueError("; ".join(p.message for p in problems) + " (data.on_bad_case=skip leaves such cases out)")


def check_nifti_size(path: Path, img: Any) -> None:
    """:func:`check_declared_size` of a loaded (not yet read) nibabel image; the file size too when uncompressed."""
    offset = None if path.name.lower().endswith(".gz") else int(img.dataobj.offset)
    check_declared_size(path, img.shape, img.get_data_dtype(), offset)


def check_declared_size(path: Path, shape: Sequence[int], dtype: np.dtype, data_offset: int | None) -> None:
    """ReadError naming ``path`` and the shape its header declares, when that is beyond :data:`MAX_VOXELS` or
    (``data_offset`` given: an uncompressed file) needs more bytes than the file holds."""
    shape = tuple(int(s) for s in shape)
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise ReadError(f"{path}: header declares shape {shape} ({voxels:.3g} voxels, {voxels * 4 / 2**30:.3g} GiB as "
                        f"float32), more than the {MAX_VOXELS:.3g}-voxel limit: a corrupt header?")
    if data_offset is not None:
        needed, size = data_offset + voxels * np.dtype(dtype).itemsize, os.stat(path).st_size
        if size < needed:
            raise ReadError(f"{path}: header declares shape {shape} {np.dtype(dtype).name} ({needed} bytes with the "
                            f"header) but the file holds {size} bytes: truncated, or a corrupt header")
