"""PNG / JPEG / TIFF / GIF / BMP via Pillow: 2D ``(C, H, W)`` in the file's own value range (16-bit kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medmae.data.image import StoredImage
from medmae.errors import ReadError

PIL_MODE_DTYPE = {"1": "bool", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16", "I": "int32", "F": "float32"}


def read_pillow(path: Path, *, as_label: bool) -> StoredImage:
    """2D raster via Pillow -> ``(C, H, W)`` in the file's own value range (16-bit kept)."""
    try:
        with Image.open(path) as img:
            n_frames = int(getattr(img, "n_frames", 1))
            img.load()
            mode = img.mode
            arr, names = _pil_to_array(img, as_label=as_label)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ReadError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from exc
    if n_frames > 1:
        raise ReadError(f"{path}: {n_frames} frames/pages; multi-frame raster images are not supported")
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3:
        arr = np.moveaxis(arr, -1, 0)
    else:
        raise ReadError(f"{path}: Pillow mode {mode!r} gave an array of shape {arr.shape}")
    return StoredImage(arr, None, PIL_MODE_DTYPE.get(mode, "uint8"), channel_names=names)


def _pil_to_array(img: Image.Image, *, as_label: bool) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Pillow image -> ``(H, W)`` or ``(H, W, 3)`` array; labels keep palette indices."""
    mode = img.mode
    if mode in ("P", "PA"):
        if as_label:
            return np.asarray(img.convert("P") if mode == "PA" else img), None
        palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        if len(palette) and (palette == palette[:, :1]).all():
            return np.asarray(img.convert("L")), None
        return np.asarray(img.convert("RGB")), ("R", "G", "B")
    if mode == "1":
        return np.asarray(img).astype(np.uint8), None
    if mode in ("LA", "La"):
        return np.asarray(img.convert("L")), None
    if mode in ("I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16), None
    if mode in ("L", "I;16", "I", "F"):
        return np.asarray(img), None
    return np.asarray(img.convert("RGB")), ("R", "G", "B")
