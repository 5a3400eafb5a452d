"""``medmae reconstruct``: reconstructions of new images by a pretrained MAE run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medmae.config import PretrainConfig, load_config
from medmae.data.cases import Case, strip_suffix
from medmae.data.dataset import augment_case
from medmae.data.preprocess import Preprocessing, load_image
from medmae.engine import checkpoint as ckpt
from medmae.errors import RunDirError
from medmae.figures import save_reconstruction_figure
from medmae.models.registry import build_mae
from medmae.run_layout import CONFIG_FILE, TASK_FILE, checkpoints_dir
from medmae.tasks.run_dir import output_dir

log = logging.getLogger(__name__)


def load_pretrain_run(run_dir: str | Path) -> tuple[PretrainConfig, torch.nn.Module, Path]:
    """Config and MAE weights of a pretraining run (newest valid checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: {'not a directory' if run_dir.exists() else 'no such run directory'}")
    if (run_dir / TASK_FILE).is_file():
        raise RunDirError(f"{run_dir}: a fine-tuning run; reconstruct needs the run directory of `medmae pretrain`")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a medmae pretraining run (no {CONFIG_FILE})")
    cfg = load_config(PretrainConfig, run_dir / CONFIG_FILE)
    path = ckpt.find_latest_valid(checkpoints_dir(run_dir))
    if path is None:
        raise ckpt.CheckpointError(f"{run_dir}: no valid checkpoint in {checkpoints_dir(run_dir)}")
    model = build_mae(cfg)
    ckpt.load_model_state(model, ckpt.load_checkpoint(path).model_state, path / ckpt.MODEL_FILE)
    return cfg, model.eval(), path


def reconstruct(run_dir: str | Path, inputs: Sequence[str | Path], *, out: str | Path,
                mask_ratio: float | None = None, seed: int = 0) -> list[Path]:
    """Write one figure per input (centre crop at the model's size); 3D inputs also as NIfTI triplets."""
    cfg, model, path = load_pretrain_run(run_dir)
    if mask_ratio is not None:
        model.mask_ratio = mask_ratio
    prep = Preprocessing.from_config(cfg.data, cfg.model)
    out = output_dir(out)
    written = []
    for i, inp in enumerate(inputs):
        case = Case(strip_suffix(Path(inp).name), (str(inp),), strip_suffix(Path(inp).name))
        image, _, spacing, _ = load_image(case, prep)
        x, _ = augment_case(image, None, None, None, cfg.model.img_size)
        x = x[None]
        recon, mask = model.reconstruct(x, torch.tensor([seed + i]))
        written.append(save_reconstruction_figure(x, recon, mask, out / f"{case.case_id}_recon.png", titles=[case.case_id]))
        if cfg.model.spatial_dims == 3:
            written += _write_nifti_triplet(out, case.case_id, x[0, 0], mask[0, 0], recon[0, 0], spacing)
    log.info("reconstructions of %d inputs by %s written to %s", len(inputs), path, out)
    return written


def _write_nifti_triplet(out: Path, name: str, x: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor,
                         spacing: Sequence[float]) -> list[Path]:
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    paths = []
    for suffix, vol in (("original", x), ("masked", x * (1 - mask)), ("reconstruction", recon)):
        p = out / f"{name}_{suffix}.nii.gz"
        nib.save(nib.Nifti1Image(vol.float().numpy(), affine), str(p))
        paths.append(p)
    return paths
