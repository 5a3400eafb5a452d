"""What every masked autoencoder of medmae shares (ViT, Swin, ResEnc): the per-patch reconstruction target, the
loss on masked patches, the reconstruction in image space (un-normalised) and the mean-patch baseline.

A family's MAE subclasses :class:`MaskedAutoencoder` and provides the masks and the predictions; the "patch" of the
target is the encoder's patch (ViT, Swin) or the mask block (ResEnc, whose stem does not cut the image in patches).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from medmae.models.masking import patchify, token_mask_to_image, unpatchify


def normalize_patches(target_blp: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised target (MAE's ``norm_pix_loss``): zero mean, unit variance in each patch."""
    mean = target_blp.mean(dim=-1, keepdim=True)
    var = target_blp.var(dim=-1, keepdim=True, unbiased=False)
    return (target_blp - mean) / (var + eps).sqrt()


def unnormalize_patches(pred_blp: torch.Tensor, patches_blp: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Predictions of normalised patches back to image values with each patch's own mean and std, as in MAE's
    visualisations (the model never sees those statistics for masked patches)."""
    mean = patches_blp.mean(dim=-1, keepdim=True)
    std = (patches_blp.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    return pred_blp * std + mean


def masked_patch_loss(pred_blp: torch.Tensor, target_blp: torch.Tensor, mask_bl: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only; predictions on visible patches do not count."""
    per_patch = (pred_blp.float() - target_blp.float()).pow(2).mean(dim=-1)
    weight = mask_bl.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def standardize(x_bcs: torch.Tensor, visible_b1s: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit std per image and channel (statistics over the ``visible`` pixels when given)."""
    mean, std = visible_stats(x_bcs, visible_b1s, eps)
    return (x_bcs - mean) / std


def visible_stats(x_bcs: torch.Tensor, visible_b1s: torch.Tensor | None = None,
                  eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (B, C, 1, ...) per image and channel over the ``visible`` pixels (all when None).

    Why the Swin family standardises its input: its patch embedding is followed by a LayerNorm over each token's
    channels. With intensities in [0, 1] (``minmax``, ``xray_histeq``, ``ct_window``) every token is dominated by
    the same image-mean term, the LayerNorm maps all tokens to nearly the same vector and local contrast is washed
    out: Swin-UNet learned a constant background map and the Swin MAE no more than the image mean
    (``docs/howto/recipes.md``). A CNN stem followed by InstanceNorm removes that term per channel."""
    dims = tuple(range(2, x_bcs.dim()))
    w = torch.ones_like(x_bcs[:, :1]) if visible_b1s is None else visible_b1s.to(x_bcs.dtype)
    n = w.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x_bcs * w).sum(dim=dims, keepdim=True) / n
    var = ((x_bcs - mean).pow(2) * w).sum(dim=dims, keepdim=True) / n
    return mean, (var + eps).sqrt()


def draw_seeds(batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Per-sample mask seeds on ``device``; None draws them from the global torch RNG."""
    if seeds_b is None:
        seeds_b = torch.randint(0, 2**62, (batch,))
    return seeds_b.to(device)


class MaskedAutoencoder(nn.Module, ABC):
    """Base of the MAEs: ``forward(x, seeds) -> {"loss"}``, ``reconstruct(x, seeds) -> (recon, mask)`` and
    ``mean_patch_baseline(x, seeds)``, with attributes ``encoder`` and ``norm_pix_loss``.

    Subclasses implement :meth:`token_mask` and :meth:`predict_patches`, and override :attr:`target_patch` /
    :attr:`target_grid` when the loss's patch is not the encoder's. The default ``forward`` is the MSE of the
    full prediction on the masked patches (the ViT MAE overrides it: its decoder predicts masked tokens only).
    """

    encoder: nn.Module
    norm_pix_loss: bool
    standardize_input: bool = False  # loss, reconstruction and baseline on the image standardised over its visible pixels

    @property
    def target_patch(self) -> Sequence[int]:
        """Side of a target patch in pixels (voxels)."""
        return self.encoder.patch_size

    @property
    def target_grid(self) -> Sequence[int]:
        """Target patches along each axis."""
        return self.encoder.grid

    @abstractmethod
    def token_mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B, L) bool, True where masked, over the target patches in raster order (each family's masking)."""

    @abstractmethod
    def predict_patches(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions for every target patch (B, L, P) (normalised values with ``norm_pix_loss``) and the mask (B, L)."""

    def target(self, x_bcs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target per patch (B, L, P), normalised per patch when ``norm_pix_loss``."""
        t = patchify(x_bcs, self.target_patch)
        return normalize_patches(t) if self.norm_pix_loss else t

    def input_space(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, tuple | None]:
        """The image the loss is computed on, and (mean, std) to map back: with ``standardize_input`` standardised per
        image and channel over its visible pixels (the encoder sees the same), so no masked pixel leaks in."""
        if not self.standardize_input:
            return x_bcs, None
        mask_bl = self.token_mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        visible = 1.0 - token_mask_to_image(mask_bl, self.target_patch, self.target_grid)
        mean, std = visible_stats(x_bcs.float(), visible)
        return ((x_bcs - mean) / std).to(x_bcs.dtype), (mean, std)

    def forward(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x_bcs, _ = self.input_space(x_bcs, seeds_b)
        pred, mask_bl = self.predict_patches(x_bcs, seeds_b)
        return {"loss": masked_patch_loss(pred, self.target(x_bcs), mask_bl)}

    @torch.no_grad()
    def reconstruct(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction in image space (masked patches predicted, visible ones copied) and the pixel mask.

        With ``norm_pix_loss`` the prediction is un-normalised with each patch's own mean and std.

        Returns:
            recon_bcs (B, C, *S) and mask_b1s (B, 1, *S), 1.0 where masked.
        """
        xs, stats = self.input_space(x_bcs, seeds_b)
        pred, mask_bl = self.predict_patches(xs, seeds_b)
        pred = pred.float()
        patches = patchify(xs.float(), self.target_patch)
        if self.norm_pix_loss:
            pred = unnormalize_patches(pred, patches)
        merged = torch.where(mask_bl[..., None], pred, patches)
        patch, grid = self.target_patch, self.target_grid
        recon = unpatchify(merged, patch, grid, self.encoder.in_channels)
        if stats is not None:
            recon = recon * stats[1] + stats[0]
        return recon, token_mask_to_image(mask_bl, patch, grid)

    @torch.no_grad()
    def mean_patch_baseline(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of a prediction that learned nothing of the image's content: every masked patch filled with the mean
        of the image's visible target values, per channel (same masks and target space).

        Not each masked patch's own mean: that is an oracle the model never sees. With raw targets it hides
        everything a small target patch varies by (Swin's 4 px patches inside 16 px masked windows: a Swin MAE that
        reconstructs the anatomy still scored 4x "worse" than it), and with normalised targets it is the same
        as this baseline (zero, a loss of 1). See docs/howto/recipes.md."""
        xs, _ = self.input_space(x_bcs.float(), seeds_b)
        mask_bl = self.token_mask(xs.shape[0], seeds_b, xs.device)
        target = self.target(xs)
        b, n, _ = target.shape
        t = target.reshape(b, n, self.encoder.in_channels, -1)
        w = (~mask_bl).to(t.dtype)[:, :, None, None]
        fill_bc = (t * w).sum(dim=(1, 3)) / (w.sum(dim=(1, 2, 3)) * t.shape[-1]).clamp_min(1.0)[:, None]
        return masked_patch_loss(fill_bc[:, None, :, None].expand_as(t).reshape(b, n, -1), target, mask_bl)
