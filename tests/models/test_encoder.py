"""The Encoder protocol: every registered family's encoder passes :func:`check_encoder`, and the check catches
an encoder that breaks the interface."""

import pytest
import torch

from medmae.config import ModelConfig
from medmae.models.encoder import Encoder, EncoderCheckError, check_encoder
from medmae.models.registry import FAMILIES, encoder_kwargs, family
from medmae.models.vit import ViT

# a small model config per registered family (a family added to the registry must add one here)
TINY = {
    "vit": [{"arch": "vit", "img_size": [32, 32], "patch_size": 8, "size": None, "embed_dim": 16, "depth": 2,
             "num_heads": 2},
            {"arch": "vit", "spatial_dims": 3, "img_size": [16, 16, 8], "patch_size": [8, 8, 4], "in_channels": 2,
             "size": None, "embed_dim": 16, "depth": 1, "num_heads": 2, "cls_token": False, "pos_embed": "learnable"}],
    "swin": [{"arch": "swin", "img_size": [32, 32], "patch_size": 4,
              "swin": {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}}],
    "resenc": [{"arch": "resenc", "spatial_dims": 3, "img_size": [16, 16, 16], "patch_size": 1,
                "resenc": {"widths": [4, 8], "blocks": [1, 1]}},
               {"arch": "resenc", "img_size": [32, 32], "patch_size": 2, "in_channels": 3,
                "resenc": {"widths": [4, 8, 8], "blocks": [1, 1, 2]}}],
}


def test_every_registered_family_has_a_tiny_config():
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("raw", [c for cs in TINY.values() for c in cs], ids=lambda c: f"{c['arch']}-{c['img_size']}")
def test_every_family_passes_the_encoder_check(raw):
    model_cfg = ModelConfig.model_validate(raw)
    fam = family(model_cfg.arch)
    kwargs = encoder_kwargs(model_cfg)
    torch.manual_seed(0)
    encoder = fam.build_encoder(kwargs, 0.0)
    assert isinstance(encoder, Encoder)
    check_encoder(encoder)
    torch.manual_seed(1)
    check_encoder(encoder, rebuild=lambda: fam.build_encoder(kwargs, 0.0))  # a fresh build takes the state dict


class Leaky(ViT):
    """A ViT whose masked encoding sees the masked pixels."""

    def forward_masked(self, x_bcs, mask_bm, fill=None):
        return self.feature_maps(x_bcs)


class WrongStride(ViT):
    @property
    def feature_strides(self):
        return ((2, 2),)


class NoMaskedPath(torch.nn.Module):
    spatial_dims, in_channels, img_size, patch_size = 2, 1, (8, 8), (4, 4)


@pytest.mark.parametrize("encoder,says", [
    (Leaky(2, (16, 16), (4, 4), embed_dim=8, depth=1, num_heads=2), "pixels under the mask change the output"),
    (WrongStride(2, (16, 16), (4, 4), embed_dim=8, depth=1, num_heads=2), r"feature_maps\[0\]: expected \(2, 8, 8, 8\) .*got \(2, 8, 4, 4\)"),
    (NoMaskedPath(), "lacks attributes or methods of the Encoder protocol"),
])
def test_the_check_names_what_is_broken(encoder, says):
    with pytest.raises(EncoderCheckError, match=says):
        check_encoder(encoder)


def test_masked_encoding_of_a_vit_puts_visible_tokens_on_the_grid():
    torch.manual_seed(0)
    enc = ViT(2, (16, 16), (4, 4), embed_dim=8, depth=1, num_heads=2).eval()
    x = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = mask[1, 3, 2:] = True
    out = enc.forward_masked(x, mask, fill=torch.full((8,), 7.0))[0]
    assert out.shape == (2, 8, 4, 4)
    assert bool((out[0, :, 0, :2] == 7.0).all()) and bool((out[1, :, 3, 2:] == 7.0).all())
    assert not bool((out[0, :, 1:] == 7.0).any())
    with pytest.raises(ValueError, match="every sample must mask as many patches"):
        enc.forward_masked(x, torch.stack([mask[0], torch.zeros(4, 4, dtype=torch.bool)]))
