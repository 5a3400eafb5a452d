"""Vision Transformer for 2D and 3D images (one implementation, ``spatial_dims`` 2 or 3).

The encoder can run on a subset of tokens (MAE: the visible ones only): patches are gathered
*before* the patch projection, so masked patches cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmae.models.masking import grid_shape, mask_to_grid, patchify


def sincos_pos_embed(grid: Sequence[int], dim: int) -> torch.Tensor:
    """Fixed sin-cos position embedding for a 2D or 3D token grid.

    Each spatial axis gets an equal, even share of ``dim`` (sin half, cos half, frequencies
    ``1 / 10000**(i / half)``); channels left over when ``dim`` is not divisible by 2 * ndim are zero.
    Axis 0 of the grid uses the first share.

    Returns:
        (prod(grid), dim) float32, tokens in raster order of the grid.
    """
    ndim = len(grid)
    per_axis = (dim // (2 * ndim)) * 2
    if per_axis == 0:
        raise ValueError(f"embed dim {dim} too small for a {ndim}-D sin-cos embedding")
    half = per_axis // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for axis_coords in coords:
        angles = axis_coords.reshape(-1, 1) * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1], dtype=emb.dtype)], dim=1)
    return emb.to(torch.float32)


class LayerNorm(nn.LayerNorm):
    """LayerNorm that keeps bf16 activations in bf16 under autocast (the kernel accumulates in fp32): autocast
    would otherwise run it in fp32 and cast around every norm of every block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return super().forward(x)


