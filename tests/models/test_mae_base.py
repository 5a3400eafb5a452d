"""What the MAEs share: the un-normalised reconstruction and the mean-patch baseline, written once."""

import torch

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.mae_base import MaskedAutoencoder, masked_patch_loss, normalize_patches, unnormalize_patches
from medmae.models.resenc import ResEncMAE
from medmae.models.swin import SwinMAE


def test_unnormalize_inverts_normalize():
    patches = torch.randn(2, 5, 12) * 3 + 1
    torch.testing.assert_close(unnormalize_patches(normalize_patches(patches), patches), patches, rtol=1e-5, atol=1e-5)


def test_the_families_share_reconstruction_and_baseline():
    for cls in (MaskedAutoencoderViT, SwinMAE, ResEncMAE):
        assert issubclass(cls, MaskedAutoencoder)
        assert cls.reconstruct is MaskedAutoencoder.reconstruct
        assert cls.mean_patch_baseline is MaskedAutoencoder.mean_patch_baseline


def test_masked_patch_loss_counts_masked_patches_only():
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    assert float(masked_patch_loss(pred, target, torch.tensor([[True, False, True]]))) == (1 + 9) / 2
