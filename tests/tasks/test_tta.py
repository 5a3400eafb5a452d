"""Mirror test-time augmentation: the output is the mean of the flipped-back predictions, and when it is on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from medmae.config import FinetuneConfig
from medmae.data.dataset import augment_case
from medmae.tasks.inference import classify, mirror_sets, segment, tta_axes


class TinySeg(nn.Module):
    """A position-dependent segmenter: its output changes under flips, so TTA is not a no-op."""

    def __init__(self, spatial_dims: int, k: int = 3):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        torch.manual_seed(0)
        self.conv = conv(1, k, 3, padding=1)
        self.nd = spatial_dims

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[2]).reshape(1, 1, -1, *([1] * (self.nd - 1)))
        return self.conv(x) + 3 * ramp * torch.arange(self.conv.out_channels).reshape(1, -1, *([1] * self.nd))


def test_mirror_sets_are_every_subset_identity_first():
    assert mirror_sets(()) == [()]
    assert mirror_sets((0, 1)) == [(), (0,), (1,), (0, 1)]
    assert len(mirror_sets((0, 1, 2))) == 8 and len(set(mirror_sets((0, 1, 2)))) == 8


@pytest.mark.parametrize(("shape", "roi", "axes"), [
    ((20, 24), (16, 16), (0, 1)), ((40, 36), (16, 16), (0, 1)),  # mirrorings in one batch / one by one
    ((10, 12, 8), (8, 8, 8), (0, 1, 2)), ((12, 16, 10), (8, 8, 8), (0, 1, 2))],
    ids=["2d-stacked", "2d-looped", "3d-stacked", "3d-looped"])
def test_segmentation_tta_is_the_mean_of_the_flipped_back_softmax(shape, roi, axes):
    model = TinySeg(len(shape)).eval()
    image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    got = segment(model, image, roi, overlap=0.5, tta=axes)
    x = torch.from_numpy(image)[None]
    want = []
    for m in mirror_sets(axes):
        dims = [2 + a for a in m]
        xf = x.flip(dims) if dims else x
        logits = sliding_window_inference(xf, roi, 4, model, overlap=0.5, mode="gaussian")
        p = torch.softmax(logits, 1)
        want.append(p.flip(dims) if dims else p)
    want = torch.stack(want).mean(0)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    plain = segment(model, image, roi, overlap=0.5)
    assert float((plain - got).abs().max()) > 1e-3, "the model is flip-dependent: TTA must change the output"
    torch.testing.assert_close(got.sum(0), torch.ones(shape), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("shape", "roi"), [((13, 10), (16, 16)), ((7, 6, 9), (8, 8, 12))], ids=["2d", "3d"])
def test_an_image_smaller_than_the_window_is_padded_as_training_pads_it(shape, roi):
    """Training pads crops with each channel's minimum, centred; inference must see the same border, not MONAI's
    zeros (after a z-score, 0 reads as tissue: on MSD Hippocampus this halved the Dice)."""
    model = TinySeg(len(shape)).eval()
    image = 5.0 + np.random.default_rng(1).random((1, *shape), dtype=np.float32)  # minimum far from 0
    got = segment(model, image, roi, overlap=0.5)
    assert tuple(got.shape) == (3, *shape)
    x = augment_case(image, None, None, None, tuple(max(s, r) for s, r in zip(shape, roi)))[0][None]  # training's pad
    inside = tuple(slice((r - s) // 2, (r - s) // 2 + s) if r > s else slice(None) for s, r in zip(shape, roi))
    want = torch.softmax(model(x), 1).detach()[0][(slice(None), *inside)]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    zero_padded = torch.softmax(sliding_window_inference(torch.from_numpy(image)[None], roi, 4, model, overlap=0.5,
                                                         mode="gaussian"), 1)[0].detach()
    assert float((zero_padded - want).abs().max()) > 1e-2, "the test must tell the two paddings apart"


def test_classification_tta_averages_the_flipped_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    images = [np.random.default_rng(i).random((1, 8, 8), dtype=np.float32) for i in range(5)]
    got = classify(model, images, (8, 8), multilabel=False, tta=(1,))
    x = torch.from_numpy(np.stack(images))
    want = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(3)), 1)) / 2
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-6)
    assert not np.allclose(got, classify(model, images, (8, 8), multilabel=False))


def cfg(**kw) -> FinetuneConfig:
    task, arch, tta, flips = kw.get("task", "seg"), kw.get("arch", "resenc"), kw.get("tta"), kw.get("flips", [0, 1])
    model = {"arch": arch, "size": None, "img_size": [32, 32], "patch_size": 1 if arch == "resenc" else 16}
    if arch == "resenc":
        model["resenc"] = {"widths": [4, 8], "blocks": [1, 1]}
    else:
        model.update(embed_dim=32, depth=1, num_heads=2)
    return FinetuneConfig.model_validate({"task": task, "model": model, "data": {"flip_axes": flips}, "eval": {"tta": tta}})


def test_tta_defaults_on_for_cnn_segmentation_over_the_trained_flip_axes():
    assert tta_axes(cfg()) == (0, 1)
    assert tta_axes(cfg(flips=[1])) == (1,), "only the axes the model was trained mirrored on"
    assert tta_axes(cfg(flips=[])) == (), "auto: nothing to mirror when training did not flip"
    assert tta_axes(cfg(task="cls")) == () and tta_axes(cfg(arch="vit")) == ()
    assert tta_axes(cfg(arch="vit", tta=True)) == (0, 1) and tta_axes(cfg(tta=False)) == ()
    assert tta_axes(cfg(task="cls", tta=True, flips=[])) == (0, 1), "explicitly on without flips: every axis"
