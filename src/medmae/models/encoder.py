"""The backbone interface every encoder family implements, and the self-test a new family must pass.

An encoder is used three ways (SparK's lesson: a backbone that states what it returns can be pretrained and
decoded by code that does not know its family):

- **classification** — :meth:`Encoder.forward_tokens`: final tokens ``(B, num_prefix_tokens + L, embed_dim)``;
  a head pools them (the class token, or the mean of the ``L`` patch tokens);
- **dense decoders** — :meth:`Encoder.feature_maps`: one channels-first map per level ``(B, C_i, *S / s_i)``,
  shallow to deep, with ``C_i = feature_channels[i]`` and ``s_i = feature_strides[i]`` (pixels per feature voxel,
  per axis);
- **masked pretraining** — :meth:`Encoder.forward_masked`: the same maps computed with the masked patches hidden:
  no pixel under the mask reaches the output. ``mask`` is ``(B, *M)`` bool (True = masked) on any grid whose
  cells cover whole patches; ``fill`` is the family's mask token(s) for masked positions (zeros when None).

:func:`check_encoder` checks all of it on an instance (run over every registered family in
``tests/models/test_encoder.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from medmae.models.masking import block_mask, mask_to_grid


@runtime_checkable
class Encoder(Protocol):
    """What medmae's heads, MAEs and adaptation code may rely on (attributes, then the three methods)."""

    spatial_dims: int  # 2 or 3
    in_channels: int
    img_size: tuple[int, ...]  # the input size it was built for
    patch_size: tuple[int, ...]  # stride of the stem: the smallest unit a mask can hide
    embed_dim: int  # width of forward_tokens (what a classifier pools)
    num_prefix_tokens: int  # class / register tokens before the L patch tokens (0: none)
    depth: int  # layers for layer-wise learning-rate decay
    feature_channels: tuple[int, ...]
    feature_strides: tuple[tuple[int, ...], ...]

    def forward_tokens(self, x_bcs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Classification: final (normalised) tokens (B, num_prefix_tokens + L, embed_dim), and the family's
        intermediate outputs (may be empty)."""
        ...

    def feature_maps(self, x_bcs: torch.Tensor) -> list[torch.Tensor]:
        """Dense decoders: [(B, feature_channels[i], *S / feature_strides[i]) for each level], shallow to deep."""
        ...

    def forward_masked(self, x_bcs: torch.Tensor, mask_bm: torch.Tensor,
                       fill: torch.Tensor | Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Masked pretraining: the maps of :meth:`feature_maps` computed from the visible patches only."""
        ...


class EncoderCheckError(AssertionError):
    """An encoder that does not keep the :class:`Encoder` interface; the message says which part."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise EncoderCheckError(what)


def check_encoder(encoder: nn.Module, *, rebuild: Callable[[], nn.Module] | None = None, batch: int = 2,
                  seed: int = 0) -> None:
    """Self-test of the :class:`Encoder` interface; raises :class:`EncoderCheckError` naming what fails.

    Checks the attributes, the shapes of the three methods (tokens, feature maps at their strides and channels,
    masked maps), that masked pixels never reach :meth:`~Encoder.forward_masked`'s output while visible ones do,
    determinism in eval mode, a finite gradient for every trainable parameter, and a state-dict round trip into
    ``rebuild()`` (another instance of the same arguments; default: a copy with every tensor perturbed).
    The encoder is left in eval mode.
    """
    _expect(isinstance(encoder, Encoder), f"{type(encoder).__name__} lacks attributes or methods of the Encoder "
            f"protocol: {[n for n in _MEMBERS if not hasattr(encoder, n)]}")
    nd = encoder.spatial_dims
    _expect(nd in (2, 3), f"spatial_dims must be 2 or 3, got {nd}")
    _expect(len(encoder.img_size) == nd and len(encoder.patch_size) == nd,
            f"img_size {encoder.img_size} and patch_size {encoder.patch_size} need {nd} values")
    levels = len(encoder.feature_channels)
    _expect(levels >= 1 and len(encoder.feature_strides) == levels,
            f"feature_channels {encoder.feature_channels} and feature_strides {encoder.feature_strides} differ in length")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, encoder.in_channels, *encoder.img_size, generator=g)
    encoder.eval()
    with torch.no_grad():
        tokens, _ = encoder.forward_tokens(x)
        _check_tokens(encoder, tokens, batch)
        maps = encoder.feature_maps(x)
        _check_maps(encoder, maps, batch, "feature_maps")
        _expect(torch.equal(encoder.forward_tokens(x)[0], tokens) and
                all(torch.equal(a, b) for a, b in zip(encoder.feature_maps(x), maps)), "outputs differ between two "
                "calls in eval mode")
        _check_masked(encoder, x, seed)
    _check_gradients(encoder, x)
    _check_round_trip(encoder, x, rebuild)
    encoder.eval()


_MEMBERS = ("spatial_dims", "in_channels", "img_size", "patch_size", "embed_dim", "num_prefix_tokens", "depth",
            "feature_channels", "feature_strides", "forward_tokens", "feature_maps", "forward_masked")


def _check_tokens(encoder: Encoder, tokens: torch.Tensor, batch: int) -> None:
    _expect(tokens.dim() == 3 and tokens.shape[0] == batch and tokens.shape[2] == encoder.embed_dim,
            f"forward_tokens: expected (B={batch}, prefix + L, embed_dim={encoder.embed_dim}), got {tuple(tokens.shape)}")
    _expect(tokens.shape[1] > encoder.num_prefix_tokens, f"forward_tokens: no patch tokens after the "
            f"{encoder.num_prefix_tokens} prefix tokens")


def _check_maps(encoder: Encoder, maps: Sequence[torch.Tensor], batch: int, what: str) -> None:
    _expect(len(maps) == len(encoder.feature_channels),
            f"{what}: {len(maps)} maps for {len(encoder.feature_channels)} levels of feature_channels")
    for i, (m, c, s) in enumerate(zip(maps, encoder.feature_channels, encoder.feature_strides)):
        want = (batch, c, *(n // st for n, st in zip(encoder.img_size, s)))
        _expect(tuple(m.shape) == want, f"{what}[{i}]: expected {want} (channels {c}, stride {tuple(s)}), "
                f"got {tuple(m.shape)}")


def _check_masked(encoder: Encoder, x: torch.Tensor, seed: int) -> None:
    """Half of the cells of the deepest stride masked: shifting masked pixels changes nothing, visible ones do."""
    coarse = tuple(n // s for n, s in zip(encoder.img_size, encoder.feature_strides[-1]))
    mask = block_mask(torch.arange(seed, seed + x.shape[0]), coarse, 0.5)
    out = encoder.forward_masked(x, mask)
    _check_maps(encoder, out, x.shape[0], "forward_masked")
    pixels = mask_to_grid(mask, x.shape[2:], (1,) * encoder.spatial_dims)[:, None]
    hidden = encoder.forward_masked(torch.where(pixels, x + 3.0, x), mask)
    _expect(all(torch.equal(a, b) for a, b in zip(hidden, out)), "forward_masked: pixels under the mask change the output")
    seen = encoder.forward_masked(torch.where(pixels, x, x + 3.0), mask)
    _expect(not all(torch.equal(a, b) for a, b in zip(seen, out)), "forward_masked: visible pixels do not change the output")


def _check_gradients(encoder: nn.Module, x: torch.Tensor) -> None:
    encoder.train()
    encoder.zero_grad(set_to_none=True)
    tokens, _ = encoder.forward_tokens(x)
    loss = tokens.float().pow(2).mean() + sum(m.float().pow(2).mean() for m in encoder.feature_maps(x))
    loss.backward()
    params = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    none = [n for n, p in params if p.grad is None]
    _expect(not none, f"no gradient reaches {none[:6]}")
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    _expect(not bad, f"non-finite gradients in {bad[:6]}")
    _expect(any(bool(p.grad.abs().sum() > 0) for _, p in params), "every gradient is zero")
    encoder.zero_grad(set_to_none=True)


def _check_round_trip(encoder: nn.Module, x: torch.Tensor, rebuild: Callable[[], nn.Module] | None) -> None:
    if rebuild is not None:
        other = rebuild()
    else:
        other = copy.deepcopy(encoder)
        with torch.no_grad():
            for t in [*other.parameters(), *other.buffers()]:
                if t.is_floating_point():
                    t.add_(0.5)
    state = encoder.state_dict()
    _expect(set(other.state_dict()) == set(state), "a rebuilt encoder has other state-dict keys: "
            f"{sorted(set(other.state_dict()) ^ set(state))[:6]}")
    other.load_state_dict(state, strict=True)
    encoder.eval()
    other.eval()
    with torch.no_grad():
        _expect(torch.equal(other.forward_tokens(x)[0], encoder.forward_tokens(x)[0]),
                "outputs differ after loading the state dict into another instance")
