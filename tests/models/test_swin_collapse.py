"""Regression tests for the Swin collapse: with [0, 1] intensities the LayerNorm after the patch embedding saw
mostly the image mean, so Swin-UNet learned a constant background map and the Swin MAE only the mean. The Swin
encoder now standardises its input (``model.swin.input_norm``, on by default)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medmae.config import FinetuneConfig
from medmae.data.synthetic import chest_xray
from medmae.models.registry import build_encoder, build_task_head
from medmae.models.swin import SwinEncoder, SwinMAE


def lines(rng: np.random.Generator, n: int, size: int = 32, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (grey 0.5 + noise) with ``k`` thin bright lines each; masks: the lines (~12 % foreground)."""
    yy, xx = np.mgrid[:size, :size]
    x, y = np.zeros((n, 1, size, size), np.float32), np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(k):
            a, b = rng.uniform(0, np.pi), rng.uniform(-size / 3, size / 3)
            y[i][np.abs((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a) - b) < 1.0] = 1
        x[i, 0] = 0.5 + 0.25 * y[i] + 0.1 * rng.standard_normal((size, size))
    return torch.from_numpy(np.clip(x, 0, 1)), torch.from_numpy(y)


def tiny_swin_unet(**swin) -> torch.nn.Module:
    """Swin-UNet from a fine-tuning config, so the family's defaults (``input_norm``) apply."""
    cfg = FinetuneConfig.model_validate({"task": "seg", "model": {
        "arch": "swin", "img_size": [32, 32], "patch_size": 4, "size": None, "drop_path": 0.0,
        "swin": {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, **swin}}})
    return build_task_head(build_encoder(cfg.model), 2, cfg)


def test_the_encoder_input_is_standardised_so_offset_and_scale_do_not_matter():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    enc = SwinEncoder(2, (32, 32), (4, 4), 1, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                      input_norm=True)
    torch.testing.assert_close(enc(3.0 * x + 0.7), enc(x), atol=1e-4, rtol=1e-4)
    plain = SwinEncoder(2, (32, 32), (4, 4), 1, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
    plain.load_state_dict(enc.state_dict())
    tokens = plain.embed(0.2 * x + 0.7).flatten(1, 2).detach()  # what the old encoder saw: one token direction
    sims = F.cosine_similarity(tokens[:, :, None], tokens[:, None], dim=-1)
    assert float(sims.mean()) > 0.9, "the collapse mechanism (a DC-dominated patch embedding) is gone from the test"
    tokens = enc.embed(0.2 * x + 0.7).flatten(1, 2).detach()
    sims = F.cosine_similarity(tokens[:, :, None], tokens[:, None], dim=-1)
    assert float(sims.mean()) < 0.5, "standardised input: tokens carry local contrast"


def test_a_swin_unet_from_scratch_predicts_the_small_foreground():
    torch.manual_seed(0)
    model = tiny_swin_unet()
    assert model.encoder.input_norm, "model.swin.input_norm must default to on"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.4, lambda_ce=0.6)  # VIS-MAE's weights
    rng = np.random.default_rng(0)
    for _ in range(60):
        x, y = lines(rng, 8)
        loss = loss_fn(model(x), y[:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = lines(np.random.default_rng(99), 8)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    dice = 2 * float(((pred == 1) & (y == 1)).sum()) / float((pred == 1).sum() + (y == 1).sum())
    assert float((y == 1).float().mean()) < 0.15
    assert float((pred == 1).float().mean()) > 0.02 and dice > 0.4, f"Dice {dice:.3f}: a constant background map?"


def test_a_swin_mae_learns_more_than_the_mean():
    """After 160 steps on 32 px synthetic radiographs the masked loss is well below the visible-mean fill (the
    encoder without input standardisation stayed at ~0.85 of it, reconstructing flat grey)."""
    x_all = torch.from_numpy(np.stack([chest_xray(i, size=32).image_chw for i in range(48)]))
    torch.manual_seed(0)
    enc = SwinEncoder(2, (32, 32), (4, 4), 1, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                      input_norm=True)
    mae = SwinMAE(enc, mask_ratio=0.75, mask_block=(2, 2))
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(160):
        idx = torch.randint(0, 40, (8,), generator=g)
        loss = mae(x_all[idx], torch.randint(0, 2**40, (8,), generator=g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    mae.eval()
    x, seeds = x_all[40:], torch.arange(8)
    with torch.no_grad():
        ratio = float(mae(x, seeds)["loss"]) / float(mae.mean_patch_baseline(x, seeds))
        recon, mask = mae.reconstruct(x, seeds)
    assert ratio < 0.7, f"masked loss is {ratio:.2f} of the visible-mean fill"
    assert float(recon[mask.expand_as(recon) > 0].std()) > 0.5 * float(x[mask.expand_as(x) > 0].std()), "flat grey"
