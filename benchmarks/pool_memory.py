#!/usr/bin/env python
"""Memory that pretraining holds per case of a packed pool, at n/10 and at n cases.

Writes ``n`` tiny PNGs (16 px: the pixels do not matter here, only the per-case metadata), packs them, and in a
fresh process per size builds the pretraining pool the way ``medmae pretrain --data PACK`` does
(``resolve_parts`` + ``prepare_pool``), measuring with ``tracemalloc`` the bytes it allocates and keeps, per case
(Python objects and arrays), apart from the pack's index (its columns' bytes per case, also written, and how
much of the process's resident memory they add once every page is read: anonymous, or file-backed page cache
the kernel can drop since the index is a memory map), and the
start-up seconds: opening the pack, building the pool, hashing the case ids (the checkpoint's data digest) and
writing ``pretrain_cases.json``. What forked DataLoader workers may copy is at most the held figure times the
workers (the index's NumPy buffers are shared: no reference counts touch them).

    python benchmarks/pool_memory.py --n 100000 --out benchmarks/results/pool_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

MEASURE = """
import gc, json, sys, tempfile, time, tracemalloc
import numpy as np
from pathlib import Path
from medmae.config import PretrainConfig, load_config
from medmae.data.packed import case_list, field_values, open_pack
from medmae.data.pipeline import prepare_pool, resolve_parts
from medmae.engine.loader_state import digest
from medmae.tasks.pretrain import record_data
cfg = load_config(PretrainConfig, preset="demo-2d")
cfg.data.path = sys.argv[1]
def rss_kb():
    fields = dict(line.split(":") for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])
before = rss_kb()
t = time.perf_counter()
pack = open_pack(sys.argv[1])  # the index: columnar arrays, measured apart
open_s = time.perf_counter() - t
arrays = [a for c in pack.index.columns.values() for a in ((c,) if hasattr(c, "nbytes") else (c.blob, c.offsets))]
index_bytes = sum(a.nbytes for a in arrays)
touched = sum(int(a.reshape(-1).view(np.uint8)[::4096].sum()) for a in arrays)  # every page of the index read
anon_kb, file_kb = (b - a for a, b in zip(before, rss_kb()))
gc.collect()
tracemalloc.start()
t = time.perf_counter()
pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data, show_progress=False)
seconds = time.perf_counter() - t
gc.collect()
held, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
n = len(pool.prepared)
t = time.perf_counter()
pool = prepare_pool(resolve_parts(cfg.data, cfg.model), cfg.data, show_progress=False)
pool_s = time.perf_counter() - t
t = time.perf_counter()
digest(field_values(case_list(pool.prepared), "case_id"))
digest_s = time.perf_counter() - t
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    record_data(Path(tmp), pool, cfg)
    record_s = time.perf_counter() - t
print(json.dumps({"cases": n, "held_bytes_per_case": round(held / n, 1), "peak_bytes_per_case": round(peak / n),
                  "index_bytes_per_case": round(index_bytes / n), "open_pack_s": round(open_s, 2),
                  "index_anon_bytes_per_case": round(anon_kb * 1024 / n),
                  "index_file_backed_bytes_per_case": round(file_kb * 1024 / n),
                  "pool_s": round(pool_s, 2), "case_id_digest_s": round(digest_s, 2),
                  "pretrain_cases_json_s": round(record_s, 2), "build_s_under_tracemalloc": round(seconds, 2)}))
"""


def write_pool(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for k in range(n):
        folder = root / "train" / ("a" if k % 2 else "b")
        if k < 2:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"img_{k:07d}.png")


def measure(pack_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(pack_dir)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2, help="packing processes")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    args = ap.parse_args()
    from medmae.tasks.pack import pack_sources

    sizes = [max(args.n // 10, 10), args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            src, pack = Path(tmp) / f"pool{n}", Path(tmp) / f"pack{n}"
            write_pool(src, n)
            pack_sources([src], preset="demo-2d", out=pack, workers=args.workers)
            rows.append(measure(pack))
            print(json.dumps(rows[-1]), flush=True)
    held = [r["held_bytes_per_case"] * r["cases"] for r in rows]
    result = {"kind": "pool_memory", "when": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
              "sizes": rows, "growth_bytes_per_case": round((held[1] - held[0]) / (rows[1]["cases"] - rows[0]["cases"]), 1),
              "at_2_5M_gb": {"held": round(rows[1]["held_bytes_per_case"] * 2.5e6 / 1e9, 3),
                             "index_anonymous": round(rows[1]["index_anon_bytes_per_case"] * 2.5e6 / 1e9, 2),
                             "index_page_cache": round(rows[1]["index_bytes_per_case"] * 2.5e6 / 1e9, 2)}}
    print(json.dumps({k: result[k] for k in ("growth_bytes_per_case", "at_2_5M_gb")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
