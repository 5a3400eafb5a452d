"""Masking as pure functions: seeded per-sample noise, token masks, patchify.

Shapes: ``B`` batch, ``C`` channels, ``L`` tokens, ``K`` kept tokens, ``P`` values per patch (C * prod(patch)).
Masks are boolean with ``True`` = masked (hidden from the encoder, to be reconstructed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_U32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 tensors holding uint32 values, without int64 overflow (split c in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _U32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3 finaliser on uint32 values stored in int64: a cheap, well-mixed bijection."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def seeded_uniform(seeds_b: torch.Tensor, n: int) -> torch.Tensor:
    """Counter-based uniform noise in [0, 1): row b is a pure function of (seeds_b[b], column index).

    Stateless, so masks do not depend on the global RNG, the device, the batch composition or the rank:
    the same sample gets the same mask in a resumed run, under DDP and on GPU.

    Args:
        seeds_b: (B,) int64 non-negative per-sample seeds.
        n: number of values per sample.
    Returns:
        (B, n) float32 on the seeds' device, multiples of 2**-24.
    """
    if seeds_b.dim() != 1:
        raise ValueError(f"seeds must be 1-D (B,), got shape {tuple(seeds_b.shape)}")
    seeds = seeds_b.to(torch.int64)
    base = _fmix32(_fmix32((seeds >> 32) & _U32) ^ (seeds & _U32))
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64)
    h = _fmix32(_fmix32(idx * 2 + 1) ^ base[:, None])
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens for a mask ratio (at least one, at most all but one)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, min(num_tokens, int(num_tokens * (1.0 - mask_ratio))))


def random_token_mask(noise_bl: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of noise: the tokens with the smallest noise stay visible.

    Args:
        noise_bl: (B, L) noise, e.g. from :func:`seeded_uniform`.
        mask_ratio: fraction of tokens to hide.
    Returns:
        ids_keep_bk: (B, K) indices of visible tokens, in ascending noise order.
        mask_bl: (B, L) bool, True where masked.
        ids_restore_bl: (B, L) inverse permutation: position of each token in [kept, masked] order.
    """
    b, length = noise_bl.shape
    k = num_kept(length, mask_ratio)
    ids_shuffle = torch.argsort(noise_bl, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :k]
    mask = torch.ones(b, length, dtype=torch.bool, device=noise_bl.device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask, ids_restore


def grid_shape(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Token grid of an image; every side must be a multiple of its patch side."""
    if len(spatial) != len(patch):
        raise ValueError(f"image has {len(spatial)} spatial dims but patch size has {len(patch)}: {tuple(patch)}")
    bad = [(s, p) for s, p in zip(spatial, patch) if s % p]
    if bad:
        raise ValueError(f"image size {tuple(spatial)} is not divisible by patch size {tuple(patch)}")
    return tuple(s // p for s, p in zip(spatial, patch))


def patchify(x_bcs: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """Split an image into flattened patches.

    Args:
        x_bcs: (B, C, *S) with 2 or 3 spatial dims.
        patch: patch side per spatial dim.
    Returns:
        (B, L, C * prod(patch)), tokens in raster order of the grid (like ``conv(x).flatten(2)``),
        values inside a patch in (C, *patch) order, i.e. the flattening order of a Conv weight.
    """
    b, c, *spatial = x_bcs.shape
    grid = grid_shape(spatial, patch)
    if len(spatial) == 2:
        (g1, g2), (p1, p2) = grid, patch
        x = x_bcs.reshape(b, c, g1, p1, g2, p2).permute(0, 2, 4, 1, 3, 5)
    elif len(spatial) == 3:
        (g1, g2, g3), (p1, p2, p3) = grid, patch
        x = x_bcs.reshape(b, c, g1, p1, g2, p2, g3, p3).permute(0, 2, 4, 6, 1, 3, 5, 7)
    else:
        raise ValueError(f"expected 2 or 3 spatial dims, got input shape {tuple(x_bcs.shape)}")
    return x.reshape(b, -1, c * _prod(patch))


def unpatchify(tokens_blp: torch.Tensor, patch: Sequence[int], grid: Sequence[int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, C * prod(patch)) -> (B, C, *grid * patch)."""
    b, length, p = tokens_blp.shape
    if length != _prod(grid) or p != channels * _prod(patch):
        raise ValueError(
            f"tokens of shape {tuple(tokens_blp.shape)} do not fit grid {tuple(grid)}, patch {tuple(patch)}, "
            f"{channels} channels"
        )
    if len(grid) == 2:
        (g1, g2), (p1, p2) = grid, patch
        x = tokens_blp.reshape(b, g1, g2, channels, p1, p2).permute(0, 3, 1, 4, 2, 5)
    else:
        (g1, g2, g3), (p1, p2, p3) = grid, patch
        x = tokens_blp.reshape(b, g1, g2, g3, channels, p1, p2, p3).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, *(g * q for g, q in zip(grid, patch)))


def token_mask_to_image(mask_bl: torch.Tensor, patch: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """(B, L) token mask -> (B, 1, *S) pixel mask (1.0 where masked)."""
    ones = mask_bl.to(torch.float32)[..., None].expand(-1, -1, _prod(patch))
    return unpatchify(ones, patch, grid, 1)


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


# ------------------------------------------------------------------------------ window / block masking


def block_mask(seeds_b: torch.Tensor, block_grid: Sequence[int], mask_ratio: float) -> torch.Tensor:
    """Random masking of whole blocks on a coarse grid, the same count in every sample.

    Vectorised over the batch: per-sample noise from :func:`seeded_uniform`, then one argsort
    (:func:`random_token_mask`) over the flattened block grid, so a sample's mask is a pure function of its seed.

    Args:
        seeds_b: (B,) int64 per-sample seeds.
        block_grid: number of blocks along each spatial axis.
        mask_ratio: fraction of blocks to hide; ``N - num_kept(N, mask_ratio)`` of the N blocks are masked.
    Returns:
        mask_bg: (B, *block_grid) bool, True where masked.
    """
    n = _prod(block_grid)
    if n < 2:
        raise ValueError(f"block grid {tuple(block_grid)} has {n} block(s); masking needs at least 2")
    _, mask_bn, _ = random_token_mask(seeded_uniform(seeds_b, n), mask_ratio)
    return mask_bn.reshape(-1, *block_grid)


def upsample_mask(mask_bg: torch.Tensor, factor: Sequence[int]) -> torch.Tensor:
    """Repeat each cell of a (B, *g) mask ``factor`` times along each axis -> (B, *(g * factor))."""
    out = mask_bg
    for axis, f in enumerate(factor, start=1):
        out = out.repeat_interleave(int(f), dim=axis)
    return out


def mask_to_grid(mask_bm: torch.Tensor, spatial: Sequence[int], unit: Sequence[int]) -> torch.Tensor:
    """A (B, *M) mask on a coarse grid over an image of size ``spatial`` -> (B, *(spatial / unit)), the mask of
    every ``unit``-sized cell (a patch, a feature voxel of stride ``unit``); each mask cell must cover whole units."""
    cell = [s // m for s, m in zip(spatial, mask_bm.shape[1:])]
    if len(cell) != len(unit) or any(s % m for s, m in zip(spatial, mask_bm.shape[1:])) or any(c % u for c, u in zip(cell, unit)):
        raise ValueError(f"a mask of shape {tuple(mask_bm.shape[1:])} over an image of {tuple(spatial)} does not cover "
                         f"whole units of {tuple(unit)}")
    factor = [c // u for c, u in zip(cell, unit)]
    return mask_bm if all(f == 1 for f in factor) else upsample_mask(mask_bm, factor)


def block_grid_shape(spatial: Sequence[int], block: Sequence[int], what: str = "image") -> tuple[int, ...]:
    """Blocks along each axis; every side must be a multiple of the block side."""
    if len(spatial) != len(block):
        raise ValueError(f"{what} has {len(spatial)} dims but the mask block has {len(block)}: {tuple(block)}")
    if any(b < 1 or s % b for s, b in zip(spatial, block)):
        raise ValueError(f"{what} size {tuple(spatial)} is not divisible by the mask block {tuple(block)}")
    return tuple(s // b for s, b in zip(spatial, block))


def window_mask(seeds_b: torch.Tensor, grid: Sequence[int], block: Sequence[int], mask_ratio: float) -> torch.Tensor:
    """VIS-MAE / Swin-MAE window masking on a token grid: groups of ``block`` adjacent tokens
    (4x4 patches of 4 px = 16x16 px by default) are masked together.

    Args:
        seeds_b: (B,) int64 per-sample seeds.
        grid: token grid (e.g. (56, 56) for 224 px and patch 4).
        block: tokens per mask block along each axis.
        mask_ratio: fraction of blocks (hence of tokens) to hide.
    Returns:
        mask_bg: (B, *grid) bool, True where masked; every block is either fully masked or fully visible.
    """
    blocks = block_grid_shape(grid, block, "token grid")
    return upsample_mask(block_mask(seeds_b, blocks, mask_ratio), block)
