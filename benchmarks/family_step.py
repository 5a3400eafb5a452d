#!/usr/bin/env python
"""One pretraining step (forward + backward + clipping + optimizer) of the Swin (VIS-MAE) and ResEnc (Revisiting
MAE 3D) families, at the CPU demo size and at the paper size, in fp32 and under bf16 autocast.

Every (config, precision) runs in its own subprocess, so ``ru_maxrss`` is that run's peak and an out-of-memory
kill costs one entry, not the benchmark. The model, its optimizer and its schedule come from the preset (exactly
what ``medmae pretrain`` builds); inputs are random images in [0, 1] with per-sample seeds.

    python benchmarks/family_step.py --out benchmarks/results/family_step_cpu.json
    python benchmarks/family_step.py --device cuda --configs swin-paper resenc-paper --batch swin-paper=64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (preset, batch on CPU, timed steps on CPU, extra overrides)
CONFIGS: dict[str, tuple[str, int, int, tuple[str, ...]]] = {
    "swin-demo": ("demo-swin-2d", 32, 5, ()),
    "swin-paper": ("vismae-swin-2d", 8, 3, ()),  # 224 px; the paper's 640 is a multi-GPU global batch
    "resenc-demo": ("demo-resenc-3d", 2, 5, ()),
    "resenc-demo-channels-last": ("demo-resenc-3d", 2, 5, ()),
    "resenc-paper": ("resenc-mae-3d", 1, 2, ()),  # ResEnc-L at 160^3; the paper's batch is 2
    "resenc-paper-channels-last": ("resenc-mae-3d", 1, 2, ()),
}
DEFAULT = [c for c in CONFIGS if c != "resenc-paper-channels-last"]  # the slowest CPU run only once
PRECISIONS = ("fp32", "bf16")


def run_one(name: str, precision: str, batch: int, steps: int, warmup: int, device: str) -> dict:
    """Build the preset's MAE and optimizer, time ``steps`` steps after ``warmup``; returns one result row."""
    import torch

    from medmae.config import PretrainConfig, load_config
    from medmae.engine.optim import build_optimizer, param_groups
    from medmae.models.registry import build_mae
    from medmae.models.resenc import use_channels_last

    preset, _, _, overrides = CONFIGS[name]
    cfg = load_config(PretrainConfig, preset=preset, overrides=[*overrides, f"train.batch_size={batch}"])
    dev = torch.device(device)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest 3D kernels (nnU-Net does)
    torch.manual_seed(0)
    model = build_mae(cfg)
    if name.endswith("channels-last"):
        use_channels_last(model)
    model.to(dev).train()
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.base_lr * batch / 256
    optimizer = build_optimizer(param_groups(model, cfg.optim.weight_decay), cfg.optim, lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.rand(batch, cfg.model.in_channels, *cfg.model.img_size, device=dev)
    seeds = torch.arange(batch, dtype=torch.int64)
    clip = cfg.optim.clip_grad or float("inf")

    def step() -> float:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x, seeds)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu, losses = [], [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    return {
        "preset": preset,
        "precision": precision,
        "device": device,
        "batch": batch,
        "img_size": list(cfg.model.img_size),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "encoder_params_m": round(sum(p.numel() for p in model.encoder.parameters()) / 1e6, 3),
        "optimizer": cfg.optim.name,
        "steps": steps,
        "warmup": warmup,
        "step_ms_median": round(med * 1e3, 1),
        "step_ms_min": round(min(times) * 1e3, 1),
        # CPU seconds of all threads: less sensitive than wall time to other work on a shared machine
        "cpu_ms_median": round(statistics.median(cpu) * 1e3, 1),
        "items_per_s": round(batch / med, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_peak_alloc_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev.type == "cuda" else None,
        "loss_first_last": [round(losses[0], 5), round(losses[-1], 5)],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=list(CONFIGS))
    ap.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default: per config)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", nargs="*", default=[], metavar="CONFIG=N", help="batch size per config")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--one", nargs=5, metavar=("CONFIG", "PRECISION", "BATCH", "STEPS", "WARMUP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, precision, batch, steps, warmup = args.one
        print(json.dumps(run_one(name, precision, int(batch), int(steps), int(warmup), args.device)))
        return
    batches = {k: int(v) for k, v in (b.split("=", 1) for b in args.batch)}
    result = {"kind": "family_step", "when": time.strftime("%Y-%m-%d %H:%M"), "device": args.device,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_avg_start": list(os.getloadavg()), "results": {}}
    for name in args.configs:
        _, cpu_batch, cpu_steps, _ = CONFIGS[name]
        batch, steps = batches.get(name, cpu_batch), args.steps or cpu_steps
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--device", args.device, "--one", name, precision, str(batch), str(steps),
                   str(args.warmup)]
            t0 = time.time()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
                row = rows[-1] if rows and proc.returncode == 0 else {
                    "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                    "returncode": proc.returncode}
            except subprocess.TimeoutExpired:
                row = {"error": f"timed out after {args.timeout:.0f} s"}
            row["wall_s"] = round(time.time() - t0, 1)
            result["results"].setdefault(name, {})[precision] = row
            print(f"{name} {precision}: {row.get('items_per_s', row.get('error'))}", file=sys.stderr)
    result["load_avg_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
