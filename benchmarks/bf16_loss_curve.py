#!/usr/bin/env python
"""bf16 autocast vs fp32 on the CPU demo: the same pretraining run twice, loss curves compared.

    python benchmarks/bf16_loss_curve.py --out benchmarks/results/bf16_loss_curve.json

Prints the mean loss over the last 20 % of steps for each precision, their difference relative to the
step-to-step noise of the fp32 curve, and the wall time of each run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import medmae


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("kind", "train") == "train"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo-2d")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            t = time.time()
            run = medmae.pretrain(preset=args.preset, run_dir=Path(tmp) / precision, max_steps=args.max_steps,
                                  overrides=[f"train.precision={precision}"])
            seconds[precision] = round(time.time() - t, 1)
            curves[precision] = losses(run)
    n = len(curves["fp32"])
    tail = slice(int(0.8 * n), n)
    f32, b16 = np.array(curves["fp32"]), np.array(curves["bf16"])
    noise = float(np.std(np.diff(f32[tail])) / np.sqrt(2))  # step-to-step spread of the fp32 curve
    result = {
        "kind": "bf16_loss_curve", "preset": args.preset, "steps": n, "when": time.strftime("%Y-%m-%d %H:%M"),
        "final_mean_loss": {"fp32": float(f32[tail].mean()), "bf16": float(b16[tail].mean())},
        "difference": float(b16[tail].mean() - f32[tail].mean()),
        "fp32_step_noise": noise,
        "difference_in_noise_units": float((b16[tail].mean() - f32[tail].mean()) / noise) if noise else None,
        "max_abs_difference_per_step": float(np.max(np.abs(b16 - f32))),
        "seconds": seconds, "speedup": round(seconds["fp32"] / seconds["bf16"], 2),
        "curves_every_10": {k: v[::10] for k, v in curves.items()},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: result[k] for k in result if k != "curves_every_10"}, indent=1))


if __name__ == "__main__":
    main()
