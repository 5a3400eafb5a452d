import math

import pytest
import torch

from medmae.models.vit import ViT, attention, sincos_pos_embed


def test_sincos_values_2d():
    dim = 16
    emb = sincos_pos_embed((3, 5), dim)
    assert emb.shape == (15, dim)
    # token 0 is at (0, 0): every sin is 0 and every cos is 1
    per_axis = dim // 4
    assert torch.allclose(emb[0], torch.tensor([0.0] * per_axis + [1.0] * per_axis + [0.0] * per_axis + [1.0] * per_axis))
    # token (row 2, col 1) = index 2 * 5 + 1; first frequency is 1: sin(2), cos(2), then sin(1), cos(1)
    e = emb[11]
    assert math.isclose(e[0].item(), math.sin(2.0), rel_tol=1e-6)
    assert math.isclose(e[per_axis].item(), math.cos(2.0), rel_tol=1e-6)
    assert math.isclose(e[2 * per_axis].item(), math.sin(1.0), rel_tol=1e-6)
    assert math.isclose(e[3 * per_axis].item(), math.cos(1.0), rel_tol=1e-6)
    # the second frequency is 1 / 10000 ** (1 / half)
    assert math.isclose(e[1].item(), math.sin(2.0 / 10000 ** (1 / per_axis)), rel_tol=1e-6)


def test_sincos_3d_pads_indivisible_dims_and_is_unique():
    emb = sincos_pos_embed((4, 3, 2), 512)  # 512 is not divisible by 6: 3 x 170 used, 2 zero channels
    assert emb.shape == (24, 512)
    assert torch.all(emb[:, 510:] == 0) and not torch.all(emb[:, 504:510] == 0)
    assert torch.unique(emb, dim=0).shape[0] == 24


@pytest.mark.parametrize("dims,img,patch", [(2, (32, 48), (16, 16)), (3, (32, 32, 16), (16, 16, 8))])
def test_vit_forward_and_visible_subset(dims, img, patch):
    torch.manual_seed(0)
    vit = ViT(dims, img, patch, in_channels=2, embed_dim=48, depth=2, num_heads=3)
    x = torch.randn(2, 2, *img)
    full, hidden = vit.forward_tokens(x, return_layers=[1])
    assert full.shape == (2, 1 + vit.num_tokens, 48) and len(hidden) == 1
    assert vit.tokens_to_map(full).shape == (2, 48, *vit.grid)
    # embedding a subset equals gathering the embedded full sequence
    ids = torch.tensor([[0, 3], [2, 1]])
    sub = vit.embed(x, ids)
    ref = vit.embed(x)
    torch.testing.assert_close(sub[:, 1:], torch.stack([ref[0, 1:][[0, 3]], ref[1, 1:][[2, 1]]]))


def test_vit_rejects_wrong_input_shape():
    vit = ViT(2, (32, 32), (16, 16), in_channels=1, embed_dim=24, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"C=1.*\(3, 32, 32\)"):
        vit(torch.zeros(1, 3, 32, 32))


def test_attention_uses_sdpa(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    vit = ViT(2, (32, 32), (16, 16), embed_dim=24, depth=2, num_heads=2)
    vit(torch.zeros(1, 1, 32, 32))
    assert len(calls) == 2 and calls[0] == (1, 2, 5, 12)


def test_cpu_attention_of_bf16_inputs_is_computed_in_fp32_under_autocast():
    """torch's CPU attention is 1.5-3.3x slower in bf16 than in fp32 (backward most): bf16 inputs are computed in
    fp32 and the output cast back, bitwise what fp32 attention of the same inputs gives; gradients flow in bf16."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert not torch.equal(low, ref), "autocast alone would compute it in bf16"
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
    x = torch.randn(2, 3, 17, 8, generator=g)
    assert torch.equal(attention(x, x, x), torch.nn.functional.scaled_dot_product_attention(x, x, x)), "fp32 as is"
