"""What every masked autoencoder of medmae shares (ViT, Swin, ResEnc): the per-patch reconstruction target, the
loss on masked patches, the reconstruction in image space (un-normalised) and the mean-patch baseline.

A family's MAE subclasses :class:`MaskedAutoencoder` and provides the masks and the predictions; the "patch" of the
target is the encoder's patch (ViT, Swin) or the mask block (ResEnc, whose stem does not cut the image in patches).
"""

from __future__ import annotations

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


def draw_seeds(batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Per-sample mask seeds on ``device``; None draws them from the global torch RNG."""
    if seeds_b is None:
        seeds_b = torch.randint(0, 2**62, (batch,))
    return seeds_b.to(device)


class MaskedAutoencoder(nn.Module):
    """Base of the MAEs: ``forward(x, seeds) -> {"loss"}``, ``reconstruct(x, seeds) -> (recon, mask)`` and
    ``mean_patch_baseline(x, seeds)``, with attributes ``encoder`` and ``norm_pix_loss``.

    Subclasses implement :meth:`token_mask` and :meth:`predict_patches`, and override :attr:`target_patch` /
    :attr:`target_grid` when the loss's patch is not the encoder's. The default ``forward`` is the MSE of the
    full prediction on the masked patches (the ViT MAE overrides it: its decoder predicts masked tokens only).
    """

    encoder: nn.Module
    norm_pix_loss: bool

    @property
    def target_patch(self) -> Sequence[int]:
        """Side of a target patch in pixels (voxels)."""
        return self.encoder.patch_size

    @property
    def target_grid(self) -> Sequence[int]:
        """Target patches along each axis."""
        return self.encoder.grid

    def token_mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B, L) bool, True where masked, over the target patches in raster order."""
        raise NotImplementedError

    def predict_patches(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions for every target patch (B, L, P) (normalised values with ``norm_pix_loss``) and the mask (B, L)."""
        raise NotImplementedError

    def target(self, x_bcs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target per patch (B, L, P), normalised per patch when ``norm_pix_loss``."""
        t = patchify(x_bcs, self.target_patch)
        return normalize_patches(t) if self.norm_pix_loss else t

    def forward(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred, mask_bl = self.predict_patches(x_bcs, seeds_b)
        return {"loss": masked_patch_loss(pred, self.target(x_bcs), mask_bl)}

    @torch.no_grad()
    def reconstruct(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction in image space (masked patches predicted, visible ones copied) and the pixel mask.

        With ``norm_pix_loss`` the prediction is un-normalised with each patch's own mean and std.

        Returns:
            recon_bcs (B, C, *S) and mask_b1s (B, 1, *S), 1.0 where masked.
        """
        pred, mask_bl = self.predict_patches(x_bcs, seeds_b)
        pred = pred.float()
        patches = patchify(x_bcs.float(), self.target_patch)
        if self.norm_pix_loss:
            pred = unnormalize_patches(pred, patches)
        merged = torch.where(mask_bl[..., None], pred, patches)
        patch, grid = self.target_patch, self.target_grid
        return unpatchify(merged, patch, grid, self.encoder.in_channels), token_mask_to_image(mask_bl, patch, grid)

    @torch.no_grad()
    def mean_patch_baseline(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of predicting each masked patch by its own mean value (same masks and target space)."""
        mask_bl = self.token_mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        target = self.target(x_bcs.float())
        return masked_patch_loss(target.mean(dim=-1, keepdim=True).expand_as(target), target, mask_bl)
