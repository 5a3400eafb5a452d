#!/usr/bin/env python
"""MAE pretraining step on the CPU, medmae vs MONAI's MaskedAutoEncoderViT, compared step by step in one process.

Every implementation ("arm") is built once; then each round runs one training step (forward + backward + optimizer
step) of every arm, in an order that rotates from round to round. A noisy minute on the shared machine slows the
steps of all arms of that round alike, so the ratio of the medians moves far less than when each implementation runs
alone for a minute. The ratio to MONAI fp32 gets a 95 % bootstrap interval over rounds.

Arms (``--arms``):

  monai-fp32        monai.networks.nets.MaskedAutoEncoderViT built by the shared harness (``../shared/bench``,
                    ``build_monai``, fused attention on), torch's default AdamW (as a MONAI user trains it)
  medmae-fp32       medmae's MaskedAutoencoderViT and the optimizer medmae trains it with (AdamW, fused)
  medmae-bf16       the same model and optimizer, forward under CPU bf16 autocast (``train.precision: bf16``)
  medmae-fp32-adamw medmae's model with torch's default AdamW: what the model alone buys
  medmae-bf16-compile, medmae-fp32-compile   ``torch.compile`` (``train.compile: true``); warm-up compiles

Configurations: ``2d`` ViT-S/16 224² batch 8, ``3d`` ViT-S/16 96³ batch 2, both with the MAE paper's 512x8 decoder
and mask ratio 0.75 (the sizes of ``../shared/reference/perf.md``); ``tiny`` (64², a small ViT) checks the script.

    python benchmarks/mae_step.py --rounds 20 --out benchmarks/results/mae_step_cpu.json
    python benchmarks/mae_step.py --configs tiny --rounds 3          # a quick check that it runs
    python benchmarks/mae_step.py --threads 1 --clock cpu            # on a busy machine: CPU time, one thread
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "2d": dict(spatial_dims=2, img_size=224, embed_dim=384, depth=12, num_heads=6, batch=8),
    "3d": dict(spatial_dims=3, img_size=96, embed_dim=384, depth=12, num_heads=6, batch=2),
    "tiny": dict(spatial_dims=2, img_size=64, embed_dim=96, depth=2, num_heads=3, batch=4, decoder_embed_dim=64,
                 decoder_depth=2, decoder_num_heads=4),
}
DEFAULTS = dict(patch_size=16, in_chans=1, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                mask_ratio=0.75, sdpa=True)
ARMS = ("monai-fp32", "medmae-fp32", "medmae-bf16", "medmae-fp32-adamw", "medmae-fp32-compile", "medmae-bf16-compile")
TARGETS = {"medmae-fp32": 1.1, "medmae-bf16": 1.7}  # x MONAI fp32 on this CPU (issue 14)


def harness(path: Path):
    """The shared harness module (``mae_step_bench.py``), imported from ``path``."""
    if not (path / "mae_step_bench.py").is_file():
        sys.exit(f"harness not found in {path} (give --harness or MEDMAE_BENCH_HARNESS)")
    sys.path.insert(0, str(path))
    import mae_step_bench

    return mae_step_bench


class Arm:
    """One implementation with its optimizer and autocast setting; ``step()`` returns the seconds of one step."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_of, bf16: bool,
                 x: torch.Tensor, compiled: bool = False):
        self.name, self.model, self.optimizer, self.loss_of, self.bf16, self.x = name, model, optimizer, loss_of, bf16, x
        self.step_model = torch.compile(model) if compiled else model
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, clock=time.perf_counter) -> float:
        t0 = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_of(self.step_model(self.x))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = clock() - t0
        self.losses.append(float(loss.detach()))
        return dt


