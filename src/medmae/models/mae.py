"""ViT masked autoencoder (MAE) for 2D and 3D: encoder on visible tokens, light decoder, loss on masked patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.masking import (
    patchify,
    random_token_mask,
    seeded_uniform,
    token_mask_to_image,
    unpatchify,
)
from medmae.models.vit import Block, LayerNorm, ViT, _gather_tokens, init_transformer_weights, sincos_pos_embed


def normalize_patches(target_blp: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised target (MAE's ``norm_pix_loss``): zero mean, unit variance in each patch."""
    mean = target_blp.mean(dim=-1, keepdim=True)
    var = target_blp.var(dim=-1, keepdim=True, unbiased=False)
    return (target_blp - mean) / (var + eps).sqrt()


def masked_patch_loss(pred_blp: torch.Tensor, target_blp: torch.Tensor, mask_bl: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only; predictions on visible patches do not count."""
    per_patch = (pred_blp.float() - target_blp.float()).pow(2).mean(dim=-1)
    weight = mask_bl.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder (2D or 3D). ``forward(x, seeds)`` returns ``{"loss": ...}``.

    Masks come from per-sample seeds (:func:`seeded_uniform`), so a sample's mask does not depend on
    the batch it is in or on any global RNG. Decoder predictions are computed for masked tokens only.
    """

    def __init__(
        self,
        encoder: ViT,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        patch_values = encoder.in_channels * math.prod(encoder.patch_size)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(encoder.grid, decoder_embed_dim)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_values)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            m.apply(init_transformer_weights)

    def mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device):
        """Token masks for a batch; ``seeds_b`` None draws seeds from the global torch RNG."""
        if seeds_b is None:
            seeds_b = torch.randint(0, 2**62, (batch,))
        noise = seeded_uniform(seeds_b.to(device), self.encoder.num_tokens)
        return random_token_mask(noise, self.mask_ratio)

    def forward_decoder(
        self, latent_bkd: torch.Tensor, ids_restore_bl: torch.Tensor, ids_masked_bm: torch.Tensor | None
    ) -> torch.Tensor:
        """Decode; returns predictions (B, M, P) for the tokens in ``ids_masked_bm`` (all tokens if None)."""
        x = self.decoder_embed(latent_bkd)
        prefix = self.encoder.num_prefix_tokens
        b, length = ids_restore_bl.shape
        n_keep = x.shape[1] - prefix
        mask_tokens = self.mask_token.to(x.dtype).expand(b, length - n_keep, -1)
        patches = torch.cat([x[:, prefix:], mask_tokens], dim=1)
        patches = _gather_tokens(patches, ids_restore_bl) + self.decoder_pos_embed.to(x.dtype)
        x = torch.cat([x[:, :prefix], patches], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = x[:, prefix:]
        if ids_masked_bm is not None:
            x = _gather_tokens(x, ids_masked_bm)
        return self.decoder_pred(self.decoder_norm(x))

    def target(self, x_bcs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target per patch (B, L, P), normalised per patch when ``norm_pix_loss``."""
        t = patchify(x_bcs, self.encoder.patch_size)
        return normalize_patches(t) if self.norm_pix_loss else t

    def forward(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        ids_keep, mask_bl, ids_restore = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        latent, _ = self.encoder.forward_tokens(x_bcs, ids_keep)
        n_keep = ids_keep.shape[1]
        ids_masked = torch.argsort(ids_restore, dim=1)[:, n_keep:]
        pred = self.forward_decoder(latent, ids_restore, ids_masked)
        target = _gather_tokens(self.target(x_bcs), ids_masked)
        loss = F.mse_loss(pred.float(), target.float())
        return {"loss": loss}

    @torch.no_grad()
    def reconstruct(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction in image space (masked patches predicted, visible ones copied) and the pixel mask.

        With ``norm_pix_loss`` the prediction is un-normalised with each patch's own mean and std, as in
        MAE's visualisations (the model never sees those statistics for masked patches).

        Returns:
            recon_bcs (B, C, *S) and mask_b1s (B, 1, *S), 1.0 where masked.
        """
        ids_keep, mask_bl, ids_restore = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        latent, _ = self.encoder.forward_tokens(x_bcs, ids_keep)
        pred = self.forward_decoder(latent, ids_restore, None).float()
        patches = patchify(x_bcs.float(), self.encoder.patch_size)
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
            pred = pred * std + mean
        merged = torch.where(mask_bl[..., None], pred, patches)
        enc = self.encoder
        recon = unpatchify(merged, enc.patch_size, enc.grid, enc.in_channels)
        return recon, token_mask_to_image(mask_bl, enc.patch_size, enc.grid)

    @torch.no_grad()
    def mean_patch_baseline(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of predicting each masked patch by its own mean value (same masks and target space)."""
        _, mask_bl, _ = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        target = self.target(x_bcs.float())
        pred = target.mean(dim=-1, keepdim=True).expand_as(target)
        return masked_patch_loss(pred, target, mask_bl)
