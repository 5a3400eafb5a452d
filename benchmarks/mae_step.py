#!/usr/bin/env python
"""MAE pretraining step throughput: medmae vs MONAI's MaskedAutoEncoderViT, side by side, on this machine.

Runs the shared harness (``../shared/bench/mae_step_bench.py``; ``--harness`` or ``$MEDMAE_BENCH_HARNESS``) for each
configuration and implementation, interleaved and repeated, and prints one JSON object with the medians and the
ratios to MONAI (fp32 throughput, bf16 throughput, peak memory, MFU against the in-run matmul peak).

    python benchmarks/mae_step.py --repeats 2 --out benchmarks/results/mae_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "2d-vits-224-b8": ["--dims", "2", "--preset", "vit-s", "--batch", "8"],
    "3d-vits-96-b2": ["--dims", "3", "--preset", "vit-s", "--batch", "2"],
}
IMPLS = {
    "monai-fp32": ["--impl", "monai", "--sdpa", "on"],
    "monai-fp32-default": ["--impl", "monai"],
    "medmae-fp32": ["--impl", "custom:harness_factory:medmae_mae", "--custom-path", str(HERE)],
    "medmae-bf16": ["--impl", "custom:harness_factory:medmae_mae", "--custom-path", str(HERE), "--amp", "bf16"],
}
KEYS = ("items_per_s", "step_ms_median", "peak_rss_mb", "mfu", "gflop_per_step", "peak_fp32_gflops", "peak_bf16_gflops")


def run_one(harness: Path, config: list[str], impl: list[str], steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, str(harness / "mae_step_bench.py"), *config, *impl, "--steps", str(steps), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE)})
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    return next(r for r in rows if r.get("kind") == "mae_step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.environ.get("MEDMAE_BENCH_HARNESS", str(HERE.parent.parent / "shared" / "bench"))
    ap.add_argument("--harness", default=default, help="folder with mae_step_bench.py (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of every run")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--impls", nargs="*", default=list(IMPLS), choices=list(IMPLS))
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args, extra = ap.parse_known_args()
    harness = Path(args.harness)
    if not (harness / "mae_step_bench.py").is_file():
        sys.exit(f"harness not found in {harness} (give --harness or MEDMAE_BENCH_HARNESS)")
    raw: dict[str, dict[str, list[dict]]] = {c: {i: [] for i in args.impls} for c in args.configs}
    for rep in range(args.repeats):
        for c in args.configs:
            for i in args.impls:
                r = run_one(harness, CONFIGS[c], IMPLS[i], args.steps, extra)
                raw[c][i].append(r)
                print(f"[{rep + 1}/{args.repeats}] {c} {i}: {r.get('items_per_s', r.get('error'))}", file=sys.stderr)
    result = {"kind": "medmae_vs_monai_mae_step", "when": time.strftime("%Y-%m-%d %H:%M"), "configs": {}}
    for c in args.configs:
        med = {}
        for i in args.impls:
            ok = [r for r in raw[c][i] if "error" not in r]
            med[i] = {k: statistics.median(r[k] for r in ok) for k in KEYS if ok and all(r.get(k) is not None for r in ok)}
            med[i]["runs"] = len(ok)
            if len(ok) < len(raw[c][i]):
                med[i]["errors"] = [r["error"] for r in raw[c][i] if "error" in r]
        ref = med.get("monai-fp32", {}).get("items_per_s")
        ratios = {}
        if ref:
            for i in args.impls:
                if "items_per_s" in med[i]:
                    ratios[f"{i}_vs_monai_fp32_sdpa"] = round(med[i]["items_per_s"] / ref, 3)
            if "peak_rss_mb" in med.get("medmae-fp32", {}) and "peak_rss_mb" in med["monai-fp32"]:
                ratios["medmae_fp32_peak_rss_vs_monai"] = round(med["medmae-fp32"]["peak_rss_mb"] / med["monai-fp32"]["peak_rss_mb"], 3)
        result["configs"][c] = {"median": med, "ratios": ratios, "runs": raw[c]}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    summary = {c: v["ratios"] | {"items_per_s": {i: m.get("items_per_s") for i, m in v["median"].items()}}
               for c, v in result["configs"].items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
