"""Swin building blocks: window partition, shifted-window attention masks, window attention, Swin blocks."""

import itertools

import pytest
import torch

from medmae.models.swin_blocks import (
    MASKED,
    SwinBlock,
    WindowAttention,
    window_attention_mask,
    window_partition,
    window_reverse,
)


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
