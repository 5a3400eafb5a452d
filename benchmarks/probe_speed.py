#!/usr/bin/env python
"""How long ``medmae probe`` takes to judge a backbone on a real dataset: the chest X-ray pneumonia set (Kermany,
5216 train / 624 test images, its own split), kNN and logistic-regression probes with 1000 bootstrap resamples.

Timed twice in one fresh cache: cold (every JPEG decoded and preprocessed into the cache) and warm (cached
arrays), both including the embedding forward passes. The backbone is ``--model`` (a run or an encoder file), or
by default the ``demo-2d`` ViT (192-d, 6 blocks, patch 8, 64 px) with random weights and ``resize: [64, 64]``:
the cost of the probe, not the quality of an encoder (its AUCs are a random-feature baseline).

    python benchmarks/probe_speed.py --out benchmarks/results/probe_speed_cpu.json
    python benchmarks/probe_speed.py --model runs/mae --data /path/to/chestxray_pneumonia_224/dataset
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

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("MEDMAE_DATA", REPO.parent / "shared" / "data"))


def default_data() -> Path:
    return data_root() / "chestxray_pneumonia_224" / "dataset"


def random_demo_encoder(path: Path) -> Path:
    """The demo-2d ViT with random weights, preprocessing resized to its 64 px input, as an encoder file."""
    import torch

    from medmae.config import PretrainConfig, load_config
    from medmae.data.preprocess import Preprocessing
    from medmae.models.adapt import family_plan
    from medmae.models.contract import make_contract, save_encoder
    from medmae.models.registry import build_encoder, encoder_kwargs, family

    cfg = load_config(PretrainConfig, preset="demo-2d", overrides=["data.resize=[64,64]"])
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model)
    kwargs = encoder_kwargs(cfg.model)
    prep = Preprocessing.from_config(cfg.data, cfg.model).contract()
    contract = make_contract(arch="vit", encoder=kwargs, preprocessing=prep, adaptation=family_plan(family("vit"), kwargs))
    return save_encoder(path, encoder.state_dict(), contract)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a run or encoder.safetensors (default: a random demo-2d ViT at 64 px)")
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (set MEDMAE_DATA or pass --data)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDMAE_CACHE"] = str(Path(tmp) / "cache")
        import torch

        from medmae.tasks.probe import probe

        model = args.model or str(random_demo_encoder(Path(tmp) / "encoder.safetensors"))
        runs = {}
        for name in ("cold", "warm"):
            t = time.perf_counter()
            summary = probe(model, data=args.data, bootstrap=1000, threads=args.threads)
            runs[name] = round(time.perf_counter() - t, 1)
            print(f"{name} cache: {runs[name]} s", flush=True)
    headline = {p: {r["metric"]: round(r["value"], 4) for r in summary[p] if r["metric"] in ("auroc", "accuracy")}
                for p in ("knn", "logistic")}
    result = {"data": str(args.data).replace(str(data_root()), "$MEDMAE_DATA"), "model": args.model or "demo-2d ViT, random weights, resize 64",
              "n_train": summary["n_train"], "n_test": summary["n_test"], "split": summary["split"],
              "embedding_dim": summary["embedding_dim"], "seconds": runs, "headline": headline,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
              "torch": torch.__version__, "load_average_1_5_15": [round(v, 1) for v in os.getloadavg()]}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
