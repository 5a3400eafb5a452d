#!/usr/bin/env python
"""The candidate pack formats side by side on the same arrays: litdata, webdataset, zarr v3, blosc2.

    python benchmarks/pack_formats.py --n 2000 --out benchmarks/results/pack_formats.json

2D: ``--n`` chest X-rays from ``--images`` (default: the shared chest X-ray train set; synthetic images when
absent) as uint8 (1, 224, 224) arrays. 3D: one int16 CT-like volume of 128^3. For each library: write seconds,
bytes vs the raw pixels, and the cost of what training needs: a random image (random access by index; webdataset
has none, so its sequential read per image is given) and a random 96^3 crop of the volume.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np

CROP = 96


def images(root: Path | None, n: int) -> np.ndarray:
    if root is not None and root.is_dir():
        from PIL import Image

        files = sorted(root.rglob("*.jpeg"))[:n]
        return np.stack([np.asarray(Image.open(f).convert("L").resize((224, 224)))[None] for f in files])
    rng = np.random.default_rng(0)
    return (rng.normal(128, 30, (n, 1, 224, 224))).clip(0, 255).astype(np.uint8)


def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 8, 8))
    big = np.kron(base, np.ones((16, 16, 16)))
    return (40 + 120 * big + rng.normal(0, 15, big.shape)).astype(np.int16)[None]


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn, calls: int) -> float:
    t = time.perf_counter()
    for k in range(calls):
        fn(k)
    return (time.perf_counter() - t) / calls * 1e3


def bench_blosc2(tmp: Path, x: np.ndarray, vol: np.ndarray, order: np.ndarray) -> dict:
    from medmae.data.pack_codec import blocks_for, cparams

    t = time.perf_counter()
    with blosc2.DictStore(str(tmp / "s.b2z"), mode="w") as st:
        chunks, blocks = blocks_for(x.shape, 2)
        st["/img"] = blosc2.asarray(x, chunks=chunks, blocks=blocks, cparams=cparams("zstd", 1))
        chunks, blocks = blocks_for(vol[None].shape, 3)
        st["/vol"] = blosc2.asarray(vol[None], chunks=chunks, blocks=blocks, cparams=cparams("zstd", 2))
    write = time.perf_counter() - t
    st = blosc2.DictStore(str(tmp / "s.b2z"), mode="r", mmap_mode="r")
    img, v = st["/img"], st["/vol"]
    read = timed(lambda k: img[int(order[k])], len(order))
    crop = timed(lambda k: v[(0, slice(None), *(slice(s, s + CROP) for s in (k % 33, 7, 20)))], 20)
    return {"write_s": write, "bytes": size_of(tmp / "s.b2z"), "random_image_ms": read, "crop96_ms": crop,
            "partial_crop": True, "random_access": True}


def bench_zarr(tmp: Path, x: np.ndarray, vol: np.ndarray, order: np.ndarray) -> dict:
    import zarr
    from zarr.codecs import BloscCodec

    comp = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    t = time.perf_counter()
    root = zarr.open_group(str(tmp / "z.zarr"), mode="w")
    a = root.create_array("img", shape=x.shape, dtype=x.dtype, chunks=(1, 1, 224, 224), shards=(256, 1, 224, 224),
                          compressors=comp)
    a[:] = x
    b = root.create_array("vol", shape=vol.shape, dtype=vol.dtype, chunks=(1, 32, 32, 32), shards=(1, 128, 128, 128),
                          compressors=comp)
    b[:] = vol
    write = time.perf_counter() - t
    root = zarr.open_group(str(tmp / "z.zarr"), mode="r")
    img, v = root["img"], root["vol"]
    read = timed(lambda k: img[int(order[k])], len(order))
    crop = timed(lambda k: v[(slice(None), *(slice(s, s + CROP) for s in (k % 33, 7, 20)))], 20)
    return {"write_s": write, "bytes": size_of(tmp / "z.zarr"), "random_image_ms": read, "crop96_ms": crop,
            "partial_crop": True, "random_access": True}


def _item(i: int) -> dict:
    return {"index": i, "image": _X[i]}


_X: np.ndarray = np.zeros(0)


def bench_litdata(tmp: Path, x: np.ndarray, vol: np.ndarray, order: np.ndarray) -> dict:
    from litdata import StreamingDataset, optimize

    global _X
    _X = x
    t = time.perf_counter()
    optimize(fn=_item, inputs=list(range(len(x))), output_dir=str(tmp / "lit"), chunk_bytes="64MB",
             compression="zstd", num_workers=1, verbose=False, start_method="fork")
    write = time.perf_counter() - t
    ds = StreamingDataset(str(tmp / "lit"))
    read = timed(lambda k: ds[int(order[k])], len(order))
    return {"write_s": write, "bytes": size_of(tmp / "lit"), "random_image_ms": read, "crop96_ms": None,
            "partial_crop": False, "random_access": True,
            "note": "whole items (a 3D crop decodes the whole volume); zstd per chunk: a random item decompresses its chunk"}


def bench_webdataset(tmp: Path, x: np.ndarray, vol: np.ndarray, order: np.ndarray) -> dict:
    import webdataset as wds

    t = time.perf_counter()
    with wds.ShardWriter(str(tmp / "w-%05d.tar"), maxcount=1000, verbose=0) as sink:
        for i, a in enumerate(x):
            buf = io.BytesIO()
            np.save(buf, a)
            sink.write({"__key__": f"{i:07d}", "npy": buf.getvalue()})
    write = time.perf_counter() - t
    files = sorted(str(p) for p in tmp.glob("w-*.tar"))
    t = time.perf_counter()
    count = sum(1 for _ in wds.WebDataset(files, shardshuffle=False).decode())
    seq = (time.perf_counter() - t) / count * 1e3
    return {"write_s": write, "bytes": sum(size_of(Path(f)) for f in files), "random_image_ms": None,
            "sequential_image_ms": seq, "crop96_ms": None, "partial_crop": False, "random_access": False,
            "note": "tar streams: no random access (order = shard shuffle + buffer), whole items, uncompressed here"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--images", type=Path, default=Path(os.environ.get("MEDMAE_DATA", "../shared/data"))
                    / "chestxray_pneumonia_224" / "dataset" / "train")
    ap.add_argument("--loaded", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pack_formats.json"))
    args = ap.parse_args()
    x, vol = images(args.images, args.n), volume()
    order = np.random.default_rng(0).permutation(len(x))[:300]
    out: dict = {"kind": "pack_formats", "n": len(x), "when": time.strftime("%Y-%m-%d %H:%M"),
                 "machine_loaded": args.loaded, "raw_bytes": int(x.nbytes)}
    for name, fn in (("blosc2", bench_blosc2), ("zarr", bench_zarr), ("litdata", bench_litdata),
                     ("webdataset", bench_webdataset)):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = fn(Path(tmp), x, vol, order)
            except Exception as e:  # noqa: BLE001 - one library failing must not hide the others
                r = {"error": f"{type(e).__name__}: {e}"}
        if "bytes" in r:
            r["size_vs_raw"] = round(r["bytes"] / (x.nbytes + (vol.nbytes if r.get("crop96_ms") else 0)), 3)
        out[name] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
        print(name, out[name], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
