#!/usr/bin/env python
"""Packed 2D pools: pack throughput, packed size, warm start-up, loader throughput, memory vs pool size.

    python benchmarks/pack_2d.py --n 200000 --workers 2 --out benchmarks/results/pack_2d.json

Generates a synthetic pool of ``--n`` 8-bit 224x224 PNG radiograph-like images (smooth anatomy-like field plus
noise; never in CI), packs it with ``medmae data pack`` (preset ``demo-2d``: minmax), then measures:

- pack throughput (images/s in all and per worker) and packed bytes vs the raw uint8 pixels (target <= 1.5x);
- warm start-up: a fresh process opening the pack and building the training dataset (target <= 10 s at 200 000);
- loader throughput: DataLoader with ``--loader-workers`` processes in the training order (shard windows when the
  pack has more shards than a reader keeps open; also the global permutation, for comparison), each item a
  random resized crop to 224 + flip + a random intensity scale/shift (target >= 1500 images/s on 2 cores),
  page cache warm; also the CPU time of one item (``process_time``, robust to a loaded machine) and the
  throughput that CPU time allows on the loader workers;
- memory: resident set size of the loader (main process + workers) for a pool of n/10 and of n (flat?);
- figures extrapolated to 2.5 M images next to the measured ones.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIZE = 224
TARGET_N = 2_500_000


def _write_chunk(root: Path, lo: int, hi: int, seed: int) -> None:
    rng = np.random.default_rng([seed, lo])
    for k in range(lo, hi):
        folder = root / "train" / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        low = torch.from_numpy(rng.normal(size=(1, 1, 8, 8)).astype(np.float32))
        field = F.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0, 0].numpy()
        img = 128 + 40 * field + rng.normal(0, 6, (SIZE, SIZE))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{k:07d}.png", compress_level=1)


def write_pool(root: Path, n: int, seed: int = 0, workers: int = 1) -> Path:
    """``n`` PNG images under root/train/{a,b}/ (two class folders), each a smooth field plus noise; chunks of
    10 000 images written by ``workers`` processes."""
    chunks = [(root, lo, min(lo + 10_000, n), seed) for lo in range(0, n, 10_000)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.starmap(_write_chunk, chunks)
    return root


def pack(src: Path, out: Path, workers: int) -> dict:
    from medmae.tasks.pack import pack_sources

    t, cpu0 = time.perf_counter(), os.times()
    result = pack_sources([src], preset="demo-2d", out=out, workers=workers)
    wall, cpu1 = time.perf_counter() - t, os.times()
    cpu = sum(cpu1[k] - cpu0[k] for k in range(4))  # this process and its (joined) packing workers
    n = result.manifest["n_cases"]
    packed = sum(s["bytes"] for s in result.manifest["shards"]) + (out / "index.npz").stat().st_size
    return {"images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 1),
            "images_per_s_per_worker": round(n / wall / workers, 1), "cpu_ms_per_image": round(cpu / n * 1e3, 2),
            "cpu_bound_images_per_s_per_worker": round(n / cpu, 1), "packed_bytes": packed,
            "uint8_pixel_bytes": n * SIZE * SIZE, "size_vs_uint8": round(packed / (n * SIZE * SIZE), 3),
            "bytes_per_image": round(packed / n)}


STARTUP = """
import sys, time
t0 = time.perf_counter()
from medmae.config import PretrainConfig, load_config
from medmae.data.dataset import Augment, CaseDataset
from medmae.data.pipeline import prepare_pool, resolve_parts
t1 = time.perf_counter()
cfg = load_config(PretrainConfig, preset="demo-2d")
cfg.data.path = sys.argv[1]
pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data, show_progress=False)
ds = CaseDataset(pool.prepared, (224, 224), augment=Augment((224, 224)), seed=0)
ds[(0, len(ds) - 1)]
print(time.perf_counter() - t1, t1 - t0)
"""


def startup(pack_dir: Path) -> dict:
    """Seconds from imports done to the first item of the training dataset, in a fresh process (warm page cache)."""
    runs = []
    for _ in range(2):  # the first warms the page cache
        out = subprocess.run([sys.executable, "-c", STARTUP, str(pack_dir)], capture_output=True, text=True, check=True)
        runs.append([float(v) for v in out.stdout.split()[-2:]])
    return {"warm_startup_s": round(runs[-1][0], 2), "imports_s": round(runs[-1][1], 2)}


class Intensity(torch.utils.data.Dataset):
    """The training items with a random intensity scale and shift on top (a stand-in for intensity augmentation)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, key):
        item = self.ds[key]
        g = np.random.default_rng(int(item["seed"]))
        item["image"] = item["image"] * float(g.uniform(0.9, 1.1)) + float(g.uniform(-0.05, 0.05))
        return item


