"""MONAI baseline networks (``--init baseline:NAME``): each builds in 2D and 3D, trains (deep supervision as a
list, full resolution first) and predicts at the input size; unknown names are config errors listing the known."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from medmae.config import FinetuneConfig
from medmae.errors import ConfigError
from medmae.models.monai_nets import BASELINES, build_baseline, dynunet_plan, known
from medmae.models.resenc import deep_supervision_loss

SIZES = {2: [32, 32], 3: [32, 32, 32]}


def config(task: str, dims: int, channels: int = 1) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"task": task, "model": {
        "spatial_dims": dims, "img_size": SIZES[dims], "patch_size": 8, "in_channels": channels, "size": None,
        "embed_dim": 32, "depth": 1, "num_heads": 2}})


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_builds_in_3d_trains_and_predicts_at_the_input_size(name):
    """3D; the 2D networks train end to end through finetune and evaluate (tests/tasks/test_baseline_arms.py)."""
    task, dims = BASELINES[name][0], 3
    torch.manual_seed(0)
    model = build_baseline(f"baseline:{name}", config(task, dims, channels=2), num_outputs=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 2, *SIZES[dims])
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    out = model(x)
    if task == "seg":
        outs = out if isinstance(out, list) else [out]
        assert all(o.shape == (2, 3, *SIZES[dims]) for o in outs)
        target = torch.randint(0, 3, (2, 1, *SIZES[dims]))
        loss = deep_supervision_loss(DiceCELoss(to_onehot_y=True, softmax=True), outs, target)
    else:
        assert out.shape == (2, 3)
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "training changed nothing"
    model.eval()
    with torch.no_grad():
        pred = model(x)
    assert torch.is_tensor(pred) and pred.shape == ((2, 3, *SIZES[dims]) if task == "seg" else (2, 3))


def test_dynunet_trains_with_deep_supervision_heads_and_follows_nnunet_strides():
    model = build_baseline("baseline:dynunet", config("seg", 2), num_outputs=2).train()
    out = model(torch.randn(1, 1, 32, 32))
    assert isinstance(out, list) and len(out) == 3  # full resolution + 2 deep-supervision heads
    kernels, strides = dynunet_plan([64, 64, 12])
    assert strides[0] == [1, 1, 1] and strides[1] == [2, 2, 2]
    assert [s[0] for s in strides] == [1, 2, 2, 2, 2], "64 voxels halve four times down to 4"
    assert [s[2] for s in strides] == [1, 2, 1, 1, 1], "the short axis stops halving below 4 voxels"
    assert len(kernels) == len(strides)


def test_an_unknown_baseline_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        build_baseline("baseline:unet3000", config("seg", 2), 2)
    assert "unet3000" in str(err.value)
    for name in known("seg"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="baseline:densenet121.*cls network.*seg"):
        build_baseline("baseline:densenet121", config("seg", 2), 2)


def test_basicunet_refuses_a_size_it_cannot_halve_four_times():
    cfg = config("seg", 2)
    cfg.model.img_size = [24, 24]
    with pytest.raises(ConfigError, match=r"\[24, 24\].*16"):
        build_baseline("baseline:basicunet", cfg, 2)
    cfg.model.img_size = [16, 16]
    with pytest.raises(ConfigError, match="at least 32"):
        build_baseline("baseline:basicunet", cfg, 2)
