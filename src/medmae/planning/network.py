"""Candidate networks of each family, what a training step of one costs (FLOPs, memory), and the speed of the
device in FLOP/s measured once on a real forward/backward.

The cost of a candidate is counted, not guessed: its task model is built on the ``meta`` device (no memory, no
weights) and one forward pass runs under :class:`torch.utils.flop_counter.FlopCounterMode`, with the tensors
autograd saves for the backward pass summed by a saved-tensor hook. A training step is taken as 3x the forward
FLOPs (backward = 2x forward). The device's throughput comes from timed forward/backward passes of the smallest
candidate at two batch sizes (throughput and a fixed per-step cost), so predicted step time = fixed cost + FLOPs /
measured FLOP/s; the chosen candidate is then timed itself (``docs/howto/plan-and-budget.md``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from medmae.config import FinetuneConfig
from medmae.models.registry import build_encoder, build_task_head

BACKWARD_FACTOR = 3.0  # forward + backward FLOPs of a step = 3x the forward's
ADAM_BYTES_PER_PARAM = 16  # fp32 weight, gradient and two AdamW moments (SGD momentum: one moment less, kept)
WORKSPACE = 1.3  # allocator slack, cuDNN workspaces, the input batch
BF16_ACTIVATIONS = 0.6  # share of fp32 activation memory left under bf16 autocast
ASSUMED_CUDA_FLOPS = 5e13  # FLOP/s assumed for a GPU that is not on this machine (an H100 runs such steps at ~50-150 T)
ASSUMED_CUDA_BYTES = 24 * 2**30  # GPU memory assumed when no GPU is visible
CPU_MEMORY_SHARE = 0.5  # of the machine's RAM a CPU run may use


@dataclass(frozen=True)
class Network:
    """One candidate: its ``model`` config keys (family section included), smallest first within a family."""

    family: str
    label: str
    model: dict[str, Any]


@dataclass(frozen=True)
class Cost:
    """Per sample of one training step at a given crop: FLOPs (forward + backward), activation bytes, parameters."""

    flops: float
    activation_bytes: float
    params: int

    def step_bytes(self, batch: int, bf16: bool) -> float:
        """Training memory of a step at ``batch``: weights, gradients and optimizer state, plus activations."""
        act = self.activation_bytes * batch * (BF16_ACTIVATIONS if bf16 else 1.0)
        return WORKSPACE * (self.params * ADAM_BYTES_PER_PARAM + act)


def resenc_networks(stages: int, dims: int) -> list[Network]:
    """ResEnc U-Nets from narrow and shallow to nnU-Net's ResEnc-M block layout; widths double per stage up to
    nnU-Net's cap (320 in 3D, 512 in 2D)."""
    cap = 320 if dims == 3 else 512
    light = [1] + [min(2, 1 + i) for i in range(1, stages)]
    heavy = [1, 3, 4, 6, 6, 6, 6][:stages]
    rungs = [(8, light), (16, light), (24, light), (32, light), (32, heavy)]
    out = []
    for base, blocks in rungs:
        widths = [min(base * 2**i, cap) for i in range(stages)]
        out.append(Network("resenc", f"ResEnc {stages} stages, widths {widths}, blocks {blocks}",
                           {"arch": "resenc", "patch_size": 1, "size": None,
                            "resenc": {"widths": widths, "blocks": list(blocks), "decoder_blocks": 1, "kernel_size": 3}}))
    return out


def vit_networks(patch: int) -> list[Network]:
    return [Network("vit", f"ViT {size[4:].upper()}/{patch}", {"arch": "vit", "patch_size": patch, "size": size})
            for size in ("vit-t", "vit-s", "vit-b")]


def swin_networks() -> list[Network]:
    rungs = [(48, [2, 2, 2, 2], [3, 6, 12, 24]), (96, [2, 2, 6, 2], [3, 6, 12, 24]), (128, [2, 2, 6, 2], [4, 8, 16, 32])]
    return [Network("swin", f"Swin embed {e}, depths {d}", {"arch": "swin", "patch_size": 4, "size": None,
                                                            "swin": {"embed_dim": e, "depths": d, "num_heads": h}})
            for e, d, h in rungs]


