import torch

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.mae_base import masked_patch_loss, normalize_patches
from medmae.models.masking import patchify
from medmae.models.vit import ViT, _gather_tokens


def tiny_mae(dims=2, norm_pix=True, ratio=0.75):
    img = (32, 32) if dims == 2 else (32, 32, 32)
    patch = (8, 8) if dims == 2 else (16, 16, 16)
    enc = ViT(dims, img, patch, in_channels=1, embed_dim=32, depth=2, num_heads=2)
    return MaskedAutoencoderViT(enc, 24, 1, 2, mask_ratio=ratio, norm_pix_loss=norm_pix)


def test_loss_ignores_predictions_on_visible_patches():
    pred, target = torch.randn(2, 10, 6), torch.randn(2, 10, 6)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :4] = True
    base = masked_patch_loss(pred, target, mask)
    pred2 = pred.clone()
    pred2[:, 4:] += 100.0
    assert masked_patch_loss(pred2, target, mask) == base
    pred3 = pred.clone()
    pred3[:, 0] += 1.0
    assert masked_patch_loss(pred3, target, mask) != base


def test_model_loss_equals_masked_loss_over_full_prediction():
    torch.manual_seed(0)
    mae = tiny_mae()
    x = torch.randn(3, 1, 32, 32)
    seeds = torch.tensor([4, 5, 6])
    loss = mae(x, seeds)["loss"]
    ids_keep, mask, ids_restore = mae.mask(3, seeds, x.device)
    latent, _ = mae.encoder.forward_tokens(x, ids_keep)
    full = mae.forward_decoder(latent, ids_restore, None)
    torch.testing.assert_close(loss, masked_patch_loss(full, mae.target(x), mask), rtol=1e-5, atol=1e-6)


def test_encoder_sees_only_visible_tokens():
    torch.manual_seed(0)
    mae = tiny_mae()
    x = torch.randn(2, 1, 32, 32)
    seeds = torch.tensor([1, 2])
    _, mask, _ = mae.mask(2, seeds, x.device)
    # changing masked pixels must not change the encoder output, changing visible ones must
    pix_mask = mae.reconstruct(x, seeds)[1].bool()
    latent = mae.encoder.forward_tokens(x, mae.mask(2, seeds, x.device)[0])[0]
    x_masked_changed = torch.where(pix_mask, x + 5.0, x)
    latent2 = mae.encoder.forward_tokens(x_masked_changed, mae.mask(2, seeds, x.device)[0])[0]
    torch.testing.assert_close(latent, latent2)
    x_visible_changed = torch.where(pix_mask, x, x + 5.0)
    latent3 = mae.encoder.forward_tokens(x_visible_changed, mae.mask(2, seeds, x.device)[0])[0]
    assert not torch.allclose(latent, latent3)


def test_norm_pix_target_is_per_patch_standardised():
    x = torch.randn(2, 1, 32, 32) * 7 + 3
    t = normalize_patches(patchify(x, (8, 8)))
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_reconstruct_copies_visible_patches_and_unnormalises():
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix=True)
    x = torch.rand(2, 1, 32, 32) * 100
    recon, mask = mae.reconstruct(x, torch.tensor([0, 1]))
    assert recon.shape == x.shape and mask.shape == (2, 1, 32, 32)
    assert torch.allclose(recon[mask == 0], x[mask == 0])
    assert abs(mask.mean().item() - 0.75) < 1e-6
    # masked predictions are brought back to the image's intensity range by the per-patch statistics
    assert recon[mask == 1].mean().item() > 20


def test_few_steps_lower_the_loss_2d_and_3d():
    for dims in (2, 3):
        torch.manual_seed(0)
        mae = tiny_mae(dims, norm_pix=False)
        shape = (4, 1) + ((32, 32) if dims == 2 else (32, 32, 32))
        grid = torch.linspace(0, 1, shape[-1])
        x = (torch.sin(6 * grid) + torch.zeros(shape)).contiguous()
        seeds = torch.arange(4)
        opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
        first = None
        for _ in range(30):
            loss = mae(x, seeds)["loss"]
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * first, (dims, first, loss.item())


def test_bf16_autocast_runs_and_tracks_fp32():
    torch.manual_seed(0)
    mae = tiny_mae()
    x = torch.randn(2, 1, 32, 32)
    ref = mae(x, torch.tensor([0, 1]))["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mae(x, torch.tensor([0, 1]))["loss"]
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 0.05 * ref.item()


def test_gather_tokens():
    x = torch.arange(24.0).reshape(2, 4, 3)
    out = _gather_tokens(x, torch.tensor([[3, 0], [1, 1]]))
    assert torch.equal(out[0, 0], x[0, 3]) and torch.equal(out[1, 1], x[1, 1])
