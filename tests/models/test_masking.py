import pytest
import torch

from medmae.models.masking import (
    grid_shape,
    num_kept,
    patchify,
    random_token_mask,
    seeded_uniform,
    token_mask_to_image,
    unpatchify,
)


@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), (8, 16)), ((2, 2, 16, 32, 48), (8, 16, 16))])
def test_patchify_roundtrip(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = grid_shape(shape[2:], patch)
    assert tokens.shape == (shape[0], torch.tensor(grid).prod().item(), shape[1] * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(tokens, patch, grid, shape[1]), x)


def test_patchify_matches_conv_flatten_order():
    """Token order is the raster order of a strided conv; values inside a patch follow the conv weight layout."""
    x = torch.randn(2, 3, 16, 24)
    conv = torch.nn.Conv2d(3, 5, kernel_size=8, stride=8)
    ref = conv(x).flatten(2).transpose(1, 2)
    ours = torch.nn.functional.linear(patchify(x, (8, 8)), conv.weight.flatten(1), conv.bias)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match=r"\(30, 32\).*\(8, 8\)"):
        patchify(torch.zeros(1, 1, 30, 32), (8, 8))


def test_seeded_uniform_is_a_pure_function_of_seed_and_index():
    seeds = torch.tensor([0, 1, 2**40 + 7, 5])
    a = seeded_uniform(seeds, 300)
    assert a.shape == (4, 300) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    # the same seed gives the same row regardless of its batch neighbours or position
    b = seeded_uniform(torch.tensor([5, 2**40 + 7]), 300)
    assert torch.equal(a[3], b[0]) and torch.equal(a[2], b[1])
    assert not torch.equal(a[0], a[1])
    # roughly uniform
    big = seeded_uniform(torch.arange(64), 1000)
    assert abs(float(big.mean()) - 0.5) < 0.01
    assert abs(float((big < 0.25).float().mean()) - 0.25) < 0.01


@pytest.mark.parametrize("length,ratio", [(196, 0.75), (216, 0.75), (64, 0.125), (10, 0.875)])
def test_random_mask_keeps_exact_count_per_sample(length, ratio):
    noise = seeded_uniform(torch.arange(8), length)
    ids_keep, mask, ids_restore = random_token_mask(noise, ratio)
    k = num_kept(length, ratio)
    assert ids_keep.shape == (8, k)
    assert (mask.sum(1) == length - k).all()
    # kept tokens are exactly the unmasked ones
    for b in range(8):
        assert set(ids_keep[b].tolist()) == set((~mask[b]).nonzero().flatten().tolist())
    # ids_restore inverts the shuffle
    shuffle = torch.argsort(noise, dim=1, stable=True)
    assert torch.equal(torch.gather(shuffle, 1, ids_restore), torch.arange(length).expand(8, -1))


def test_masks_differ_between_samples_and_reproduce_from_seed():
    m1 = random_token_mask(seeded_uniform(torch.arange(16), 196), 0.75)[1]
    m2 = random_token_mask(seeded_uniform(torch.arange(16), 196), 0.75)[1]
    assert torch.equal(m1, m2)
    assert len({tuple(r.tolist()) for r in m1}) == 16


def test_mask_ratio_out_of_range():
    with pytest.raises(ValueError, match="mask_ratio"):
        num_kept(10, 1.0)


def test_token_mask_to_image_marks_whole_patches():
    mask = torch.zeros(1, 4, dtype=torch.bool)
    mask[0, 1] = True
    img = token_mask_to_image(mask, (4, 4), (2, 2))
    assert img.shape == (1, 1, 8, 8)
    assert img[0, 0, :4, 4:].eq(1).all() and img.sum() == 16
