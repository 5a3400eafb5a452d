"""How a preprocessed case is stored in a pack: integer codes in their natural width plus a value table, or fp16.

Preprocessing gives float32 (C, *S) arrays, but an 8-bit radiograph after ``minmax`` or ``xray_histeq`` still
holds at most 256 distinct values, and a 12/16-bit CT or MR volume after ``ct_window`` or z-scoring at most
65 536. Such a case is stored as ``uint8`` / ``uint16`` codes (what compresses well) plus its table of distinct
float32 values: ``table[codes]`` gives back the preprocessed array bit for bit. Only a case whose resampling
created more distinct values than that is stored as float16 (relative error <= 2**-11), and the index says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import blosc2
import numpy as np

KIND_U8, KIND_U16, KIND_F16 = "u8", "u16", "f16"
TABLE_LEN = {KIND_U8: 256}


@dataclass(frozen=True)
class Encoded:
    """One case's stored form: ``codes`` (C, *S) and, for integer codes, the float32 ``table`` they index."""

    kind: str
    codes: np.ndarray
    table: np.ndarray | None


def palette(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, index of each element) of a flat integer array (sort + binary search: measured faster
    than ``np.unique(return_inverse=True)``)."""
    values = np.unique(bits)
    return values, np.searchsorted(values, bits)


def encode(x_cs: np.ndarray) -> Encoded:
    """The smallest exact form of a float32 array (palette codes), or float16 when it has too many values.

    Values are compared as bit patterns, so the table gives back every element bit for bit (-0.0 included)."""
    x = np.ascontiguousarray(x_cs, dtype=np.float32)
    values, codes = palette(x.view(np.uint32).ravel())
    codes, table = codes.reshape(x.shape), values.view(np.float32)
    if len(values) <= 256:
        return Encoded(KIND_U8, codes.astype(np.uint8), table)
    if len(values) <= 65536 and len(values) * 4 <= x.size:  # the table must stay small beside the codes
        return Encoded(KIND_U16, codes.astype(np.uint16), table)
    return Encoded(KIND_F16, x.astype(np.float16), None)


def decode(codes: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    """float32 values of stored codes (a crop of them is decoded alone)."""
    if table is None:
        return codes.astype(np.float32)
    return np.take(np.asarray(table, dtype=np.float32), codes)  # ~1.7x faster than table[codes]


def mask_dtype(mask: np.ndarray) -> np.dtype:
    """The narrowest unsigned type that holds a label map; ValueError naming the values that do not fit."""
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"mask values {lo}..{hi} do not fit uint16")
    return np.dtype(np.uint8 if hi < 256 else np.uint16)


def cparams(codec: str, typesize: int) -> blosc2.CParams:
    """Compression of stored arrays: zstd level 3 or lz4, with bit-shuffle (the measured choice, see docs)."""
    name = {"zstd": blosc2.Codec.ZSTD, "lz4": blosc2.Codec.LZ4}[codec]
    return blosc2.CParams(codec=name, clevel=3 if codec == "zstd" else 5, typesize=typesize,
                          filters=[blosc2.Filter.BITSHUFFLE], nthreads=1)


def blocks_for(shape: tuple[int, ...], spatial_dims: int,
               volume_block: int = 32) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, blocks) of a stack (N, *item): 2D items one per block (64 per chunk); 3D items in 32^3 blocks of 64^3
    chunks, so that a random crop decompresses only the blocks it touches."""
    n, item = shape[0], shape[1:]
    if spatial_dims == 2:  # (C, H, W) images, (H, W) masks
        return (min(n, 64), *item), (1, *item)
    lead, spatial = item[:-3], item[-3:]
    chunk = tuple(min(s, 2 * volume_block) for s in spatial)
    block = tuple(min(s, volume_block) for s in spatial)
    return (1, *lead, *chunk), (1, *lead, *block)
