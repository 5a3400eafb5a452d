#!/usr/bin/env python
"""Packed 3D pools: a random 96^3 crop from a pack against decoding the NIfTI, and the pack's size.

    python benchmarks/pack_3d.py --n 2000 --workers 2 --out benchmarks/results/pack_3d.json

Generates ``--n`` int16 CT-like volumes of 128^3 (smooth field in HU plus noise, air outside a body ellipse;
``.nii.gz``; never in CI), packs them with preset ``demo-3d`` (``ct_window``: uint16 codes + value table), then
measures per volume:

- ``nifti_ms``: what the raw path costs per sample: ``load_image`` (decode the .nii.gz, reorient, window);
- ``crop_ms``: a random 96^3 crop read from the pack (only the 32^3 blocks under it are decompressed);
- ``full_decode_ms``: the whole volume decoded from the pack;
- ``item_ms``: one training item of ``CaseDataset`` (random 96^3 crop read alone, flips);
- the ratio nifti / crop (target >= 50x), packed bytes vs the int16 voxels and vs the .nii.gz files;
- the same ratio on one volume of ``--reference-shape`` (default 512 512 150, the shape of
  ``shared/bench/data_bench.py``, whose 96^3 memmap crop took 6.5 ms against ~640-740 ms to decode the .nii.gz).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

SIDE, CROP = 128, 96


def ct_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """int16 HU: a smooth field plus noise inside a body ellipse, air outside."""
    xx, yy = np.meshgrid(np.linspace(-0.5, 0.5, shape[0]), np.linspace(-0.5, 0.5, shape[1]), indexing="ij")
    body = ((xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1)[..., None]
    low = torch.from_numpy(rng.normal(size=(1, 1, 6, 6, 6)).astype(np.float32))
    field = F.interpolate(low, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    return np.where(body, 40 + 120 * field + rng.normal(0, 15, shape), -1000).astype(np.int16)


def write_pool(root: Path, n: int, seed: int = 0, shape: tuple[int, int, int] = (SIDE,) * 3) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        nib.save(nib.Nifti1Image(ct_volume(rng, shape), np.diag([0.8, 0.8, 1.5, 1.0])), root / f"ct_{k:05d}.nii.gz")
    return root


CPU_MS: dict[int, float] = {}


def per_call_ms(fn, calls: int) -> float:
    """Wall ms per call; the CPU ms (``process_time``, robust to a loaded machine) goes to ``CPU_MS[id(fn)]``."""
    t, c = time.perf_counter(), time.process_time()
    for k in range(calls):
        fn(k)
    CPU_MS[id(fn)] = (time.process_time() - c) / calls * 1e3
    return (time.perf_counter() - t) / calls * 1e3


def cpu_ms(fn) -> float:
    return round(CPU_MS[id(fn)], 2)


def reference_volume(tmp: Path, shape: tuple[int, int, int], prep, codec: str, calls: int) -> dict:
    """NIfTI decode vs a packed 96^3 crop on one volume of ``shape`` (the shared data bench's comparison), and
    a training item of ``CaseDataset`` on it (a random crop read alone, flips) vs decoding the whole volume."""
    from medmae.data.dataset import Augment, CaseDataset
    from medmae.data.packed import Pack, PackedArray, load_pack_source, packed_cases
    from medmae.data.sources import load_source
    from medmae.data.preprocess import load_image
    from medmae.tasks.pack import pack_sources

    src = write_pool(tmp / "ref", 1, seed=7, shape=shape)
    pack_sources([src], preset="demo-3d", out=tmp / "ref-pack", codec=codec)
    pack, case = Pack(tmp / "ref-pack"), load_source(src).cases[0]
    path = case.path
    rng = np.random.default_rng(1)

    def crop(_: int) -> np.ndarray:
        box = (slice(None), *(slice(int(a), int(a) + CROP) for a in (rng.integers(0, s - CROP + 1) for s in shape)))
        return PackedArray(pack, 0)[box]

    crop(0)  # page cache warm
    def fdata_fn(_: int) -> np.ndarray:
        return nib.load(path).get_fdata(dtype=np.float32)

    fdata = per_call_ms(fdata_fn, 3)
    load = per_call_ms(lambda _: load_image(case, prep), 2)
    crop_ms = per_call_ms(crop, calls)
    ds = CaseDataset(packed_cases(load_pack_source(tmp / "ref-pack"), prep), (CROP,) * 3,
                     augment=Augment((CROP,) * 3, flip_axes=(0, 1, 2)), seed=0)
    item_ms = per_call_ms(lambda k: ds[(k, 0)], calls)
    full_ms = per_call_ms(lambda _: pack.read_image(0), 3)
    return {"shape": list(shape), "nibabel_get_fdata_ms": round(fdata, 1), "load_image_ms": round(load, 1),
            "crop_ms": round(crop_ms, 2), "item_ms": round(item_ms, 2), "full_decode_ms": round(full_ms, 1),
            "load_image_over_item": round(load / item_ms, 1), "fdata_over_crop": round(fdata / crop_ms, 1),
            "load_image_over_crop": round(load / crop_ms, 1), "fdata_cpu_ms": cpu_ms(fdata_fn),
            "crop_cpu_ms": cpu_ms(crop), "fdata_over_crop_cpu": round(cpu_ms(fdata_fn) / cpu_ms(crop), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--codec", default="zstd", choices=("zstd", "lz4"))
    ap.add_argument("--reference-shape", type=int, nargs=3, default=[512, 512, 150])
    ap.add_argument("--loaded", action="store_true", help="mark the figures as measured on a loaded machine")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pack_3d.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from medmae.config import PretrainConfig, load_config
    from medmae.data.dataset import Augment, CaseDataset
    from medmae.data.packed import PackedArray, load_pack_source, packed_cases
    from medmae.data.preprocess import Preprocessing, load_image
    from medmae.data.sources import load_source
    from medmae.tasks.pack import pack_sources

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        os.environ["MEDMAE_CACHE"] = str(tmp / "cache")
        write_pool(tmp / "ct", args.n)
        nii_bytes = sum(p.stat().st_size for p in (tmp / "ct").iterdir())
        t = time.perf_counter()
        res = pack_sources([tmp / "ct"], preset="demo-3d", out=tmp / "pack", workers=args.workers, codec=args.codec)
        pack_s = time.perf_counter() - t
        packed = sum(s["bytes"] for s in res.manifest["shards"])
        cfg = load_config(PretrainConfig, preset="demo-3d")
        prep = Preprocessing.from_config(cfg.data, cfg.model)
        cases = load_source(tmp / "ct").cases
        prepared = packed_cases(load_pack_source(tmp / "pack"), prep)
        pack = prepared[0].image.pack
        rng = np.random.default_rng(0)
        picks = rng.integers(0, args.n, args.calls)
        starts = rng.integers(0, SIDE - CROP + 1, (args.calls, 3))

        def crop(k: int) -> np.ndarray:
            box = (slice(None), *(slice(int(s), int(s) + CROP) for s in starts[k]))
            return PackedArray(pack, int(picks[k]))[box]

        ds = CaseDataset(prepared, (CROP,) * 3, augment=Augment((CROP,) * 3, flip_axes=(0, 1, 2)), seed=0)
        per_call_ms(lambda k: pack.read_image(int(picks[k])), args.calls)  # page cache warm for every figure
        fns = {"nifti": lambda k: load_image(cases[int(picks[k])], prep), "crop": crop,
               "full": lambda k: pack.read_image(int(picks[k])), "item": lambda k: ds[(0, int(picks[k]))]}
        nifti_ms = per_call_ms(fns["nifti"], max(3, args.calls // 6))
        crop_ms = per_call_ms(crop, args.calls)
        full_ms = per_call_ms(fns["full"], args.calls)
        item_ms = per_call_ms(fns["item"], args.calls)
        cpu = {name: cpu_ms(fn) for name, fn in fns.items()}
        kinds = {str(k): int((pack.index["kind"] == k).sum()) for k in np.unique(pack.index["kind"])}
        reference = reference_volume(tmp, tuple(args.reference_shape), prep, args.codec, args.calls)
    result = {
        "kind": "pack_3d", "n": args.n, "side": SIDE, "crop": CROP, "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine_loaded": args.loaded, "cpus": len(os.sched_getaffinity(0)),
        "pack_s": round(pack_s, 1), "volumes_per_s_per_worker": round(args.n / pack_s / args.workers, 2),
        "stored_kinds": kinds, "packed_bytes": packed, "int16_voxel_bytes": args.n * SIDE**3 * 2,
        "size_vs_int16": round(packed / (args.n * SIDE**3 * 2), 3), "size_vs_nii_gz": round(packed / nii_bytes, 3),
        "nifti_ms": round(nifti_ms, 1), "crop_ms": round(crop_ms, 2), "full_decode_ms": round(full_ms, 2),
        "item_ms": round(item_ms, 2), "cpu_ms": cpu, "nifti_over_crop": round(nifti_ms / crop_ms, 1),
        "nifti_over_crop_cpu": round(cpu["nifti"] / cpu["crop"], 1),
        "nifti_over_item": round(nifti_ms / item_ms, 1), "target_nifti_over_crop_min": 50, "codec": args.codec,
        "reference_volume": reference,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
