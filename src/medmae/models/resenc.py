"""Residual-encoder U-Net (nnU-Net ResEnc) in 2D or 3D, its masked autoencoder (Revisiting MAE for 3D / nnssl,
dense or SparK-style sparse) and the segmentation U-Net that keeps the pretrained decoder.

Layout follows nnU-Net's ``ResidualEncoderUNet``: a stem convolution, stages of residual basic blocks (the first
block of each stage after the first downsamples with a strided convolution), InstanceNorm + LeakyReLU, and a
decoder of transposed convolutions, skip concatenation and residual blocks.

Memory format: contiguous by default. :func:`use_channels_last` switches a model to ``channels_last(_3d)``;
convolutions alone get faster that way, but ``InstanceNorm`` returns contiguous tensors, so every block converts
back and forth and the whole step was measured slower on CPU (see ``benchmarks/family_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.mae_base import MaskedAutoencoder, draw_seeds
from medmae.models.masking import block_grid_shape, block_mask, mask_to_grid, patchify
from medmae.models.vit import DropPath


def channels_last(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def use_channels_last(model: nn.Module) -> nn.Module:
    """Put a model holding a :class:`ResEncEncoder` (attribute ``encoder``, or the encoder itself) and its
    inputs into channels-last memory format."""
    encoder = model if isinstance(model, ResEncEncoder) else model.encoder
    encoder.memory_format = channels_last(encoder.spatial_dims)
    return model.to(memory_format=encoder.memory_format)


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(spatial_dims: int, ch: int) -> nn.Module:
    return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(ch, eps=1e-5, affine=True)


class ConvNormAct(nn.Module):
    """conv -> InstanceNorm -> LeakyReLU(0.01) (nnU-Net's ``ConvDropoutNormReLU`` without dropout)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, act: bool = True,
                 bias: bool = True):
        super().__init__()
        self.conv = _conv(spatial_dims)(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
        self.norm = _norm(spatial_dims, cout)
        self.act = nn.LeakyReLU(0.01, inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """nnU-Net's ``BasicBlockD``: two 3x3(x3) convolutions, the first strided; the shortcut average-pools
    when strided (ResNet-D) and projects with a bias-free 1x1 convolution + norm when the width changes."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.drop_path = DropPath(drop_path)
        self.conv1 = ConvNormAct(spatial_dims, cin, cout, kernel, stride)
        self.conv2 = ConvNormAct(spatial_dims, cout, cout, kernel, act=False)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        pool = (nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d)(stride, stride) if stride != 1 else nn.Identity()
        proj = ConvNormAct(spatial_dims, cin, cout, 1, act=False, bias=False) if cin != cout else nn.Identity()
        self.skip = nn.Sequential(pool, proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + self.skip(x))


class ResEncEncoder(nn.Module):
    """Residual encoder: stem (stride ``patch_size``), then ``len(widths)`` stages of residual blocks;
    stage 0 keeps the stem's resolution, each later stage halves it.

    ``forward_features(x, keep_fn)`` returns every stage's output (the U-Net skips). With ``keep_fn`` (sparse
    masking) the stem's and every block's output pass through ``keep_fn(feature, stage)``, which zeroes the
    masked positions at that resolution.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        img_size: Sequence[int] = (160, 160, 160),
        patch_size: Sequence[int] = (1, 1, 1),
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256, 320, 320),
        blocks: Sequence[int] = (1, 3, 4, 6, 6, 6),
        kernel_size: int = 3,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} need the same (non-zero) length")
        if len(set(patch_size)) != 1 or len(patch_size) != spatial_dims:
            raise ValueError(f"the ResEnc stem stride (patch_size) must be isotropic with {spatial_dims} values, got {tuple(patch_size)}")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.widths, self.blocks, self.kernel_size = tuple(widths), tuple(blocks), kernel_size
        self.strides = tuple(self.patch_size[0] * 2**i for i in range(len(widths)))  # total stride of each stage
        if any(s % self.strides[-1] for s in self.img_size):
            raise ValueError(f"ResEnc input {self.img_size} must be divisible by its total stride {self.strides[-1]}")
        self.embed_dim = widths[-1]  # width of the pooled bottleneck (what a classifier head sees)
        self.depth = len(widths)
        self.cls_token = None
        self.num_prefix_tokens = 0
        self.memory_format = torch.contiguous_format

        self.stem = ConvNormAct(spatial_dims, in_channels, widths[0], kernel_size, self.patch_size[0])
        rates = iter(torch.linspace(0, drop_path, sum(blocks)).tolist())  # stochastic depth, deeper blocks more
        stages = []
        for i, (w, n) in enumerate(zip(widths, blocks)):
            cin = widths[max(i - 1, 0)]
            stage = [ResidualBlock(spatial_dims, cin, w, kernel_size, 1 if i == 0 else 2, next(rates))]
            stage += [ResidualBlock(spatial_dims, w, w, kernel_size, 1, next(rates)) for _ in range(n - 1)]
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)

    def forward_features(self, x_bcs: torch.Tensor,
                         keep_fn: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Stage outputs, shallow to deep: (B, widths[i], *S / strides[i])."""
        if x_bcs.dim() != self.spatial_dims + 2 or x_bcs.shape[1] != self.in_channels:
            raise ValueError(f"ResEnc encoder built for (B, {self.in_channels}, {self.spatial_dims} spatial dims) input, "
                             f"got {tuple(x_bcs.shape)}")
        if any(s % self.strides[-1] for s in x_bcs.shape[2:]):
            raise ValueError(f"input size {tuple(x_bcs.shape[2:])} is not divisible by the total stride {self.strides[-1]}")
        keep = keep_fn or (lambda f, i: f)
        x = keep(self.stem(x_bcs.contiguous(memory_format=self.memory_format)), 0)
        feats = []
        for i, stage in enumerate(self.stages):
            for blk in stage:
                x = keep(blk(x), i)
            feats.append(x)
        return feats

    def forward_tokens(self, x_bcs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Bottleneck as tokens (B, L, C) (the :class:`~medmae.models.encoder.Encoder` interface)."""
        return self.forward_features(x_bcs)[-1].flatten(2).transpose(1, 2), []

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.widths

    @property
    def feature_strides(self) -> tuple[tuple[int, ...], ...]:
        return tuple((s,) * self.spatial_dims for s in self.strides)

    def feature_maps(self, x_bcs: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(x_bcs)

    def forward_masked(self, x_bcs: torch.Tensor, mask_bm: torch.Tensor,
                       fill: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """SparK's sparse encoding: masked voxels zeroed in the input, and the mask (at each resolution) re-applied
        after the stem and every residual block, so masked positions stay exactly zero; ``fill`` (one
        (1, C_i, 1, ...) token per stage) then takes their place ("densify"). Mask cells must cover whole voxels
        of the deepest stage."""
        spatial = x_bcs.shape[2:]
        visible = ~mask_to_grid(mask_bm, spatial, (1,) * self.spatial_dims)[:, None]
        x_in = x_bcs * visible.to(x_bcs.dtype)
        keeps = [(~mask_to_grid(mask_bm, spatial, (s,) * self.spatial_dims)[:, None]).to(x_bcs.dtype)
                 .contiguous(memory_format=self.memory_format) for s in self.strides]
        feats = self.forward_features(x_in, lambda f, i: f * keeps[i].to(f.dtype))
        if fill is not None:
            feats = [torch.where(k.bool(), f, t.to(f.dtype)) for f, k, t in zip(feats, keeps, fill)]
        return feats

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x_bcs)[-1]


class ResEncDecoder(nn.Module):
    """nnU-Net's ``UNetResDecoder`` body: per level a transposed convolution (stride 2), concatenation with the
    encoder's skip and ``blocks`` residual blocks. Output heads live in the models that use it, so the same
    weights serve reconstruction (pretraining) and segmentation."""

    def __init__(self, encoder: ResEncEncoder, blocks: int = 1):
        super().__init__()
        nd, w, k = encoder.spatial_dims, encoder.widths, encoder.kernel_size
        tconv = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        n = len(w)
        self.ups = nn.ModuleList(tconv(w[i], w[i - 1], 2, stride=2) for i in range(n - 1, 0, -1))
        self.stages = nn.ModuleList(
            nn.Sequential(ResidualBlock(nd, 2 * w[i - 1], w[i - 1], k), *[ResidualBlock(nd, w[i - 1], w[i - 1], k)
                                                                          for _ in range(blocks - 1)])
            for i in range(n - 1, 0, -1)
        )
        self.out_widths = tuple(w[i - 1] for i in range(n - 1, 0, -1))  # deepest level first

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encoder stage outputs (shallow to deep) -> decoder outputs per level, coarsest first, the last at
        the resolution of stage 0."""
        x, outs = feats[-1], []
        for j, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = stage(torch.cat([up(x), feats[-2 - j]], dim=1))
            outs.append(x)
        return outs


def _upsample_to_stem(y: torch.Tensor, stride: int) -> torch.Tensor:
    """Decoder output at stage-0 resolution -> input resolution when the stem is strided (nearest)."""
    return y if stride == 1 else F.interpolate(y, scale_factor=stride, mode="nearest")


class ResEncMAE(MaskedAutoencoder):
    """CNN masked autoencoder (Revisiting MAE for 3D / nnssl): blocks of ``mask_block`` voxels are zeroed in the
    input, the U-Net (encoder + decoder) reconstructs the full image, the loss is the MSE on masked voxels.

    ``sparse=True`` is SparK's sparse encoding: the (downsampled) mask is re-applied after the stem and every
    residual block, so masked positions stay exactly zero through the encoder, and learnable per-stage mask
    tokens fill them before the decoder ("densify"). The mask block must then be a multiple of the total stride.
    With ``norm_pix_loss`` each mask block is a "patch" normalised on its own statistics.
    """

    def __init__(self, encoder: ResEncEncoder, *, mask_ratio: float = 0.75, mask_block: Sequence[int] = (16, 16, 16),
                 sparse: bool = False, norm_pix_loss: bool = False, decoder_blocks: int = 1):
        super().__init__()
        self.encoder, self.mask_ratio, self.sparse, self.norm_pix_loss = encoder, mask_ratio, sparse, norm_pix_loss
        self.mask_block = tuple(int(b) for b in mask_block)
        self.block_grid = block_grid_shape(encoder.img_size, self.mask_block, "ResEnc input")
        if sparse and any(b % encoder.strides[-1] for b in self.mask_block):
            raise ValueError(f"sparse masking needs mask blocks {self.mask_block} that are multiples of the encoder's "
                             f"total stride {encoder.strides[-1]} (a masked block must cover whole bottleneck voxels)")
        self.decoder = ResEncDecoder(encoder, decoder_blocks)
        self.recon_head = _conv(encoder.spatial_dims)(encoder.widths[0], encoder.in_channels, 1)
        if sparse:
            self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, w, *([1] * encoder.spatial_dims)))
                                                for w in encoder.widths)
            for t in self.mask_tokens:
                nn.init.trunc_normal_(t, std=0.02)
        else:
            self.mask_tokens = None

    @property
    def target_patch(self) -> tuple[int, ...]:
        return self.mask_block  # the loss's "patch" is the mask block

    @property
    def target_grid(self) -> tuple[int, ...]:
        return self.block_grid

    def mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B, *block_grid) bool block mask from per-sample seeds (None: seeds from the global torch RNG)."""
        return block_mask(draw_seeds(batch, seeds_b, device), self.block_grid, self.mask_ratio)

    def token_mask(self, batch: int, seeds_b: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        return self.mask(batch, seeds_b, device).flatten(1)

    def _mask_at(self, mask_bg: torch.Tensor, stride: int) -> torch.Tensor:
        """Block mask at a feature resolution of ``stride``: (B, 1, *S / stride) bool."""
        return mask_to_grid(mask_bg, self.encoder.img_size, (stride,) * self.encoder.spatial_dims)[:, None]

    def predict(self, x_bcs: torch.Tensor, mask_bg: torch.Tensor) -> torch.Tensor:
        """Reconstruction (B, C, *S) of the whole image from its masked version."""
        enc = self.encoder
        if self.sparse:
            feats = enc.forward_masked(x_bcs, mask_bg, self.mask_tokens)
        else:
            feats = enc.forward_features(x_bcs * (~self._mask_at(mask_bg, 1)).to(x_bcs.dtype))
        y = self.recon_head(self.decoder(feats)[-1])
        return _upsample_to_stem(y, enc.patch_size[0])

    def predict_patches(self, x_bcs: torch.Tensor, seeds_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.mask(x_bcs.shape[0], seeds_b, x_bcs.device)
        return patchify(self.predict(x_bcs, mask), self.mask_block), mask.flatten(1)


class ResEncUNet(nn.Module):
    """Segmentation U-Net: the (pretrained) encoder and decoder plus 1x1 convolution heads.

    With ``deep_supervision`` the model returns, in training mode, a list of logits for every decoder level
    (full resolution first, then 1/2, 1/4, ...), as nnU-Net does; in eval mode always the full-resolution logits.
    """

    def __init__(self, encoder: ResEncEncoder, num_classes: int, *, decoder_blocks: int = 1,
                 deep_supervision: bool = False):
        super().__init__()
        self.encoder, self.deep_supervision = encoder, deep_supervision
        self.decoder = ResEncDecoder(encoder, decoder_blocks)
        conv = _conv(encoder.spatial_dims)
        widths = self.decoder.out_widths if deep_supervision else self.decoder.out_widths[-1:]
        self.heads = nn.ModuleList(conv(w, num_classes, 1) for w in widths)

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = self.decoder(self.encoder.forward_features(x_bcs))
        stride = self.encoder.patch_size[0]
        if self.deep_supervision and self.training:
            logits = [h(o) for h, o in zip(self.heads, outs)]
            return [_upsample_to_stem(logits[-1], stride)] + logits[-2::-1]
        return _upsample_to_stem(self.heads[-1](outs[-1]), stride)


def deep_supervision_loss(loss_fn, logits: Sequence[torch.Tensor], target_b1s: torch.Tensor) -> torch.Tensor:
    """nnU-Net's deep-supervision loss: ``loss_fn`` at every scale against the nearest-downsampled target,
    weights 1, 1/2, 1/4, ... normalised to sum to one (full resolution first)."""
    weights = [0.5**i for i in range(len(logits))]
    total = sum(weights)
    out = 0.0
    for w, y in zip(weights, logits):
        t = target_b1s if y.shape[2:] == target_b1s.shape[2:] else \
            F.interpolate(target_b1s.float(), size=y.shape[2:], mode="nearest").to(target_b1s.dtype)
        out = out + (w / total) * loss_fn(y, t)
    return out


def resenc_layer_id(name: str, num_stages: int) -> int:
    """Layer index for layer-wise lr decay: stem 0, encoder stage i -> i + 1, decoder and heads num_stages + 1."""
    if name.startswith("encoder."):
        parts = name.split(".")
        if parts[1] == "stem":
            return 0
        if parts[1] == "stages":
            return int(parts[2]) + 1
    return num_stages + 1

