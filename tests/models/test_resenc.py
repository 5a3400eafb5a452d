"""Residual-encoder U-Net: encoder/decoder shapes, dense and sparse (SparK) block masking, segmentation heads."""

import pytest
import torch

from mae_contract import assert_prediction_ignores_masked_pixels
from medmae.models.masking import patchify
from medmae.models.resenc import (
    ResEncDecoder,
    ResEncEncoder,
    ResEncMAE,
    ResEncUNet,
    deep_supervision_loss,
    resenc_layer_id,
    use_channels_last,
)


def tiny_encoder(dims=3, size=32, widths=(4, 8, 16), blocks=(1, 2, 1), **kw):
    return ResEncEncoder(dims, (size,) * dims, (1,) * dims, in_channels=1, widths=widths, blocks=blocks, **kw)


def test_encoder_stage_shapes_in_2d_and_3d():
    enc3 = tiny_encoder()
    feats = enc3.forward_features(torch.randn(2, 1, 32, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 32, 32, 32), (2, 8, 16, 16, 16), (2, 16, 8, 8, 8)]
    enc2 = tiny_encoder(dims=2, size=64)
    feats = enc2.forward_features(torch.randn(1, 1, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 4, 64, 64), (1, 8, 32, 32), (1, 16, 16, 16)]
    tokens, _ = enc2.forward_tokens(torch.randn(1, 1, 64, 64))
    assert tokens.shape == (1, 256, 16) and enc2.embed_dim == 16


def test_encoder_rejects_sizes_it_cannot_downsample():
    with pytest.raises(ValueError, match=r"\(34, 34, 34\).*total stride 4"):
        tiny_encoder(size=34)
    with pytest.raises(ValueError, match=r"\(B, 1, 3 spatial dims\).*\(1, 2, 32, 32, 32\)"):
        tiny_encoder()(torch.randn(1, 2, 32, 32, 32))


def test_resenc_l_size():
    """ResEnc-L (nnU-Net's 3D preset): residual encoder of ~90 M and decoder of ~18 M parameters (counted from the
    architecture; BasicBlockD with bias-free 1x1 shortcut projections, one residual block per decoder stage)."""
    enc = ResEncEncoder(3, (160,) * 3, (1,) * 3, widths=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6))
    dec = ResEncDecoder(enc)
    n_enc, n_dec = (sum(p.numel() for p in m.parameters()) for m in (enc, dec))
    assert 88e6 < n_enc < 93e6 and 16e6 < n_dec < 19e6
    # the last two stages (320 wide, 6 blocks each) hold most of it: 12 + 11 convs of 3^3 x 320 x 320
    conv = 27 * 320 * 320
    assert n_enc > 23 * conv


@pytest.mark.parametrize("sparse", [False, True])
def test_masked_voxels_cannot_influence_the_reconstruction(sparse):
    torch.manual_seed(0)
    mae = ResEncMAE(tiny_encoder(), mask_ratio=0.75, mask_block=(8, 8, 8) if not sparse else (16, 16, 16), sparse=sparse)
    mae.eval()
    assert_prediction_ignores_masked_pixels(mae, torch.randn(2, 1, 32, 32, 32), torch.tensor([7, 8]))