def build_arms(names: list[str], cfg: dict, hb) -> list[Arm]:
    """The arms of one configuration; medmae arms of the same precision share nothing but the input."""
    from harness_factory import medmae_mae
    from medmae.config import OptimConfig
    from medmae.engine.optim import build_optimizer, param_groups

    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], cfg["in_chans"], *(cfg["img_size"],) * cfg["spatial_dims"])
    arms = []
    for name in names:
        torch.manual_seed(0)
        if name.startswith("monai"):
            model = hb.build_monai(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        else:
            model = medmae_mae(**cfg)
            if name.endswith("-adamw"):
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            else:  # as the trainer builds it (engine.optim, optim.fused: true)
                opt = build_optimizer(param_groups(model, 0.05), OptimConfig(lr=1e-4), lr=1e-4)
        model.train()
        arms.append(Arm(name, model, opt, hb.first_loss, "bf16" in name, x, compiled=name.endswith("-compile")))
    return arms


def bootstrap_ratio(ref: list[float], arm: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of median(ref) / median(arm), resampling rounds (pairs stay together)."""
    rng = random.Random(seed)
    k = len(ref)
    stats = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        stats.append(statistics.median(ref[i] for i in idx) / statistics.median(arm[i] for i in idx))
    stats.sort()
    return stats[int(0.025 * n)], stats[int(0.975 * n) - 1]


def summarise(arms: list[Arm], cfg: dict, ref_name: str = "monai-fp32") -> dict:
    ref = next((a for a in arms if a.name == ref_name), None)
    out = {}
    for a in arms:
        med = statistics.median(a.times)
        row = {"items_per_s": round(cfg["batch"] / med, 3), "step_ms_median": round(1e3 * med, 1),
               "step_ms_min": round(1e3 * min(a.times), 1), "step_ms_max": round(1e3 * max(a.times), 1),
               "steps": len(a.times), "loss_last": round(a.losses[-1], 4)}
        if ref is not None and a is not ref:
            lo, hi = bootstrap_ratio(ref.times, a.times)
            paired = statistics.median(r / t for r, t in zip(ref.times, a.times))
            row[f"vs_{ref_name}"] = {"ratio": round(statistics.median(ref.times) / med, 3), "ci95": [round(lo, 3), round(hi, 3)],
                                     "median_paired_ratio": round(paired, 3), "target": TARGETS.get(a.name)}
        out[a.name] = row
    return out


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def run_config(name: str, arms_wanted: list[str], rounds: int, warmup: int, hb, log, clock: str = "wall") -> dict:
    cfg = {**DEFAULTS, **CONFIGS[name]}
    arms = build_arms(arms_wanted, cfg, hb)
    t0 = time.perf_counter()
    for a in arms:
        for _ in range(warmup):  # first steps allocate, pick kernels, compile
            a.step()
    log(f"{name}: warm-up {time.perf_counter() - t0:.0f} s")
    for r in range(rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]  # rotate: no arm always runs first or after another
        for a in order:
            a.times.append(a.step(CLOCKS[clock]))
        log(f"{name} round {r + 1}/{rounds}: " + " ".join(f"{a.name} {1e3 * a.times[-1]:.0f} ms" for a in arms))
    return {"config": {k: v for k, v in cfg.items() if k != "sdpa"}, "clock": clock, "arms": summarise(arms, cfg),
            "raw_step_s": {a.name: [round(t, 4) for t in a.times] for a in arms}}


def machine(hb) -> dict:
    import matmul_peak

    peak = matmul_peak.measure_peak(("fp32", "bf16"), (2048,), repeats=3, min_time=0.2)["best"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"gemm_2048_gflops": {k: v["gflops_median"] for k, v in peak.items()}, "loadavg": load,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("MEDMAE_BENCH_HARNESS", str(HERE.parent.parent / "shared" / "bench"))
    ap.add_argument("--harness", type=Path, default=Path(default), help="folder of mae_step_bench.py (default: %(default)s)")
    ap.add_argument("--configs", nargs="+", default=["2d", "3d"], choices=list(CONFIGS))
    ap.add_argument("--arms", nargs="+", default=["monai-fp32", "medmae-fp32", "medmae-bf16"], choices=ARMS)
    ap.add_argument("--rounds", type=int, default=20, help="steps of every arm, interleaved")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of every arm first (compile: 3 or more)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="wall: elapsed time (the figure that counts, on a quiet machine); cpu: the process's CPU time, "
                         "which other processes on a busy machine hardly move (with --threads 1: the work of a step)")
    ap.add_argument("--note", default="", help="free text kept in the result, e.g. 'machine loaded'")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    hb = harness(args.harness)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    result = {"kind": "mae_step_interleaved", "when": time.strftime("%Y-%m-%d %H:%M"), "note": args.note,
              "versions": {"python": platform.python_version(), "torch": torch.__version__}, "machine_before": machine(hb),
              "configs": {}}
    try:
        import monai

        result["versions"]["monai"] = monai.__version__
    except ImportError:
        pass
    for c in args.configs:
        result["configs"][c] = run_config(c, args.arms, args.rounds, args.warmup, hb, log, args.clock)
    result["machine_after"] = machine(hb)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    summary = {c: {a: {"items_per_s": r["items_per_s"], **({"vs_monai": r["vs_monai-fp32"]} if "vs_monai-fp32" in r else {})}
                   for a, r in v["arms"].items()} for c, v in result["configs"].items()}
    print(json.dumps({"machine": [result["machine_before"], result["machine_after"]], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
