import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from medmae.data.synthetic import chest_xray
from medmae.engine.optim import param_groups
from medmae.models.heads import UNETR, Classifier, unetr_layers, vit_layer_id
from medmae.models.vit import ViT


def tiny_vit(dims: int = 2, img: int = 32, patch: int = 8, depth: int = 2, **kw) -> ViT:
    return ViT(dims, (img,) * dims, (patch,) * dims, kw.pop("in_channels", 1), embed_dim=32, depth=depth,
               num_heads=2, **kw)


# ------------------------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_classifier_pooling(pool):
    torch.manual_seed(0)
    model = Classifier(tiny_vit(), 5, pool=pool).eval()
    x = torch.randn(3, 1, 32, 32)
    assert model(x).shape == (3, 5)
    tokens, _ = model.encoder.forward_tokens(x)
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
    torch.testing.assert_close(model.features(x), expected)


def test_classifier_cls_pool_needs_a_cls_token():
    with pytest.raises(ValueError, match="cls token"):
        Classifier(tiny_vit(cls_token=False), 2, pool="cls")
    model = Classifier(tiny_vit(cls_token=False), 2, pool="mean")
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_linear_probe_freezes_the_encoder():
    torch.manual_seed(0)
    model = Classifier(tiny_vit(drop_path=0.5), 3, probe=True)
    assert isinstance(model.feature_norm, torch.nn.BatchNorm1d)
    assert list(model.feature_norm.parameters()) == []  # no affine parameters
    model.train()
    assert model.training and model.feature_norm.training
    assert not model.encoder.training and not any(m.training for m in model.encoder.modules())
    x = torch.randn(4, 1, 32, 32)
    # drop path is off in the frozen encoder: two passes give the same features
    torch.testing.assert_close(model.features(x), model.features(x))
    model(x).square().mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert {n for n, _ in model.named_parameters() if not n.startswith("encoder.")} == {"head.weight", "head.bias"}


# ---------------------------------------------------------------------------------------------- LLRD


def test_layer_wise_lr_decay_scales():
    depth, decay = 3, 0.75
    model = Classifier(tiny_vit(depth=depth, pos_embed="learnable"), 4)
    groups = param_groups(model, 0.05, layer_id=lambda n: vit_layer_id(n, depth), num_layers=depth,
                          layer_decay=decay)
    scale = {name: g["lr_scale"] for g in groups for name in g["names"]}
    assert set(scale) == {n for n, _ in model.named_parameters()}
    for name in ("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed.proj.weight",
                 "encoder.patch_embed.proj.bias"):
        assert scale[name] == pytest.approx(decay ** (depth + 1))
    for i in range(depth):
        block = [n for n in scale if n.startswith(f"encoder.blocks.{i}.")]
        assert len(block) == 12
        for name in block:
            assert scale[name] == pytest.approx(decay ** (depth - i)), name
    for name in ("encoder.norm.weight", "encoder.norm.bias", "head.weight", "head.bias"):
        assert scale[name] == 1.0
    decays = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decays["head.weight"] == 0.05 and decays["head.bias"] == 0.0 and decays["encoder.pos_embed"] == 0.0


# --------------------------------------------------------------------------------------------- UNETR


def test_unetr_skip_layers():
    assert unetr_layers(12, 16) == [3, 6, 9, 12]
    assert unetr_layers(6, 8) == [2, 4, 6]
    assert unetr_layers(24, 16) == [6, 12, 18, 24]
    # a shallow encoder repeats blocks instead of asking for block 0 (the embeddings)
    layers = unetr_layers(2, 16)
    assert len(layers) == 4 and min(layers) >= 1 and layers[-1] == 2 and layers == sorted(layers)


@pytest.mark.parametrize("dims,img,patch,depth", [(2, 32, 8, 2), (2, 32, 16, 2), (2, 64, 16, 4), (3, 32, 16, 2)])
def test_unetr_output_shape(dims, img, patch, depth):
    torch.manual_seed(0)
    model = UNETR(tiny_vit(dims, img, patch, depth=depth, in_channels=2), 3, feature_size=4)
    assert len(model.skips) == int(np.log2(patch)) - 1
    x = torch.randn(1, 2, *(img,) * dims)
    assert model(x).shape == (1, 3, *(img,) * dims)


def test_unetr_uses_the_hidden_state_of_each_skip_layer():
    torch.manual_seed(0)
    model = UNETR(tiny_vit(2, 32, 16, depth=4), 2, feature_size=4).eval()
    assert model.layers == [1, 2, 3, 4]
    seen = []
    for blk in model.skips:
        blk.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x = torch.randn(1, 1, 32, 32)
    model(x)
    _, hidden = model.encoder.forward_tokens(x, return_layers=[1, 2, 3])
    for got, h in zip(seen, hidden):
        torch.testing.assert_close(got, model.encoder.tokens_to_map(h))


@pytest.mark.parametrize("patch", [(16, 8), (12, 12), (2, 2)])
def test_unetr_rejects_unusable_patches(patch):
    enc = ViT(2, (48, 48), patch, 1, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="isotropic power-of-two"):
        UNETR(enc, 2)


def test_unetr_overfits_one_synthetic_radiograph():
    """Lung and heart of one 64x64 synthetic chest X-ray: Dice > 0.9 for both within 60 steps."""
    torch.manual_seed(0)
    case = chest_xray(3, size=64)
    x = torch.from_numpy(case.image_chw)[None].float()
    y = torch.from_numpy(case.anatomy.astype(np.int64))[None]
    assert set(np.unique(case.anatomy)) == {0, 1, 2}
    model = UNETR(tiny_vit(2, 64, 8), 3, feature_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def dice() -> list[float]:
        model.eval()
        with torch.no_grad():
            pred = model(x).argmax(1)
        model.train()
        return [2 * ((pred == k) & (y == k)).sum().item() / ((pred == k).sum().item() + (y == k).sum().item())
                for k in (1, 2)]

    scores = dice()
    assert max(scores) < 0.9
    for step in range(60):
        opt.zero_grad()
        loss_fn(model(x), y[:, None]).backward()
        opt.step()
        if step % 5 == 4:
            scores = dice()
            if min(scores) > 0.9:
                break
    assert min(scores) > 0.9, scores