def test_sparse_masking_keeps_masked_regions_zero_through_every_encoder_stage():
    torch.manual_seed(0)
    enc = tiny_encoder()
    mae = ResEncMAE(enc, mask_ratio=0.5, mask_block=(16, 16, 16), sparse=True)
    outputs = []
    hooks = [stage.register_forward_hook(lambda m, i, o: outputs.append(o)) for stage in enc.stages]
    hooks.append(enc.stem.register_forward_hook(lambda m, i, o: outputs.append(o)))
    x = torch.randn(2, 1, 32, 32, 32) + 2.0
    seeds = torch.tensor([1, 2])
    mae(x, seeds)
    for h in hooks:
        h.remove()
    mask = mae.mask(2, seeds, x.device)  # (2, 2, 2, 2) blocks of 16^3
    assert 0 < int(mask.sum()) < mask.numel()
    # the stem hook sees the raw stem output (re-masked right after); stage outputs must already be zero
    *stage_outs, stem_out = outputs
    assert bool((stem_out != 0).all())
    for out, stride in zip(stage_outs, enc.strides):
        m = mask.repeat_interleave(16 // stride, 1).repeat_interleave(16 // stride, 2).repeat_interleave(16 // stride, 3)
        m = m[:, None].expand_as(out)
        assert bool((out[m] == 0).all()), f"stage at stride {stride} leaks into masked regions"
        assert float(out[~m].abs().mean()) > 0.01


def test_dense_masking_lets_features_spread_into_masked_regions():
    """The counterpart of the sparse test: without re-masking, masked regions fill with non-zero features."""
    torch.manual_seed(0)
    enc = tiny_encoder()
    mae = ResEncMAE(enc, mask_ratio=0.5, mask_block=(16, 16, 16), sparse=False)
    feats = enc.forward_features(torch.randn(2, 1, 32, 32, 32) * ~mae._mask_at(mae.mask(2, torch.tensor([1, 2]), "cpu"), 1))
    assert bool((feats[0] != 0).all())


def test_sparse_needs_blocks_that_cover_whole_bottleneck_voxels():
    with pytest.raises(ValueError, match=r"\(2, 2, 2\).*total stride 4"):
        ResEncMAE(tiny_encoder(), mask_block=(2, 2, 2), sparse=True)
    with pytest.raises(ValueError, match=r"\(32, 32, 32\).*\(12, 12, 12\)"):
        ResEncMAE(tiny_encoder(), mask_block=(12, 12, 12))


def test_loss_is_mse_on_masked_voxels_and_reconstruction_copies_visible_ones():
    torch.manual_seed(0)
    mae = ResEncMAE(tiny_encoder(dims=2, size=32), mask_ratio=0.75, mask_block=(8, 8))
    x = torch.randn(3, 1, 32, 32)
    seeds = torch.tensor([4, 5, 6])
    loss = mae(x, seeds)["loss"]
    mask = mae.mask(3, seeds, x.device)
    pred = mae.predict(x, mask)
    pix = mae._mask_at(mask, 1).expand_as(x)
    torch.testing.assert_close(loss, (pred - x).pow(2)[pix].mean())
    recon, pix_mask = mae.reconstruct(x, seeds)
    assert float(pix_mask.mean()) == pytest.approx(0.75)
    assert torch.equal(recon[pix_mask.expand_as(x) == 0], x[pix_mask.expand_as(x) == 0])
    baseline = mae.mean_patch_baseline(x, seeds)
    blocks, m = patchify(x, (8, 8)), mask.flatten(1)
    fill = torch.stack([blocks[i][~m[i]].mean() for i in range(3)])
    torch.testing.assert_close(baseline, (blocks - fill[:, None, None]).pow(2).mean(-1)[m].mean())


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    mae = ResEncMAE(tiny_encoder(), mask_block=(8, 8, 8))
    x, seeds = torch.randn(1, 1, 32, 32, 32), torch.tensor([3])
    ref = mae(x, seeds)["loss"]
    use_channels_last(mae)
    assert mae.encoder.stem.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(mae(x, seeds)["loss"], ref, rtol=1e-4, atol=1e-5)


def test_segmenter_deep_supervision_outputs_and_loss():
    torch.manual_seed(0)
    seg = ResEncUNet(tiny_encoder(), num_classes=3, deep_supervision=True)
    x = torch.randn(2, 1, 32, 32, 32)
    outs = seg(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 32, 32), (2, 3, 16, 16, 16)]
    seg.eval()
    assert seg(x).shape == (2, 3, 32, 32, 32)
    target = torch.randint(0, 3, (2, 1, 32, 32, 32))
    ce = lambda y, t: torch.nn.functional.cross_entropy(y, t[:, 0])  # noqa: E731
    small = torch.nn.functional.interpolate(target.float(), size=(16, 16, 16), mode="nearest").long()
    expected = (2 / 3) * ce(outs[0], target) + (1 / 3) * ce(outs[1], small)
    torch.testing.assert_close(deep_supervision_loss(ce, outs, target), expected)


def test_layer_ids():
    names = ["encoder.stem.conv.weight", "encoder.stages.0.0.conv1.conv.weight", "encoder.stages.2.0.skip.1.conv.weight",
             "decoder.ups.0.weight", "heads.0.weight"]
    assert [resenc_layer_id(n, 3) for n in names] == [0, 1, 3, 4, 4]
