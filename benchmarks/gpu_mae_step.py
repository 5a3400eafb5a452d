#!/usr/bin/env python
"""GPU MAE pretraining step: medmae vs MONAI's MaskedAutoEncoderViT at the papers' sizes.

One step = forward + backward + AdamW. Reports images (volumes) per second, step time and peak GPU memory
for fp32 and bf16 autocast, and which attention kernel SDPA can use. Prints one JSON object.

    python benchmarks/gpu_mae_step.py --out benchmarks/results/mae_step_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from medmae.models.mae import MaskedAutoencoderViT
from medmae.models.vit import ViT

CONFIGS = {
    # name: spatial_dims, img, patch, (embed, depth, heads), (dec embed, depth, heads), batch
    "2d-vitb16-224-dec512x8-b64": (2, 224, 16, (768, 12, 12), (512, 8, 16), 64),
    "3d-vitb16-96-dec384x8-b6": (3, 96, 16, (768, 12, 12), (384, 8, 12), 6),
    "2d-vits16-224-dec512x8-b8": (2, 224, 16, (384, 12, 6), (512, 8, 16), 8),
}


def build(impl: str, dims: int, img: int, patch: int, enc, dec):
    if impl == "medmae":
        vit = ViT(dims, (img,) * dims, (patch,) * dims, 1, *enc)
        return MaskedAutoencoderViT(vit, *dec, mask_ratio=0.75, norm_pix_loss=True)
    from monai.networks.nets import MaskedAutoEncoderViT

    from monai.networks.blocks.selfattention import SABlock

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


def bench(impl: str, name: str, amp: bool, steps: int, warmup: int) -> dict:
    dims, img, patch, enc, dec, batch = CONFIGS[name]
    torch.manual_seed(0)
    dev = torch.device("cuda")
    compiled = impl.endswith("-compile")
    impl = impl.removesuffix("-compile")
    model = build(impl, dims, img, patch, enc, dec).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if compiled:
        model = torch.compile(model)
        impl += "-compile"
    x = torch.randn(batch, 1, *(img,) * dims, device=dev)
    torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(warmup + steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = loss_of(impl, model, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    except Exception as e:  # noqa: BLE001 - MONAI's MAE fails under bf16 autocast
        return {"impl": impl, "config": name, "bf16": amp, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    times.sort()
    med = times[len(times) // 2]
    return {"impl": impl, "config": name, "bf16": amp, "batch": batch, "items_per_s": batch / med,
            "step_ms_median": 1000 * med, "step_ms_min": 1000 * times[0],
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30, "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--impls", nargs="*", default=["monai", "medmae"], help="also: medmae-compile (torch.compile)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    runs = [bench(impl, c, amp, args.steps, args.warmup) for c in args.configs for impl in args.impls
            for amp in (False, True)]
    ratios = {}
    for c in args.configs:
        ref = next((r.get("items_per_s") for r in runs if r["config"] == c and r["impl"] == "monai" and not r["bf16"]), None)
        for r in runs:
            if r["config"] == c and ref and "items_per_s" in r:
                ratios[f"{c}:{r['impl']}{'-bf16' if r['bf16'] else '-fp32'}_vs_monai_fp32"] = round(r["items_per_s"] / ref, 3)
    result = {"kind": "mae_step_gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": platform.python_version(), "tf32": True, "when": time.strftime("%Y-%m-%d %H:%M"),
              "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(), "runs": runs, "ratios": ratios}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
