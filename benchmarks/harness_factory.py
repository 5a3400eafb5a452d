"""Factory for the shared CPU benchmark harness (``mae_step_bench.py --impl custom:harness_factory:medmae_mae``)."""

from __future__ import annotations

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.vit import ViT


class _LossOnly(MaskedAutoencoderViT):
    """The harness calls ``model(x)`` and back-propagates the returned loss."""

    def forward(self, x, seeds=None):  # noqa: D401
        return super().forward(x, seeds)["loss"]


def medmae_mae(*, spatial_dims, img_size, patch_size, in_chans, embed_dim, depth, num_heads, decoder_embed_dim,
               decoder_depth, decoder_num_heads, mlp_ratio, mask_ratio, norm_pix_loss=True, **_ignored):
    encoder = ViT(spatial_dims, (img_size,) * spatial_dims, (patch_size,) * spatial_dims, in_chans, embed_dim, depth,
                  num_heads, mlp_ratio)
    return _LossOnly(encoder, decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, mask_ratio, norm_pix_loss)
