"""Checks across config keys that each look fine alone, and the per-architecture view of ``model``.

Plain functions over values (no pydantic), called by the validators of the :mod:`medmae.config` sections. Each returns
its problems as ``"key.path: what is wrong"`` lines, the key relative to the section that calls it, so a
value that would crash a model constructor or the first batch is refused when the config is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# keys of the model section that only one family reads; the others are dropped from a run's config.yaml
ARCH_ONLY_KEYS: dict[str, frozenset[str]] = {
    "vit": frozenset({"size", "embed_dim", "depth", "num_heads", "pos_embed", "cls_token", "decoder"}),
    "swin": frozenset({"swin"}),
    "resenc": frozenset({"resenc"}),
}
# keys that a family reads besides its own (mlp_ratio / qkv_bias: ViT and Swin blocks)
SHARED_KEYS: dict[str, frozenset[str]] = {"vit": frozenset({"mlp_ratio", "qkv_bias"}),
                                          "swin": frozenset({"mlp_ratio", "qkv_bias"}), "resenc": frozenset()}


def heads_problem(key: str, width: int, heads: int, width_key: str) -> list[str]:
    """Attention splits the width evenly over the heads: ``width % heads`` must be 0."""
    if heads >= 1 and width % heads:
        return [f"{key}: {heads} heads do not divide {width_key}={width} (the width must be a multiple of the heads)"]
    return []


def vit_problems(embed_dim: int, num_heads: int, decoder_dim: int, decoder_heads: int) -> list[str]:
    """Encoder and MAE decoder widths vs their heads."""
    return (heads_problem("num_heads", embed_dim, num_heads, "embed_dim")
            + heads_problem("decoder.num_heads", decoder_dim, decoder_heads, "decoder.embed_dim"))


def swin_problems(embed_dim: int, num_heads: Sequence[int]) -> list[str]:
    """Swin stage ``i`` is ``embed_dim * 2**i`` wide; its heads must divide that."""
    out = []
    for i, heads in enumerate(num_heads):
        out += heads_problem(f"swin.num_heads[{i}]", embed_dim * 2**i, heads, f"swin.embed_dim * 2**{i}")
    return out


def data_model_problems(*, flip_axes: Sequence[int], spatial_dims: int, slice_axis: int | None,
                        resize: Sequence[int] | None, crop_scale: Sequence[float] | None) -> list[str]:
    """data.* keys that must agree with model.spatial_dims (flips, resize, slices, 2D crops)."""
    out = []
    bad = [a for a in flip_axes if not 0 <= a < spatial_dims]
    if bad:
        out.append(f"data.flip_axes: axes {bad} out of range for model.spatial_dims={spatial_dims} "
                   f"(spatial axes are 0..{spatial_dims - 1})")
    if len(set(flip_axes)) != len(flip_axes):
        out.append(f"data.flip_axes: {list(flip_axes)} names an axis twice")
    if slice_axis is not None and spatial_dims != 2:
        out.append(f"data.slice_axis: slices are for 2D models, but model.spatial_dims={spatial_dims}")
    if resize is not None:
        allowed = {3} if spatial_dims == 3 else ({2, 3} if slice_axis is not None else {2})
        if len(resize) not in allowed:
            out.append(f"data.resize: {list(resize)} has {len(resize)} values, model.spatial_dims={spatial_dims} "
                       f"needs {' or '.join(map(str, sorted(allowed)))}")
    if crop_scale is not None:
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            out.append(f"data.crop_scale: {list(crop_scale)} must be area fractions with 0 < low <= high <= 1")
        if spatial_dims != 2:
            out.append("data.crop_scale: random-resized crops are 2D only; 3D models take random crops of "
                       "model.img_size (set data.crop_scale: null)")
    return out


def eval_problems(*, test_fraction: float, val_fraction: float, folds: int | None, fold: int,
                  regions: Mapping[str, Sequence[int]] | None, mean_over: Sequence[str] | None) -> list[str]:
    """eval.* keys that must agree with each other."""
    out = []
    if test_fraction + val_fraction >= 1:
        out.append(f"val_fraction: test_fraction {test_fraction} + val_fraction {val_fraction} leave no training cases")
    if test_fraction == 0 and val_fraction > 0:
        out.append("val_fraction: a validation split is carved next to the held-out one; with test_fraction=0 "
                   "set val_fraction: 0")
    if folds is not None and fold >= folds:
        out.append(f"fold: fold {fold} does not exist with folds={folds} (0..{folds - 1})")
    if regions is not None and mean_over is not None:
        unknown = sorted(set(mean_over) - set(regions))
        if unknown:
            out.append(f"mean_over: {unknown} are not among eval.regions {sorted(regions)}")
    return out


def intensity_problems(lo: float, hi: float, percentiles: Sequence[float] | None) -> list[str]:
    """A CT window and minmax percentiles that are ranges."""
    out = []
    if lo >= hi:
        out.append(f"hi: the window [lo, hi] = [{lo}, {hi}] is empty (lo must be below hi)")
    if percentiles is not None and not 0 <= percentiles[0] < percentiles[1] <= 100:
        out.append(f"percentiles: {list(percentiles)} must satisfy 0 <= low < high <= 100")
    return out


def model_dump_for_arch(model: dict[str, Any], arch: str, *, keep_decoder: bool) -> dict[str, Any]:
    """The ``model`` mapping without the keys of other families (and without the MAE decoder when not pretraining)."""
    foreign = set().union(*(keys for name, keys in ARCH_ONLY_KEYS.items() if name != arch))
    foreign |= {"mlp_ratio", "qkv_bias"} - SHARED_KEYS.get(arch, frozenset())
    if not keep_decoder:
        foreign.add("decoder")
    return {k: v for k, v in model.items() if k not in foreign}
