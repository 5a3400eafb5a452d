"""``medmae demo``: the whole pipeline on built-in synthetic chest radiographs, on a laptop CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from medmae.data.synthetic import write_dataset
from medmae.tasks.pretrain import pretrain


def demo(run_dir: str | Path = "medmae-demo", *, max_steps: int | None = None, n_images: int = 96) -> dict[str, Any]:
    """Generate synthetic data, pretrain the ``demo-2d`` ViT MAE, and return a summary with paths and losses."""
    run_dir = Path(run_dir)
    t0 = time.time()
    manifest = write_dataset(run_dir / "data", "cxr", n_images, seed=0, size=64)
    pre_dir = pretrain(preset="demo-2d", data=manifest, run_dir=run_dir / "pretrain", max_steps=max_steps,
                       resume="auto")
    summary = json.loads((pre_dir / "summary.json").read_text())
    figures = sorted((pre_dir / "figures").glob("*.png"))
    return {
        "data": str(manifest),
        "run_dir": str(pre_dir),
        "encoder": summary["encoder"],
        "figure": str(figures[-1]) if figures else None,
        "metrics": str(pre_dir / "metrics.csv"),
        "steps": summary["steps"],
        "masked_patch_loss": summary["figure_cases_masked_loss"],
        "patch_mean_baseline_loss": summary["figure_cases_patch_mean_baseline"],
        "seconds": round(time.time() - t0, 1),
    }
