"""Window / block masking (VIS-MAE, nnssl): exact counts, block alignment, per-sample seeds, batch vectorisation."""

import pytest
import torch

from medmae.models.masking import block_grid_shape, block_mask, num_kept, upsample_mask, window_mask

GRID, BLOCK = (56, 56), (4, 4)  # 224 px with 4 px patches, 16 px windows: a 14 x 14 block grid


def test_window_mask_masks_an_exact_number_of_blocks_in_every_sample():
    seeds = torch.arange(64)
    mask = window_mask(seeds, GRID, BLOCK, 0.75)
    assert mask.shape == (64, *GRID) and mask.dtype == torch.bool
    n_blocks = 14 * 14
    masked_blocks = n_blocks - num_kept(n_blocks, 0.75)  # 196 - 49 = 147
    assert masked_blocks == 147
    assert mask.flatten(1).sum(1).tolist() == [masked_blocks * 16] * 64


@pytest.mark.parametrize("ratio", [0.4, 0.6, 0.75])
def test_block_mask_count_in_3d(ratio):
    mask = block_mask(torch.arange(5), (4, 5, 3), ratio)
    assert mask.shape == (5, 4, 5, 3)
    assert set(mask.flatten(1).sum(1).tolist()) == {60 - num_kept(60, ratio)}


def test_every_block_is_fully_masked_or_fully_visible():
    mask = window_mask(torch.arange(16), GRID, BLOCK, 0.75)
    blocks = mask.reshape(16, 14, 4, 14, 4).permute(0, 1, 3, 2, 4).reshape(16, 14, 14, 16)
    per_block = blocks.sum(-1)
    assert bool(((per_block == 0) | (per_block == 16)).all())
    # and blocks are where the 4x4 grid says: shifting the grid by 2 tokens would split blocks
    shifted = mask[:, 2:-2, 2:-2].reshape(16, 13, 4, 13, 4).permute(0, 1, 3, 2, 4).reshape(16, 13, 13, 16).sum(-1)
    assert bool(((shifted > 0) & (shifted < 16)).any())


def test_mask_is_a_function_of_the_sample_seed_only():
    a = window_mask(torch.tensor([11, 12, 13, 2**40 + 3]), GRID, BLOCK, 0.75)
    b = window_mask(torch.tensor([2**40 + 3, 99, 11]), GRID, BLOCK, 0.75)
    assert torch.equal(a[0], b[2]) and torch.equal(a[3], b[0])
    again = window_mask(torch.tensor([11, 12, 13, 2**40 + 3]), GRID, BLOCK, 0.75)
    assert torch.equal(a, again)


def test_masks_differ_across_samples():
    mask = window_mask(torch.arange(64), GRID, BLOCK, 0.75).flatten(1)
    distinct = {tuple(row.nonzero().flatten().tolist()) for row in mask}
    assert len(distinct) == 64
    # every block gets masked by some sample: the noise is not biased to one corner
    assert bool(mask.any(0).all())


def test_a_batch_is_masked_in_one_call_without_per_sample_host_work():
    """The whole batch goes through tensor ops only: on the ``meta`` device (shapes, no data) any per-sample
    loop that reads values (``.item()``, NumPy, ``setdiff1d`` as in VIS-MAE's original) would fail."""
    seeds = torch.arange(64, device="meta")
    mask = window_mask(seeds, GRID, BLOCK, 0.75)
    assert mask.device.type == "meta" and mask.shape == (64, *GRID)
    assert block_mask(seeds, (10, 10, 10), 0.75).shape == (64, 10, 10, 10)


def test_upsample_mask_repeats_each_cell():
    small = torch.tensor([[[True, False], [False, True]]])
    big = upsample_mask(small, (2, 3))
    expected = torch.tensor([[[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(big, expected)


def test_bad_grids_are_rejected_with_the_numbers():
    with pytest.raises(ValueError, match=r"\(54, 56\).*\(4, 4\)"):
        window_mask(torch.arange(2), (54, 56), BLOCK, 0.75)
    with pytest.raises(ValueError, match="2 dims.*3"):
        block_grid_shape((16, 16), (4, 4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        block_mask(torch.arange(2), (1, 1), 0.5)