class _CpuLinspace(TorchFunctionMode):
    """Under ``torch.device('meta')``, ``torch.linspace`` stays on the CPU: the stochastic-depth rates of the
    encoders are read with ``.tolist()``, which a meta tensor cannot give."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def task_config(model: dict[str, Any], task: str, dims: int, crop: Sequence[int], channels: int) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"task": task, "head": {"pool": "mean"}, "model": {
        **model, "spatial_dims": dims, "img_size": list(crop), "in_channels": channels}})


def build(cfg: FinetuneConfig, num_outputs: int, device: str | torch.device = "meta") -> torch.nn.Module:
    """The task model of ``cfg`` (on ``meta``: shapes only, nothing allocated)."""
    if str(device) == "meta":
        with torch.device("meta"), _CpuLinspace():
            return build_task_head(build_encoder(cfg.model), num_outputs, cfg)
    return build_task_head(build_encoder(cfg.model), num_outputs, cfg).to(device)


def _first(out: Any) -> torch.Tensor:
    return out if torch.is_tensor(out) else out[0]


def cost(cfg: FinetuneConfig, num_outputs: int) -> Cost:
    """FLOPs and memory of one training sample through ``cfg``'s task model, counted on the meta device."""
    model = build(cfg, num_outputs).train()
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    x = torch.zeros(1, cfg.model.in_channels, *cfg.model.img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return Cost(BACKWARD_FACTOR * counter.get_total_flops(), float(saved[0]), sum(p.numel() for p in model.parameters()))


def measure_step_s(cfg: FinetuneConfig, num_outputs: int, batch: int, device: torch.device, bf16: bool,
                   repeats: int = 2) -> float:
    """Seconds of one real forward/backward of ``cfg``'s model at ``batch`` on ``device`` (the best of ``repeats``
    after one warm-up pass)."""
    torch.manual_seed(0)
    model = build(cfg, num_outputs, device).train()
    x = torch.randn(batch, cfg.model.in_channels, *cfg.model.img_size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = _first(model(x)).float().mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return max(min(times), 1e-9)


def speed_model(flops_per_sample: float, small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(FLOP/s, fixed seconds per step) from the step times of one network at two batch sizes ``(batch, seconds)``:
    the slope is the throughput, the intercept the per-step cost no batch amortises (small 3D nets on a CPU are
    mostly the latter). Timing noise that makes the larger batch no slower gives a pure-throughput model."""
    (b1, t1), (b2, t2) = small, large
    if b2 <= b1 or t2 <= t1:
        return flops_per_sample * b2 / t2, 0.0
    rate = flops_per_sample * (b2 - b1) / (t2 - t1)
    return rate, max(0.0, t1 - flops_per_sample * b1 / rate)


def auto_precision(device: str) -> tuple[bool, str]:
    """``--precision auto``: bf16 autocast on a GPU, fp32 on a CPU. A CPU with bf16 instructions (AVX512-BF16 or
    AMX) is named in the reason: there ``--precision bf16`` ran the planned Hippocampus U-Net 1.5x the steps in the
    same minutes (+0.016 Dice) but lost 0.011 Dice at equal steps, so it stays a choice
    (``benchmarks/results/precision_dev_split_cpu.json``)."""
    if device == "cuda":
        return True, "GPU: bf16 autocast"
    found = [name for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
             if getattr(torch.cpu, probe, lambda: False)()]
    if found:
        return False, (f"CPU: fp32 (this CPU computes bf16 natively ({found[0]}): --precision bf16 buys ~1.5x the "
                       "steps in a budget, at a lower Dice per step)")
    return False, "CPU: fp32 (no bf16 instructions: bf16 would be emulated and slower)"


def device_memory(device: str) -> tuple[float, str]:
    """Bytes a run may use on ``device`` and where the figure comes from."""
    if device == "cuda":
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return float(total) * 0.9, f"{torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB)"
        return float(ASSUMED_CUDA_BYTES), f"assumed GPU of {ASSUMED_CUDA_BYTES / 2**30:.0f} GiB (no GPU visible here)"
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 * 2**30
    return float(ram) * CPU_MEMORY_SHARE, f"{CPU_MEMORY_SHARE:.0%} of {ram / 2**30:.0f} GiB RAM"


def scaled(c: Cost, factor: float) -> Cost:
    """The cost at a crop ``factor`` times as many voxels (FLOPs and activations scale with the voxels)."""
    return Cost(c.flops * factor, c.activation_bytes * factor, c.params)


def voxels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))
