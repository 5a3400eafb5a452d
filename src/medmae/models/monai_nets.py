"""Standard supervised networks from MONAI, trained from scratch beside medmae's arms (``--init baseline:NAME``).

They are what a user would otherwise train: ``basicunet`` and ``dynunet`` (nnU-Net's U-Net, with deep
supervision) for segmentation, ``densenet121`` and ``resnet18`` for classification, in 2D and 3D. They are not
MAE backbones (no :class:`~medmae.models.encoder.Encoder`), so they are built here from the run's task, input
size and channels, and fine-tuning, evaluation and prediction treat them like any task model. (Not to be
confused with :mod:`medmae.baselines`, the trivial accuracy a classifier must beat.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks import nets
from torch import nn

from medmae.config import FinetuneConfig
from medmae.errors import ConfigError

PREFIX = "baseline:"
MIN_FEATURE = 4  # DynUNet: an axis stops halving below this many voxels (nnU-Net's rule)
MAX_POOLS = 5


class DeepSupervision(nn.Module):
    """MONAI's DynUNet returns its deep-supervision heads stacked on dim 1 in training; medmae's loss takes a list
    (full resolution first), the same as the ResEnc U-Net gives."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x_bcs)
        if self.training and out.dim() == x_bcs.dim() + 1:
            return list(out.unbind(dim=1))
        return out


def dynunet_plan(img_size: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's kernel sizes and strides for a patch: an axis is halved while it stays at least ``MIN_FEATURE``
    voxels, at most ``MAX_POOLS`` times; kernels are 3 (1 on an axis that is not halved at the first levels)."""
    size = list(img_size)
    kernels, strides = [[3] * len(size)], [[1] * len(size)]
    for _ in range(MAX_POOLS):
        step = [2 if s // 2 >= MIN_FEATURE else 1 for s in size]
        if not any(s == 2 for s in step):
            break
        size = [s // f for s, f in zip(size, step)]
        strides.append(step)
        kernels.append([3] * len(size))
    return kernels, strides


def _dynunet(dims: int, channels: int, outputs: int, img_size: Sequence[int]) -> nn.Module:
    kernels, strides = dynunet_plan(img_size)
    levels = len(strides)
    filters = [min(32 * 2**i, 320 if dims == 3 else 512) for i in range(levels)]
    supervision = max(0, min(2, levels - 2))
    net = nets.DynUNet(dims, channels, outputs, kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                       filters=filters, deep_supervision=supervision > 0, deep_supr_num=max(supervision, 1),
                       res_block=True)
    return DeepSupervision(net)


def _basicunet(dims: int, channels: int, outputs: int, img_size: Sequence[int]) -> nn.Module:
    return nets.BasicUNet(spatial_dims=dims, in_channels=channels, out_channels=outputs)


def _densenet121(dims: int, channels: int, outputs: int, img_size: Sequence[int]) -> nn.Module:
    return nets.DenseNet121(spatial_dims=dims, in_channels=channels, out_channels=outputs)


def _resnet18(dims: int, channels: int, outputs: int, img_size: Sequence[int]) -> nn.Module:
    return nets.resnet18(spatial_dims=dims, n_input_channels=channels, num_classes=outputs)


Builder = Callable[[int, int, int, Sequence[int]], nn.Module]
BASELINES: dict[str, tuple[str, Builder]] = {
    "basicunet": ("seg", _basicunet),
    "dynunet": ("seg", _dynunet),
    "densenet121": ("cls", _densenet121),
    "resnet18": ("cls", _resnet18),
}
DIVISOR = {"basicunet": 16}  # BasicUNet halves every axis four times
MIN_SIZE = {"basicunet": 32, "densenet121": 32}  # at least 2 voxels per axis at the deepest level


def is_baseline(init: object) -> bool:
    return isinstance(init, str) and init.startswith(PREFIX)


def known(task: str | None = None) -> list[str]:
    return [f"{PREFIX}{n}" for n, (t, _) in BASELINES.items() if task in (None, t)]


def baseline_name(init: str, task: str | None = None) -> str:
    """The network of ``baseline:NAME``; an unknown name, or one for the other task, is a config error listing
    the known ones."""
    name = init[len(PREFIX):] if is_baseline(init) else init
    if name not in BASELINES:
        raise ConfigError(f"--init {init}: unknown baseline; known: {', '.join(known(task))}")
    if task is not None and BASELINES[name][0] != task:
        raise ConfigError(f"--init {init} is a {BASELINES[name][0]} network, this run is {task}; "
                          f"for {task}: {', '.join(known(task))}")
    return name


def build_baseline(init: str, cfg: FinetuneConfig, num_outputs: int) -> nn.Module:
    """The MONAI network of ``init`` for the run's task, dimensions, channels and input size (``model.img_size``)."""
    name = baseline_name(init, cfg.task)
    size = list(cfg.model.img_size)
    unit = DIVISOR.get(name, 1)
    if any(s % unit for s in size) or min(size) < MIN_SIZE.get(name, 1):
        raise ConfigError(f"--init {init}: model.img_size {size} must be divisible by {unit} and at least "
                          f"{MIN_SIZE.get(name, 1)} on every axis for {name}")
    return BASELINES[name][1](cfg.model.spatial_dims, cfg.model.in_channels, num_outputs, size)


def describe(init: str, cfg: FinetuneConfig) -> str:
    name = baseline_name(init)
    return f"MONAI {name} ({cfg.model.spatial_dims}D, from scratch)"
