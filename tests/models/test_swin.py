"""Swin encoder, Swin MAE and Swin-UNet (the blocks: test_swin_blocks.py)."""

import pytest
import torch

from mae_contract import assert_prediction_ignores_masked_pixels
from medmae.models.masking import patchify
from medmae.models.swin import SwinEncoder, SwinMAE, SwinUNet, swin_layer_id


def tiny_encoder(img=32, window=4, embed=16, depths=(2, 2), heads=(2, 4), **kw):
    return SwinEncoder(2, (img, img), (4, 4), in_channels=1, embed_dim=embed, depths=depths, num_heads=heads,
                       window_size=window, **kw)


def test_encoder_stage_shapes_and_swin_t_size():
    enc = SwinEncoder(2, (224, 224), (4, 4), in_channels=3, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                      window_size=7)
    # timm's swin_tiny_patch4_window7_224 has 28.29 M parameters including a 1000-class head (768 * 1000 + 1000)
    assert abs(sum(p.numel() for p in enc.parameters()) - (28_288_354 - 769_000)) < 5_000
    enc = tiny_encoder(img=64, depths=(1, 1, 1), heads=(1, 2, 4))
    feats = enc.forward_features(torch.randn(2, 1, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]
    tokens, _ = enc.forward_tokens(torch.randn(2, 1, 64, 64))
    assert tokens.shape == (2, 16, 64) and enc.embed_dim == 64


def test_encoder_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"divisible by \[16, 16\]"):
        tiny_encoder(img=40, depths=(1, 1, 1), heads=(1, 1, 1))
    enc = tiny_encoder()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 3, 32, 32\)"):
        enc(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("input_norm", [False, True])
def test_mae_encoder_sees_mask_tokens_not_masked_pixels(input_norm):
    """Also not through the input standardisation's statistics (computed over visible pixels only)."""
    torch.manual_seed(0)
    mae = SwinMAE(tiny_encoder(input_norm=input_norm), mask_ratio=0.75, mask_block=(2, 2)).eval()
    assert_prediction_ignores_masked_pixels(mae, torch.randn(2, 1, 32, 32), torch.tensor([3, 4]), shift=5.0)


def test_mae_loss_is_mse_on_masked_patches_and_reconstruction_copies_visible_pixels():
    torch.manual_seed(0)
    mae = SwinMAE(tiny_encoder(), mask_ratio=0.75, mask_block=(2, 2), norm_pix_loss=False)
    x = torch.randn(3, 1, 32, 32)
    seeds = torch.tensor([1, 2, 3])
    loss = mae(x, seeds)["loss"]
    mask = mae.mask(3, seeds, x.device).flatten(1)
    pred = mae.predict(x, mae.mask(3, seeds, x.device))
    per_patch = (pred - patchify(x, (4, 4))).pow(2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask].mean())
    recon, pix = mae.reconstruct(x, seeds)
    assert float(pix.mean()) == pytest.approx(0.75)
    assert torch.equal(recon[pix == 0], x[pix == 0])
    assert not torch.allclose(recon[pix == 1], x[pix == 1])
    loss.backward()
    assert mae.mask_token.grad is not None and float(mae.mask_token.grad.abs().sum()) > 0


def test_mean_patch_baseline_fills_masked_patches_with_the_visible_mean():
    mae = SwinMAE(tiny_encoder(), mask_ratio=0.5, mask_block=(2, 2), norm_pix_loss=False)
    x = torch.randn(2, 1, 32, 32)
    seeds = torch.tensor([5, 6])
    mask = mae.mask(2, seeds, x.device).flatten(1)
    patches = patchify(x, (4, 4))
    fill = torch.stack([patches[i][~mask[i]].mean() for i in range(2)])
    want = (patches - fill[:, None, None]).pow(2).mean(-1)[mask].mean()
    torch.testing.assert_close(mae.mean_patch_baseline(x, seeds), want)
    oracle = patches.var(-1, unbiased=False)[mask].mean()
    assert float(mae.mean_patch_baseline(x, seeds)) > float(oracle), "not the oracle of each masked patch's own mean"


def test_mae_runs_under_bf16_autocast():
    mae = SwinMAE(tiny_encoder(), mask_block=(2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mae(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))["loss"]
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))


def test_swin_unet_outputs_full_resolution_logits_and_uses_the_skips():
    torch.manual_seed(0)
    enc = tiny_encoder()
    seg = SwinUNet(enc, num_classes=3).eval()
    x = torch.randn(2, 1, 32, 32)
    y = seg(x)
    assert y.shape == (2, 3, 32, 32)
    # the skip from stage 0 carries fine detail: zeroing its projection changes the output
    with torch.no_grad():
        seg.decoder.concat[-1].weight[:, 16:] = 0
    assert not torch.allclose(seg(x), y)


def test_layer_ids_increase_with_depth():
    depths = (2, 3)
    names = ["encoder.patch_embed.proj.weight", "encoder.layers.0.blocks.0.attn.qkv.weight",
             "encoder.layers.0.blocks.1.mlp.fc1.weight", "encoder.layers.0.downsample.reduction.weight",
             "encoder.layers.1.blocks.2.norm1.weight", "encoder.norm.weight", "head.weight"]
    assert [swin_layer_id(n, depths) for n in names] == [0, 1, 2, 2, 5, 6, 6]
