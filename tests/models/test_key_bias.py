"""The key part of every attention's ``qkv.bias`` gets an exactly zero gradient.

Softmax over the keys ignores ``q . b_k`` (the same for every key of a query), so that gradient is zero in exact
arithmetic; computed, it is rounding noise that Adam turns into steps of about the learning rate, different for
1 and N processes. It must be exactly zero in every attention of medmae, and the forward pass unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.swin import SwinEncoder, SwinMAE
from medmae.models.swin_blocks import WindowAttention
from medmae.models.vit import Attention, ViT


def qkv_biases(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    found = {n: p for n, p in model.named_parameters() if n.endswith("qkv.bias")}
    assert found, "no attention found: this check would be vacuous"
    return found


def assert_key_bias_gradients_are_exactly_zero(model: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    for name, bias in qkv_biases(model).items():
        d = bias.numel() // 3
        assert torch.equal(bias.grad[d : 2 * d], torch.zeros(d)), f"{name}: key bias gradient is not exactly zero"
        assert bias.grad[:d].abs().sum() > 0 and bias.grad[2 * d :].abs().sum() > 0, f"{name}: q / v must still learn"


def noisy_(module: torch.nn.Module) -> torch.nn.Module:
    """Non-zero biases (the MAE init zeroes them), so that the key bias is not trivially idle."""
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n.endswith("qkv.bias"):
                p.normal_(0, 0.5)
    return module


def test_vit_attention():
    attn = noisy_(Attention(32, 4))
    x = torch.randn(3, 17, 32)
    out = attn(x)
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(3, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
    plain = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 17, 32))
    assert torch.equal(out, plain), "the forward pass must not change"
    assert_key_bias_gradients_are_exactly_zero(attn, out.square().sum())


@pytest.mark.parametrize("masked", [False, True])
def test_swin_window_attention_with_and_without_a_mask(masked):
    attn = noisy_(WindowAttention(16, 2, 4))
    x = torch.randn(8, 16, 16)
    mask = torch.zeros(2, 16, 16)
    mask[:, :, 8:] = -100.0
    out = attn(x, mask if masked else None)
    assert_key_bias_gradients_are_exactly_zero(attn, out.square().sum())


def test_vit_mae_encoder_and_decoder_blocks():
    enc = ViT(2, (32, 32), (8, 8), in_channels=1, embed_dim=32, depth=2, num_heads=2)
    mae = noisy_(MaskedAutoencoderViT(enc, 24, 2, 2))
    assert len(qkv_biases(mae)) == 4  # 2 encoder + 2 decoder blocks
    assert_key_bias_gradients_are_exactly_zero(mae, mae(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))["loss"])


def test_swin_mae_encoder_and_decoder():
    enc = SwinEncoder(2, (32, 32), (4, 4), in_channels=1, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
    mae = noisy_(SwinMAE(enc, mask_block=(2, 2)))
    assert_key_bias_gradients_are_exactly_zero(mae, mae(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))["loss"])


def test_adam_leaves_the_key_bias_bitwise_unchanged_and_state_dicts_keep_their_keys():
    enc = ViT(2, (32, 32), (8, 8), in_channels=1, embed_dim=32, depth=2, num_heads=2)
    mae = noisy_(MaskedAutoencoderViT(enc, 24, 1, 2))
    keys = list(mae.state_dict())
    before = {n: p.detach().clone() for n, p in qkv_biases(mae).items()}
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(3):
        opt.zero_grad()
        mae(torch.randn(2, 1, 32, 32), torch.tensor([step, step + 7]))["loss"].backward()
        opt.step()
    for name, bias in qkv_biases(mae).items():
        d = bias.numel() // 3
        assert torch.equal(bias[d : 2 * d], before[name][d : 2 * d]), name
        assert not torch.equal(bias[:d], before[name][:d]), name
    assert list(mae.state_dict()) == keys