def memory_mb(pids: list[int], file: str = "status", field: str = "VmRSS") -> float:
    """Sum over ``pids`` of a ``/proc/<pid>/<file>`` field in MB: ``VmRSS`` (status) counts pages the forked
    workers share once per process, ``Pss`` (smaps_rollup) splits them among the processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def loader(pack_dir: Path, workers: int, batch: int, batches: int, grouped: bool = True) -> dict:
    """Images/s of the training DataLoader over the pack, and its memory (main + workers) at the end."""
    from medmae.data.dataset import Augment, CaseDataset, EpochBatchSampler
    from medmae.data.packed import load_pack_source, packed_cases, shard_groups
    from medmae.data.preprocess import Preprocessing

    prepared = packed_cases(load_pack_source(pack_dir), Preprocessing(2, 1, {"name": "minmax"}, orientation=None))
    groups = shard_groups(prepared) if grouped else None  # what pretraining uses (None: few shards, global order)
    ds = Intensity(CaseDataset(prepared, (SIZE, SIZE), augment=Augment((SIZE, SIZE), (0.2, 1.0), (1,)), seed=0))
    for shard in pack_dir.rglob("shard-*.b2z"):  # warm page cache: the figure is the loader's, not the disk's
        with open(shard, "rb") as f:
            while f.read(1 << 24):
                pass
    sampler = EpochBatchSampler(len(ds), batch, seed=0, epoch=0, epochs=1 + batches * batch // len(ds), groups=groups)
    keys = [k for b in sampler for k in b][:500]  # the training order's first items
    t = time.process_time()
    for key in keys:
        ds[key]
    item_cpu_ms = (time.process_time() - t) / len(keys) * 1e3  # CPU time: robust to a loaded machine
    dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, persistent_workers=False)
    it = iter(dl)
    next(it)  # workers started
    t, seen = time.perf_counter(), 0
    for _ in range(batches):
        seen += len(next(it)["image"])
    wall = time.perf_counter() - t
    children = [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
    pids = [os.getpid(), *children]
    mem, pss = memory_mb(pids), memory_mb(pids, "smaps_rollup", "Pss")
    pss_anon = memory_mb(pids, "smaps_rollup", "Pss_Anon")  # what page cache cannot give back (not the mapped index)
    del it, dl
    return {"order": "shard windows" if groups is not None else "global permutation",
            "images_per_s": round(seen / wall, 1),
            "images": seen, "rss_mb_main_plus_workers": round(mem, 1), "pss_mb_main_plus_workers": round(pss, 1),
            "pss_anon_mb_main_plus_workers": round(pss_anon, 1),
            "item_cpu_ms": round(item_cpu_ms, 3), "cpu_bound_images_per_s_on_workers": round(workers * 1e3 / item_cpu_ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="packing processes")
    ap.add_argument("--loader-workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--loaded", action="store_true", help="mark the figures as measured on a loaded machine")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pack_2d.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        os.environ["MEDMAE_CACHE"] = str(tmp / "cache")
        t = time.perf_counter()
        write_pool(tmp / "small", max(args.n // 10, args.batch * 2), seed=1, workers=args.workers)
        write_pool(tmp / "pool", args.n, workers=args.workers)
        generate_s = time.perf_counter() - t
        packed = pack(tmp / "pool", tmp / "pack", args.workers)
        pack(tmp / "small", tmp / "pack-small", args.workers)
        start = startup(tmp / "pack")
        load_small = loader(tmp / "pack-small", args.loader_workers, args.batch, args.batches)
        load = loader(tmp / "pack", args.loader_workers, args.batch, args.batches)
        load_global = loader(tmp / "pack", args.loader_workers, args.batch, args.batches, grouped=False)
    scale = TARGET_N / args.n
    result = {
        "kind": "pack_2d", "n": args.n, "size": SIZE, "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine_loaded": args.loaded, "cpus": len(os.sched_getaffinity(0)), "generate_s": round(generate_s, 1),
        "pack": packed, "startup": start, "loader": load, "loader_global_order": load_global, "loader_small_pool": {**load_small, "n": max(args.n // 10, args.batch * 2)},
        "memory_ratio_n_vs_n_over_10": round(load["rss_mb_main_plus_workers"] / load_small["rss_mb_main_plus_workers"], 3),
        "pss_ratio_n_vs_n_over_10": round(load["pss_mb_main_plus_workers"] / load_small["pss_mb_main_plus_workers"], 3),
        "pss_anon_ratio_n_vs_n_over_10": round(load["pss_anon_mb_main_plus_workers"]
                                               / load_small["pss_anon_mb_main_plus_workers"], 3),
        "targets": {"size_vs_uint8_max": 1.5, "warm_startup_s_max_at_200k": 10, "loader_images_per_s_min": 1500},
        "extrapolated_2_5M": {
            "pack_hours_at_these_workers": round(TARGET_N / packed["images_per_s"] / 3600, 2),
            "pack_hours_per_64_workers": round(TARGET_N / packed["images_per_s_per_worker"] / 64 / 3600, 2),
            "pack_cpu_hours": round(TARGET_N * packed["cpu_ms_per_image"] / 1e3 / 3600, 2),
            "packed_gb": round(packed["bytes_per_image"] * TARGET_N / 1e9, 1),
            "warm_startup_s_linear": round(start["warm_startup_s"] * scale, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
