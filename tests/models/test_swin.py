"""Swin encoder, shifted-window attention, Swin MAE and Swin-UNet."""

import itertools

import pytest
import torch

from mae_contract import assert_prediction_ignores_masked_pixels
from medmae.models.masking import patchify
from medmae.models.swin import (
    MASKED,
    SwinBlock,
    SwinEncoder,
    SwinMAE,
    SwinUNet,
    WindowAttention,
    swin_layer_id,
    window_attention_mask,
    window_partition,
    window_reverse,
)


def tiny_encoder(img=32, window=4, embed=16, depths=(2, 2), heads=(2, 4), **kw):
    return SwinEncoder(2, (img, img), (4, 4), in_channels=1, embed_dim=embed, depths=depths, num_heads=heads,
                       window_size=window, **kw)


def may_attend(a, b, h, w, window, shift):
    """Independent rule for shifted windows: tokens a, b (positions in the rolled map) attend to each other iff
    they share a window and were neighbours before the cyclic roll (no wrap-around between them)."""
    if (a[0] // window, a[1] // window) != (b[0] // window, b[1] // window):
        return False
    for axis, size in enumerate((h, w)):
        orig_a, orig_b = (a[axis] + shift) % size, (b[axis] + shift) % size
        if orig_a - orig_b != a[axis] - b[axis]:
            return False
    return True


def test_window_partition_roundtrip():
    x = torch.randn(2, 8, 12, 5)
    win = window_partition(x, 4)
    assert win.shape == (2 * 2 * 3, 16, 5)
    assert torch.equal(win[0].reshape(4, 4, 5), x[0, :4, :4])
    assert torch.equal(window_reverse(win, 4, 8, 12), x)


def test_shift_mask_blocks_tokens_from_different_regions():
    h = w = 8
    window, shift = 4, 2
    mask = window_attention_mask(h, w, window, shift, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, MASKED}
    positions = [(r, c) for r in range(h) for c in range(w)]
    tokens_of_window = window_partition(torch.tensor(positions).reshape(1, h, w, 2), window)  # (nW, N, 2)
    for wi in range(4):
        for i, j in itertools.product(range(16), repeat=2):
            a, b = tuple(tokens_of_window[wi, i].tolist()), tuple(tokens_of_window[wi, j].tolist())
            assert (mask[wi, i, j] == 0) == may_attend(a, b, h, w, window, shift), (wi, a, b)
    # the top-left window never wraps: nothing masked there; the bottom-right one mixes four regions
    assert bool((mask[0] == 0).all()) and int((mask[3] == 0).sum()) == 4 * 4 * 4
    assert window_attention_mask(8, 8, 4, 0, torch.device("cpu")) is None


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_preserves_shape_and_attends_within_its_windows(shift):
    torch.manual_seed(0)
    h = w = 8
    block = SwinBlock(dim=8, num_heads=2, window=4, shift=shift).eval()
    x = torch.randn(1, h, w, 8)
    y = block(x)
    assert y.shape == x.shape
    for p in [(0, 0), (3, 5), (7, 7), (6, 1)]:
        x2 = x.clone()
        x2[0, p[0], p[1]] += 3.0 * torch.randn(8)  # not a constant: LayerNorm would remove it
        changed = (block(x2) - y).abs().amax(-1)[0] > 1e-5
        # positions in the rolled frame, where windows are cut
        rp = ((p[0] - shift) % h, (p[1] - shift) % w)
        for q in itertools.product(range(h), range(w)):
            rq = ((q[0] - shift) % h, (q[1] - shift) % w)
            assert bool(changed[q]) == (q == p or may_attend(rq, rp, h, w, 4, shift)), (p, q)


def test_swin_block_pads_maps_that_do_not_tile_into_windows():
    torch.manual_seed(0)
    block = SwinBlock(dim=8, num_heads=2, window=4, shift=2).eval()
    x = torch.randn(2, 10, 6, 8)
    y = block(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    # a token's output ignores tokens outside its (padded, unshifted-frame) neighbourhood: far corners stay apart
    x2 = x.clone()
    x2[:, 9, 5] += 3.0 * torch.randn(8)
    out = block(x2)
    assert torch.allclose(out[:, 0, 0], y[:, 0, 0], atol=1e-6)
    assert not torch.allclose(out[:, 8, 4], y[:, 8, 4], atol=1e-5)  # a neighbour in its window does change


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


def test_mae_encoder_sees_mask_tokens_not_masked_pixels():
    torch.manual_seed(0)
    mae = SwinMAE(tiny_encoder(), mask_ratio=0.75, mask_block=(2, 2)).eval()
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


def test_mean_patch_baseline_is_the_variance_of_masked_patches():
    mae = SwinMAE(tiny_encoder(), mask_ratio=0.5, mask_block=(2, 2), norm_pix_loss=False)
    x = torch.randn(2, 1, 32, 32)
    seeds = torch.tensor([5, 6])
    mask = mae.mask(2, seeds, x.device).flatten(1)
    var = patchify(x, (4, 4)).var(-1, unbiased=False)
    torch.testing.assert_close(mae.mean_patch_baseline(x, seeds), var[mask].mean())


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


def test_window_attention_matches_explicit_softmax_with_bias_and_mask():
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, num_heads=2, window=4)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2 * 4, 16, 8)  # batch 2, 4 windows
    mask = window_attention_mask(8, 8, 4, 2, torch.device("cpu"))
    q, k, v = attn.qkv(x).reshape(8, 16, 3, 2, 4).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / 2.0 + attn.bias()[None] + mask.repeat(2, 1, 1)[:, None]
    ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(8, 16, 8))
    torch.testing.assert_close(attn(x, mask), ref, rtol=1e-5, atol=1e-5)
    # the bias table is indexed by relative offset: equal offsets share one entry
    bias = attn.bias()
    assert torch.equal(bias[:, 0, 5], bias[:, 10, 15]) and not torch.equal(bias[:, 0, 5], bias[:, 0, 6])
