#!/usr/bin/env python
"""GPU MAE pretraining step: medmae vs MONAI's MaskedAutoEncoderViT at the papers' sizes and larger batches.

What it measures, per configuration, implementation, precision and batch size: one training step (forward + backward
+ fused AdamW) after warm-up: images (volumes) per second, median step time, peak GPU memory, the matmul / attention
FLOPs of one step (``torch.utils.flop_counter`` on the eager model) and the MFU: achieved FLOP/s over the dense GEMM
peak measured on this GPU in the same process (bf16 peak for bf16 runs, TF32 peak for fp32 runs). Implementations:
``monai`` (fused attention on; fp32 only: its MAE fails under bf16 autocast), ``medmae``, ``medmae-compile``
(``torch.compile``, as ``train.compile: true``). A batch that does not fit is recorded as out of memory.

One command, on a machine with one CUDA GPU (about 10 minutes on an H100 / H200):

    python benchmarks/gpu_mae_step.py --out benchmarks/results/mae_step_gpu_<gpu>.json

``--smoke`` runs a tiny configuration on the CPU (1 step, no peak), to check the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.vit import ViT

CONFIGS = {
    # name: spatial_dims, img, patch, (embed, depth, heads), (dec embed, depth, heads), batches (paper's first)
    "2d-vitb16-224-dec512x8": (2, 224, 16, (768, 12, 12), (512, 8, 16), (64, 128, 256)),
    "3d-vitb16-96-dec384x8": (3, 96, 16, (768, 12, 12), (384, 8, 12), (6, 12, 24)),
    "2d-vitl16-224-dec512x8": (2, 224, 16, (1024, 24, 16), (512, 8, 16), (64, 128)),
}
SMOKE = {"tiny-2d": (2, 32, 8, (32, 1, 2), (16, 1, 2), (2,))}


def build(impl: str, dims: int, img: int, patch: int, enc, dec):
    if impl.startswith("medmae"):
        vit = ViT(dims, (img,) * dims, (patch,) * dims, 1, *enc)
        return MaskedAutoencoderViT(vit, *dec, mask_ratio=0.75, norm_pix_loss=True)
    from monai.networks.blocks.selfattention import SABlock
    from monai.networks.nets import MaskedAutoEncoderViT

    def pos(width: int) -> str:  # MONAI's 3D sin-cos table needs a width divisible by 6
        return "sincos" if dims == 2 or width % 6 == 0 else "learnable"

    model = MaskedAutoEncoderViT(in_channels=1, img_size=img, patch_size=patch, hidden_size=enc[0], mlp_dim=4 * enc[0],
                                 num_layers=enc[1], num_heads=enc[2], decoder_hidden_size=dec[0],
                                 decoder_mlp_dim=4 * dec[0], decoder_num_layers=dec[1], decoder_num_heads=dec[2],
                                 masking_ratio=0.75, spatial_dims=dims, pos_embed_type=pos(enc[0]),
                                 decoder_pos_embed_type=pos(dec[0]), qkv_bias=True)
    for m in model.modules():
        if isinstance(m, SABlock):
            m.use_flash_attention = True  # its fused SDPA path, as the CPU harness does
    return model


def loss_of(impl: str, model, x):
    if impl.startswith("medmae"):
        return model(x)["loss"]
    pred, mask = model(x)  # MONAI returns per-patch predictions and the mask; MSE on masked patches
    from einops import rearrange

    p = model.patch_size[0] if isinstance(model.patch_size, (tuple, list)) else model.patch_size
    if x.dim() == 4:
        target = rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
    else:
        target = rearrange(x, "b c (d p0) (h p1) (w p2) -> b (d h w) (p0 p1 p2 c)", p0=p, p1=p, p2=p)
    per = (pred.float() - target.float()).pow(2).mean(-1)
    return (per * mask).sum() / mask.sum()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak_tflops(dev: torch.device, dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """Dense square GEMM throughput on this device (the MFU anchor), best of three timings."""
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        sync(dev)
        t = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        sync(dev)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t) / 1e12)
    return best


def step_flops(impl: str, model, x, amp: bool) -> float:
    """Matmul / conv / attention FLOPs of one forward + backward of the eager model."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss_of(impl, model, x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench(impl: str, name: str, cfg, batch: int, amp: bool, steps: int, warmup: int, dev: torch.device,
          peaks: dict[str, float]) -> dict:
    dims, img, patch, enc, dec, _ = cfg
    row = {"impl": impl, "config": name, "batch": batch, "precision": "bf16" if amp else "fp32"}
    torch.manual_seed(0)
    model = x = opt = None
    try:
        model = build(impl, dims, img, patch, enc, dec).to(dev)
        x = torch.randn(batch, 1, *(img,) * dims, device=dev)
        flops = step_flops(impl, model, x, amp)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        run = torch.compile(model) if impl.endswith("-compile") else model
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, t_warm = [], time.perf_counter()
        for i in range(warmup + steps):
            sync(dev)
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_of(impl, run, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t)
            elif i == warmup - 1:
                row["warmup_s"] = round(time.perf_counter() - t_warm, 1)
        med = statistics.median(times)
        peak = peaks.get(row["precision"])
        row.update(items_per_s=round(batch / med, 2), step_ms_median=round(1e3 * med, 2),
                   step_ms_min=round(1e3 * min(times), 2), gflop_per_step=round(flops / 1e9, 3),
                   achieved_tflops=round(flops / med / 1e12, 2),
                   mfu=round(flops / med / 1e12 / peak, 3) if peak else None, loss=round(float(loss.detach()), 4),
                   peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as e:  # noqa: BLE001 - MONAI's MAE fails under bf16 autocast; recorded, not fatal
        row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        del model, x, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (torch.compile compiles here)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=[*CONFIGS, *SMOKE])
    ap.add_argument("--impls", nargs="*", default=["monai", "medmae", "medmae-compile"])
    ap.add_argument("--batches", type=int, nargs="*", help="instead of each configuration's own list")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration on the CPU, one step: checks the script")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    configs = {**CONFIGS, **SMOKE}
    if args.smoke:
        dev, args.configs, args.steps, args.warmup = torch.device("cpu"), list(SMOKE), 1, 1
        args.impls = [i for i in args.impls if i != "medmae-compile"]
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device (--smoke checks the script on the CPU)")
    else:
        dev = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peaks = {} if args.smoke else {"fp32": gemm_peak_tflops(dev, torch.float32), "bf16": gemm_peak_tflops(dev, torch.bfloat16)}
    runs = []
    for c in args.configs:
        for batch in args.batches or configs[c][5]:
            for impl in args.impls:
                for amp in (False, True):
                    if impl == "monai" and amp:
                        continue  # fails: MONAI's mask-token scatter under bf16 autocast
                    runs.append(bench(impl, c, configs[c], batch, amp, args.steps, args.warmup, dev, peaks))
                    print(json.dumps(runs[-1]), flush=True)
    ratios = {}
    for r in runs:
        ref = next((q.get("items_per_s") for q in runs if q["config"] == r["config"] and q["batch"] == r["batch"]
                    and q["impl"] == "monai" and q["precision"] == "fp32"), None)
        if ref and "items_per_s" in r:
            ratios[f"{r['config']}:b{r['batch']}:{r['impl']}-{r['precision']}_vs_monai_fp32"] = round(r["items_per_s"] / ref, 3)
    result = {"kind": "mae_step_gpu", "what": __doc__.split("\n\n")[1].replace("\n", " "),
              "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "python": platform.python_version(), "tf32": dev.type == "cuda",
              "gemm_peak_tflops": {k: round(v, 1) for k, v in peaks.items()}, "when": time.strftime("%Y-%m-%d %H:%M"),
              "runs": runs, "ratios": ratios}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(json.dumps({"gemm_peak_tflops": result["gemm_peak_tflops"], "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
