"""The ``model`` and ``mask`` sections: backbone family (``arch``) and its own section, sizes, and the MAE mask.

Each backbone family reads the shared keys and its own section (``vit``: ``size`` / ``embed_dim`` / ... and
``decoder``; ``swin``: ``model.swin``; ``resenc``: ``model.resenc``); :data:`medmae.config.checks.ARCH_ONLY_KEYS`
says which keys belong to which family.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medmae.config.base import Strict, refuse
from medmae.config.checks import swin_problems, vit_problems

VIT_SIZES: dict[str, tuple[int, int, int]] = {
    # name: (embed_dim, depth, num_heads)
    "vit-t": (192, 12, 3),
    "vit-s": (384, 12, 6),
    "vit-b": (768, 12, 12),
    "vit-l": (1024, 24, 16),
}


class DecoderConfig(Strict):
    embed_dim: int = Field(512, ge=1)
    depth: int = Field(8, ge=1)
    num_heads: int = Field(16, ge=1)


class SwinConfig(Strict):
    """Swin Transformer (``arch: swin``, VIS-MAE): stages of shifted-window blocks joined by patch merging.
    The patch size is ``model.patch_size`` (Swin: 4); ``mlp_ratio``, ``qkv_bias`` and ``drop_path`` are shared."""

    embed_dim: int = Field(96, ge=1)
    depths: list[Annotated[int, Field(ge=1)]] = [2, 2, 2, 2]
    num_heads: list[Annotated[int, Field(ge=1)]] = [3, 6, 12, 24]
    window_size: int = Field(7, ge=1)
    input_norm: bool = Field(True, description="standardise each input image (per channel) before the patch embedding")
    decoder_depths: list[int] | None = Field(
        None, description="blocks per up-stage of the decoders, deepest first (len(depths) - 1 values); "
                          "None mirrors the encoder (Swin-MAE / Swin-UNet)")

    @model_validator(mode="after")
    def _check(self) -> SwinConfig:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} need the same (non-zero) length")
        if self.decoder_depths is not None and len(self.decoder_depths) != len(self.depths) - 1:
            raise ValueError(f"decoder_depths {self.decoder_depths} needs {len(self.depths) - 1} values (one per up-stage)")
        return self


class ResEncConfig(Strict):
    """Residual-encoder U-Net (``arch: resenc``, nnU-Net ResEnc / Revisiting MAE 3D). Stage 0 keeps the
    resolution of the stem (stride ``model.patch_size``, nnU-Net: 1), every later stage halves it."""

    widths: list[Annotated[int, Field(ge=1)]] = [32, 64, 128, 256, 320, 320]
    blocks: list[Annotated[int, Field(ge=1)]] = [1, 3, 4, 6, 6, 6]
    decoder_blocks: int = Field(1, ge=1, description="residual blocks per decoder stage (nnU-Net: 1)")
    kernel_size: int = Field(3, ge=1)
    deep_supervision: bool = Field(False, description="segmentation: also return logits of the coarser decoder stages in training")

    @model_validator(mode="after")
    def _check(self) -> ResEncConfig:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need the same (non-zero) length")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self


class ModelConfig(Strict):
    arch: Literal["vit", "swin", "resenc"] = "vit"
    spatial_dims: Literal[2, 3] = 2
    img_size: list[Annotated[int, Field(ge=1)]] = [224, 224]
    patch_size: list[Annotated[int, Field(ge=1)]] | Annotated[int, Field(ge=1)] = 16
    in_channels: int = Field(1, ge=1)
    size: Literal["vit-t", "vit-s", "vit-b", "vit-l"] | None = "vit-b"
    embed_dim: int | None = Field(None, ge=1)
    depth: int | None = Field(None, ge=1)
    num_heads: int | None = Field(None, ge=1)
    mlp_ratio: float = Field(4.0, gt=0.0)
    qkv_bias: bool = True
    pos_embed: Literal["sincos", "learnable"] = "sincos"
    cls_token: bool = True
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    decoder: DecoderConfig = DecoderConfig()
    swin: SwinConfig = SwinConfig()
    resenc: ResEncConfig = ResEncConfig()
    encoder: dict[str, Any] | None = Field(None, description="explicit encoder arguments (set when fine-tuning adopts a pretrained encoder)")

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if len(self.img_size) != self.spatial_dims:
            raise ValueError(f"img_size {self.img_size} needs {self.spatial_dims} values for spatial_dims={self.spatial_dims}")
        patch = self.patch
        if len(patch) != self.spatial_dims:
            raise ValueError(f"patch_size {self.patch_size} needs {self.spatial_dims} values")
        bad = [(s, p) for s, p in zip(self.img_size, patch) if s % p]
        if bad:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {patch}")
        if self.arch == "vit" and self.size is None and None in (self.embed_dim, self.depth, self.num_heads):
            raise ValueError("give either size (vit-t/s/b/l) or all of embed_dim, depth, num_heads")
        if self.arch == "vit":
            embed_dim, _, num_heads = self.dims
            refuse(vit_problems(embed_dim, num_heads, self.decoder.embed_dim, self.decoder.num_heads))
        else:
            refuse(swin_problems(self.swin.embed_dim, self.swin.num_heads) if self.arch == "swin" else [])
            self._check_hierarchical(patch)
        return self

    def _check_hierarchical(self, patch: list[int]) -> None:
        """Swin / ResEnc halve the resolution between stages: the input must divide by patch * 2**(stages - 1)."""
        if self.arch == "swin" and self.spatial_dims != 2:
            raise ValueError(f"arch swin is 2D only, got spatial_dims={self.spatial_dims}")
        stages = len(self.swin.depths) if self.arch == "swin" else len(self.resenc.widths)
        unit = [p * 2 ** (stages - 1) for p in patch]
        if any(s % u for s, u in zip(self.img_size, unit)):
            raise ValueError(f"img_size {self.img_size} must be divisible by {unit} (patch_size {patch} x 2**{stages - 1} "
                             f"for {stages} {self.arch} stages)")

    @property
    def patch(self) -> list[int]:
        p = self.patch_size
        return [p] * self.spatial_dims if isinstance(p, int) else list(p)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(embed_dim, depth, num_heads): explicit values win over ``size``."""
        base = VIT_SIZES[self.size] if self.size else (None, None, None)
        return (
            self.embed_dim or base[0],
            self.depth or base[1],
            self.num_heads or base[2],
        )


class MaskConfig(Strict):
    """``random``: tokens (ViT; Swin: single patches); ``window``: Swin blocks of ``block_size`` px (VIS-MAE);
    ``block``: CNN blocks of ``block_size`` voxels zeroed in the input (nnssl), ``sparse`` for SparK-style encoding."""

    kind: Literal["random", "window", "block"] = "random"
    ratio: float = Field(0.75, ge=0.0, lt=1.0)
    block_size: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]] = Field(16, description="window / block: side of a mask block in pixels (voxels)")
    sparse: bool = Field(False, description="block: re-apply the mask after every encoder stage (SparK)")

    def block_shape(self, spatial_dims: int) -> list[int]:
        b = self.block_size
        return [b] * spatial_dims if isinstance(b, int) else list(b)
