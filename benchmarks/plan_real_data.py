#!/usr/bin/env python
"""How long ``medmae plan`` takes on the real datasets, and what it decides, device speed measured included.

    python benchmarks/plan_real_data.py [--data-root DIR] [--budget 30m] [--devices cpu,cuda] [--note "..."]

Plans MSD Hippocampus (seg), the chest X-ray training folder (cls) and DRIVE (seg, through a manifest of its
20 + 20 images and first manual annotations) for each device; ``cuda`` without a visible GPU plans with the
assumed GPU speed and memory (``medmae.planning.network``). Writes ``benchmarks/results/plan_real_data.json``
with the seconds of each plan (fingerprint + cost counting + speed measurement + writing and validating the
file), the machine's load average, and the decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from real_data import drive_manifest  # the benchmark beside this one (same folder)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("MEDMAE_DATA") or str(REPO.parent / "shared" / "data"))
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "plan_real_data.json"))
    args = ap.parse_args()
    root = Path(args.data_root)
    if not root.is_dir():
        sys.exit(f"data root {root} not found: give --data-root or set MEDMAE_DATA")
    import torch

    from medmae.tasks.plan import plan

    work = Path(tempfile.mkdtemp(prefix="plan-bench-"))
    datasets = {
        "hippocampus": (root / "hippocampus_msd" / "Task04_Hippocampus", "seg"),
        "chestxray": (root / "chestxray_pneumonia_224" / "dataset" / "train", "cls"),
        "drive": (drive_manifest(root, work), "seg"),
    }
    results = []
    for device in args.devices.split(","):
        for name, (source, task) in datasets.items():
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            path, p = plan(source, task=task, budget=args.budget, device=device, out=work / f"{name}_{device}.yaml")
            seconds = time.perf_counter() - t0
            d = p["plan"]["decisions"]
            row = {"dataset": name, "task": task, "device": device, "seconds": round(seconds, 2),
                   "load_average_1min": round(load0, 2), "spacing": d["spacing"]["value"], "crop": d["crop"]["value"],
                   "intensity": d["intensity"]["value"], "in_channels": d["in_channels"]["value"],
                   "network": d["network"], "batch": d["batch"], "predicted_step_s": d["predicted_step_s"],
                   "predicted_steps": d["predicted_steps"], "predicted_epochs": d["predicted_epochs"],
                   "speed": d["device"]["speed"], "tflops": d["device"]["tflops"], "warnings": p["plan"]["warnings"]}
            results.append(row)
            print(json.dumps(row))
    out = {"benchmark": "medmae plan on the real datasets", "budget": args.budget, "note": args.note,
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                       "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