def qkv_projection(qkv: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``qkv(x)`` with the key part of the bias detached, so that its gradient is exactly zero.

    Softmax over the keys ignores ``q . b_k``, which is the same for every key of a query: the key bias cannot
    change the output and its true gradient is zero. The computed one is rounding noise that Adam rescales into
    steps of about the learning rate, different for every summation order (1 vs N processes). Detached, Adam
    sees exact zeros; the parameter stays, so state dicts keep the timm / MAE layout.
    """
    if qkv.bias is None:
        return qkv(x)
    d = qkv.bias.shape[0] // 3
    bias = torch.cat([qkv.bias[:d], qkv.bias[d : 2 * d].detach(), qkv.bias[2 * d :]])
    return F.linear(x, qkv.weight, bias)


def split_qkv_projection(qkv: nn.Linear, x_bnd: torch.Tensor, rows_bm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The queries of the tokens ``rows_bm`` only (B, M, D) and the keys and values of all tokens (B, N, 2D): the
    parts of :func:`qkv_projection` an attention needs when only those tokens' outputs are used."""
    d, bias = qkv.weight.shape[0] // 3, qkv.bias
    q_bmd = F.linear(_gather_tokens(x_bnd, rows_bm), qkv.weight[:d], None if bias is None else bias[:d])
    kv_bias = None if bias is None else torch.cat([bias[d : 2 * d].detach(), bias[2 * d :]])
    return q_bmd, F.linear(x_bnd, qkv.weight[d:], kv_bias)


def attention(q_bhnd: torch.Tensor, k_bhnd: torch.Tensor, v_bhnd: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, computed in fp32 when bf16 inputs are on the CPU (under autocast too).

    torch's CPU flash-attention kernels are 1.5-3.3x slower in bf16 than in fp32, their backward most: in a bf16
    ViT-S/16 MAE step the attention took 27 % of the time, against 9 % in fp32 (``torch.profiler``, one thread).
    fp32 is also the more exact; the output is cast back to bf16. Elsewhere (CUDA) bf16 attention is the fast one
    and runs as is. (With an ``attn_mask``, as in Swin, torch's CPU kernel already computes bf16 in fp32.)
    """
    if q_bhnd.device.type != "cpu" or q_bhnd.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q_bhnd, k_bhnd, v_bhnd)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q_bhnd.float(), k_bhnd.float(), v_bhnd.float())
    return out.to(torch.bfloat16)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels;
    :func:`attention`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_bnd: torch.Tensor, rows_bm: torch.Tensor | None = None) -> torch.Tensor:
        """Attention output (B, N, D), or (B, M, D) at the tokens ``rows_bm`` only (queries of those tokens, keys and
        values of all: the same values, bitwise, as those rows of the full output).

        q, k, v stay views of the projection in its (B, N, 3, H, Dh) layout, which SDPA's CPU kernels read through
        strides and return gradients in: ``unbind`` backward stacks them into that layout directly, where indexing
        ``qkv[0]`` would zero-fill and add a full-size tensor per view (bitwise the same values, ~2 % of a step).
        """
        b, n, d = x_bnd.shape
        h, dh = self.num_heads, d // self.num_heads
        if rows_bm is None:
            q_bnhd, k_bnhd, v_bnhd = qkv_projection(self.qkv, x_bnd).view(b, n, 3, h, dh).unbind(2)
        else:
            q_bmd, kv_bnd = split_qkv_projection(self.qkv, x_bnd, rows_bm)
            q_bnhd = q_bmd.view(b, -1, h, dh)
            k_bnhd, v_bnhd = kv_bnd.view(b, n, 2, h, dh).unbind(2)
        out_bhnd = attention(q_bnhd.transpose(1, 2), k_bnhd.transpose(1, 2), v_bnhd.transpose(1, 2))
        return self.proj(out_bhnd.transpose(1, 2).reshape(b, q_bnhd.shape[1], d))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm / MAE layout and parameter names)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rows_bm: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D), or (B, M, D): the outputs at the tokens ``rows_bm`` only, every token still a key
        and value (the MAE decoder's last block, whose other outputs are never used: a quarter less of its work)."""
        if rows_bm is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        y = _gather_tokens(x, rows_bm) + self.drop_path(self.attn(self.norm1(x), rows_bm))
        return y + self.drop_path(self.mlp(self.norm2(y)))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """ViT encoder. ``forward_tokens(x, ids_keep)`` runs on the kept tokens only.

    Parameter names follow timm / facebookresearch-mae (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``blocks.N``, ``norm``), except that ``pos_embed`` has no cls slot: the cls token carries its own.
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        in_channels: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        pos_embed: str = "sincos",
        cls_token: bool = True,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(img_size) != spatial_dims or len(patch_size) != spatial_dims:
            raise ValueError(f"img_size {tuple(img_size)} and patch_size {tuple(patch_size)} need {spatial_dims} values")
        if pos_embed not in ("sincos", "learnable"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learnable', got {pos_embed!r}")
        self.spatial_dims = spatial_dims
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.grid = grid_shape(self.img_size, self.patch_size)
        self.num_tokens = math.prod(self.grid)
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.depth = depth

        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_embed = nn.Module()
        self.patch_embed.proj = conv(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        table = sincos_pos_embed(self.grid, embed_dim)[None]
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_transformer_weights)
        init_transformer_weights(self.norm)

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    def embed(self, x_bcs: torch.Tensor, ids_keep_bk: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens + position embedding (+ cls token first); with ``ids_keep_bk`` only those tokens.

        Returns:
            (B, prefix + L or K, D)
        """
        if tuple(x_bcs.shape[2:]) != self.img_size or x_bcs.shape[1] != self.in_channels:
            raise ValueError(
                f"ViT built for input (C={self.in_channels}, {self.img_size}), got {tuple(x_bcs.shape[1:])}"
            )
        patches = patchify(x_bcs, self.patch_size)
        pos = self.pos_embed.expand(x_bcs.shape[0], -1, -1)
        if ids_keep_bk is not None:
            patches = _gather_tokens(patches, ids_keep_bk)
            pos = _gather_tokens(pos, ids_keep_bk)
        proj = self.patch_embed.proj
        tokens = F.linear(patches, proj.weight.flatten(1), proj.bias) + pos.to(patches.dtype)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return tokens

    def forward_tokens(
        self, x_bcs: torch.Tensor, ids_keep_bk: torch.Tensor | None = None, return_layers: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder.

        Args:
            return_layers: 1-based block indices whose outputs (before the final norm) are also returned.
        Returns:
            normed tokens (B, prefix + L or K, D) and the requested intermediate tokens.
        """
        x = self.embed(x_bcs, ids_keep_bk)
        wanted = set(return_layers)
        hidden = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in wanted:
                hidden.append(x)
        return self.norm(x), hidden

    def tokens_to_map(self, tokens_bld: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, prefix + L, D) -> feature map (B, D, *grid), prefix tokens dropped."""
        x = tokens_bld[:, self.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *self.grid)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return (self.embed_dim,)

    @property
    def feature_strides(self) -> tuple[tuple[int, ...], ...]:
        return (self.patch_size,)

    def feature_maps(self, x_bcs: torch.Tensor) -> list[torch.Tensor]:
        """One map: the final tokens on the patch grid, (B, D, *grid)."""
        return [self.tokens_to_map(self.forward_tokens(x_bcs)[0])]

    def forward_masked(self, x_bcs: torch.Tensor, mask_bm: torch.Tensor, fill: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The visible patches alone through the encoder (masked ones are dropped before the patch projection; every
        sample must hide as many), returned on the patch grid (B, D, *grid) with ``fill`` (a (D,) token; zeros when
        None) at the masked patches. The MAE calls :meth:`forward_tokens` with its own ``ids_keep`` instead, which
        keeps the visible tokens in its mask's (random) order."""
        mask_bl = mask_to_grid(mask_bm, x_bcs.shape[2:], self.patch_size).flatten(1)
        n_keep = (~mask_bl).sum(dim=1)
        if bool((n_keep != n_keep[0]).any()):
            raise ValueError(f"every sample must mask as many patches, got {(mask_bl.shape[1] - n_keep).tolist()} masked")
        ids_keep = torch.argsort(mask_bl.to(torch.int8), dim=1, stable=True)[:, : int(n_keep[0])]
        visible = self.forward_tokens(x_bcs, ids_keep)[0][:, self.num_prefix_tokens :]
        out = visible.new_zeros(mask_bl.shape[0], self.num_tokens, self.embed_dim)
        if fill is not None:
            out = out + fill.reshape(1, 1, -1).to(out.dtype)
        out = out.scatter(1, ids_keep[..., None].expand(-1, -1, self.embed_dim), visible)
        return [out.transpose(1, 2).reshape(out.shape[0], self.embed_dim, *self.grid)]

    def forward(self, x_bcs: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x_bcs)[0]


def _gather_tokens(x_bld: torch.Tensor, ids_bk: torch.Tensor) -> torch.Tensor:
    """x[b, ids[b, k], :] -> (B, K, D)."""
    return torch.gather(x_bld, 1, ids_bk[..., None].expand(-1, -1, x_bld.shape[-1]))
