#!/usr/bin/env python
"""Per-item cost of the training augmentation (``data.augment`` presets) on one CPU thread.

    python benchmarks/augment_cost.py [--repeats 30] [--tag cpu-loaded]

Times ``augment_case`` (crop, MONAI transforms, flips) for a 2D 224 px crop from a 256 px image with its mask, a 3D
40x56x40 crop (MSD Hippocampus, nnU-Net's patch) from a 48x64x48 volume and a 3D 96^3 crop from a 120^3 volume,
for each preset, and writes ``benchmarks/results/augment_cost_<tag>.json``. One thread: what one DataLoader worker
spends per item.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CASES = {"2d_224": ((256, 256), (224, 224)), "3d_40x56x40": ((48, 64, 48), (40, 56, 40)),
         "3d_96": ((120, 120, 120), (96, 96, 96))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--presets", default="none,light,nnunet")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from medmae.config import DataConfig
    from medmae.data.augment import make_augment
    from medmae.data.dataset import augment_case

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for name, (shape, crop) in CASES.items():
        image = rng.random((1, *shape), dtype=np.float32)
        mask = (rng.random(shape) > 0.9).astype(np.uint8)
        for preset in args.presets.split(","):
            aug = make_augment(DataConfig(augment={"preset": preset}, flip_axes=list(range(len(shape)))), crop, len(shape))
            for i in range(3):  # warm-up
                augment_case(image, mask, aug, np.random.default_rng(i), crop)
            times = []
            for i in range(args.repeats):
                t = time.perf_counter()
                augment_case(image, mask, aug, np.random.default_rng(100 + i), crop)
                times.append(time.perf_counter() - t)
            out.setdefault(name, {})[preset] = round(1000 * statistics.mean(times), 2)
            print(f"{name:12s} {preset:7s} {out[name][preset]:8.2f} ms / item (mean of {args.repeats})", flush=True)
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "unit": "ms per item, mean over items (transforms fire at random), 1 thread", "ms": out,
              "command": f"python benchmarks/augment_cost.py --repeats {args.repeats} --tag {args.tag}"}
    dest = REPO / "benchmarks" / "results" / f"augment_cost_{args.tag}.json"
    dest.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
