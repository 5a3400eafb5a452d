"""ViT masked autoencoder (MAE) for 2D and 3D: encoder on visible tokens, light decoder, loss on masked patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.mae_base import MaskedAutoencoder, draw_seeds
from medmae.models.masking import random_token_mask, seeded_uniform
from medmae.models.vit import Block, LayerNorm, ViT, _gather_tokens, init_transformer_weights, sincos_pos_embed


class MaskedAutoencoderViT(MaskedAutoencoder):
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
        """Token masks for a batch (ids_keep, mask_bl, ids_restore); ``seeds_b`` None draws seeds from the global
        torch RNG."""
        noise = seeded_uniform(draw_seeds(batch, seeds_b, device), self.encoder.num_tokens)
        return random_token_mask(noise, self.mask_ratio)

    def token_mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return self.mask(batch, seeds_b, device)[1]

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
        *body, last = self.decoder_blocks
        for block in body:
            x = block(x)
        if ids_masked_bm is None:
            x = last(x)[:, prefix:]
        else:  # the last block at the masked tokens only: none of its other outputs is used
            x = last(x, ids_masked_bm + prefix)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        ids_keep, mask_bl, ids_restore = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        latent, _ = self.encoder.forward_tokens(x_bcs, ids_keep)
        n_keep = ids_keep.shape[1]
        ids_masked = torch.argsort(ids_restore, dim=1)[:, n_keep:]
        pred = self.forward_decoder(latent, ids_restore, ids_masked)
        target = _gather_tokens(self.target(x_bcs), ids_masked)
        loss = F.mse_loss(pred.float(), target.float())
        return {"loss": loss}

    def predict_patches(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder predictions for every token (visible ones included) and the token mask."""
        ids_keep, mask_bl, ids_restore = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        latent, _ = self.encoder.forward_tokens(x_bcs, ids_keep)
        return self.forward_decoder(latent, ids_restore, None), mask_bl
