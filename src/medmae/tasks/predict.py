"""``medmae predict``: segmentation masks in each input's own geometry, or class probabilities as CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medmae.config import ConfigError
from medmae.data.cases import Case, strip_suffix
from medmae.data.preprocess import Preprocessing, load_image
from medmae.data.readers import read_image
from medmae.data.writers import write_like
from medmae.engine.distributed import set_threads
from medmae.figures import save_mask_overlay, save_palette_mask
from medmae.tasks.inference import classify, load_task_run, segment, tta_axes
from medmae.tasks.run_dir import output_dir

log = logging.getLogger(__name__)


def _output_name(path: Path, spatial_dims: int) -> str:
    stem = strip_suffix(path.name)
    low = path.name.lower()
    if spatial_dims == 2:
        return f"{stem}_seg.png"
    for ext in (".nrrd", ".mha", ".mhd"):
        if low.endswith(ext):
            return f"{stem}_seg{'.mha' if ext == '.mhd' else ext}"
    return f"{stem}_seg.nii.gz"


def predict(run_dir: str | Path, inputs: Sequence[str | Path], *, out: str | Path, device: str = "auto",
            threads: int | None = None) -> list[Path]:
    """Segmentation: one label map per input, written with the input's geometry (affine/spacing/orientation).
    Classification: ``predictions.csv`` with one probability column per class and the predicted class(es).
    ``threads``: torch CPU threads."""
    set_threads(threads, "--threads")
    cfg, info, model, _ = load_task_run(run_dir, device)
    device = next(model.parameters()).device
    prep = Preprocessing.from_config(cfg.data, cfg.model)
    out = output_dir(out)
    cases = [Case(strip_suffix(Path(p).name), (str(p),), strip_suffix(Path(p).name)) for p in inputs]
    if cfg.task == "cls":
        images = [load_image(c, prep).array for c in cases]
        probs = classify(model, images, cfg.model.img_size, info["multilabel"], device=device, tta=tta_axes(cfg))
        path = out / "predictions.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", *[f"prob_{c}" for c in info["classes"]], "prediction"])
            for case, p in zip(cases, probs):
                if info["multilabel"]:
                    pred = "|".join(c for c, v in zip(info["classes"], p) if v >= cfg.eval.threshold)
                else:
                    pred = info["classes"][int(np.argmax(p))]
                w.writerow([case.path, *[f"{v:.6f}" for v in p], pred])
        log.info("probabilities for %d inputs written to %s", len(cases), path)
        return [path]
    names = [_output_name(Path(c.path), cfg.model.spatial_dims) for c in cases]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        same = [c.path for c, n in zip(cases, names) if n == clash[0]]
        raise ConfigError(f"inputs {', '.join(same)} would all be written to {out / clash[0]}; predict them separately")
    written = []
    for case, name in zip(cases, names):
        loaded = load_image(case, prep)
        probs = segment(model, loaded.array, cfg.model.img_size, overlap=cfg.eval.sw_overlap,
                        sw_batch_size=cfg.eval.sw_batch_size, device=device, tta=tta_axes(cfg))
        if tuple(probs.shape[1:]) != tuple(loaded.read_shape):
            mode = "bilinear" if len(loaded.read_shape) == 2 else "trilinear"
            probs = F.interpolate(probs[None], size=loaded.read_shape, mode=mode, align_corners=False)[0]
        labels = probs.argmax(0).to(torch.uint8 if probs.shape[0] < 256 else torch.int16).numpy()
        written.append(write_like(labels, loaded.meta, out / name))
        if cfg.model.spatial_dims == 2 and probs.shape[0] < 256:
            viewable_2d(written[-1], case.path)
    log.info("%d masks written to %s%s", len(written), out,
             " (palette PNGs, and <name>_overlay.png on each image)" if cfg.model.spatial_dims == 2 else "")
    return written


def viewable_2d(mask_png: Path, image_path: str) -> Path | None:
    """Make a written 2D mask viewable: the PNG becomes a palette PNG (same label values), and
    ``<stem>_overlay.png`` shows it on the input image. Returns the overlay (None when the sizes disagree)."""
    with Image.open(mask_png) as img:
        labels_hw = np.asarray(img)
    save_palette_mask(labels_hw, mask_png)
    image_chw, _ = read_image(image_path)
    if tuple(image_chw.shape[1:]) != labels_hw.shape:
        log.warning("%s: no overlay, the image is %s and its mask %s", image_path, image_chw.shape[1:], labels_hw.shape)
        return None
    return save_mask_overlay(image_chw, labels_hw, mask_png.with_name(mask_png.name.replace("_seg.png", "_overlay.png")))
