"""The ResEnc recipe presets: each builds at full size, pretrains two steps and fine-tunes two steps (from its own
MAE) on synthetic data with no overrides besides shrinking it; the fine-tuning settings are the documented ones."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmae.config import FinetuneConfig, PretrainConfig, load_config, preset_names
from medmae.engine import checkpoint as ckpt
from medmae.models.registry import build_mae
from medmae.tasks.evaluate import evaluate
from medmae.tasks.finetune import finetune, finetune_raw_from_preset
from medmae.tasks.pretrain import pretrain

SMALL = ("model.resenc.widths=[4,8]", "model.resenc.blocks=[1,1]", "train.batch_size=2", "data.num_workers=0",
         "train.precision=fp32")
SHRINK = {
    "resenc-seg-2d": ("data.synthetic.n=6", "data.synthetic.size=[40,40]", "model.img_size=[32,32]"),
    "resenc-cls-2d": ("data.synthetic.n=16", "data.synthetic.size=[40,40]", "data.resize=[40,40]", "model.img_size=[32,32]"),
    "resenc-seg-3d": ("data.synthetic.kind=brain_mr", "data.synthetic.n=4", "data.synthetic.size=[36,36,36]",
                      "model.img_size=[32,32,32]"),
    "resenc-cls-3d": ("data.synthetic.kind=brain_mr", "data.synthetic.n=4", "data.synthetic.size=[36,36,36]",
                      "model.img_size=[32,32,32]"),
}
HELD_OUT = {"resenc-seg-2d": 0.34, "resenc-cls-2d": 0.5, "resenc-seg-3d": 0.25, "resenc-cls-3d": 0.25}
TASK = {"resenc-seg-2d": "seg", "resenc-seg-3d": "seg", "resenc-cls-2d": "cls", "resenc-cls-3d": "cls"}


def volumes_by_class(root: Path, n: int = 8) -> Path:
    """A folder layout of 36^3 NIfTI volumes in class folders ``a`` / ``b`` (a bright or a dark blob)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 36)] * 3, indexing="ij"))
    for i in range(n):
        cls = "ab"[i % 2]
        vol = 1.0 + 0.1 * rng.standard_normal((36, 36, 36)) + (0.5 if cls == "a" else -0.5) * ((grid**2).sum(0) < 0.3)
        (root / cls).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), root / cls / f"v{i}.nii.gz")
    return root


def test_the_recipe_presets_are_shipped():
    assert set(SHRINK) <= set(preset_names())


@pytest.mark.parametrize("preset", sorted(SHRINK))
def test_a_recipe_builds_pretrains_and_fine_tunes_without_surgery(preset, tmp_path):
    full = load_config(PretrainConfig, preset=preset)
    mae = build_mae(full)  # full size builds
    assert full.model.arch == "resenc" and full.mask.kind == "block" and mae.mask_block == (16,) * full.model.spatial_dims
    over = (*SMALL, *SHRINK[preset])
    run = pretrain(preset=preset, run_dir=tmp_path / "mae", overrides=(*over, "data.figure_cases=1"), max_steps=2)
    assert ckpt.find_latest_valid(run / "checkpoints").name == ckpt.step_dir_name(2)
    task = TASK[preset]
    ft_over = [*over, "eval.bootstrap=50", f"eval.test_fraction={HELD_OUT[preset]}"]
    data = volumes_by_class(tmp_path / "vols") if preset == "resenc-cls-3d" else None  # the phantoms have no classes
    tuned = finetune(task=task, init=run, preset=preset, data=data, run_dir=tmp_path / "ft", overrides=ft_over,
                     max_steps=2)
    info = json.loads((tuned / "task.json").read_text())
    assert info["load_report"]["loaded"], "the pretrained encoder must load"
    assert ckpt.find_latest_valid(tuned / "checkpoints").name == ckpt.step_dir_name(2)
    if preset == "resenc-seg-2d":
        summary = evaluate(tuned)
        assert summary["tta_axes"] == [0, 1] and summary["n_cases"] >= 1


@pytest.mark.parametrize("preset", sorted(SHRINK))
def test_the_fine_tuning_recipe_is_nnunet_for_segmentation_and_pooled_for_classification(preset):
    cfg = load_config(FinetuneConfig, finetune_raw_from_preset(preset, TASK[preset]))
    assert cfg.model.arch == "resenc" and cfg.data.augment.preset in ("nnunet", "light")
    if TASK[preset] == "seg":
        o = cfg.optim
        assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay, o.schedule, o.layer_decay) == \
            ("sgd", 1e-2, 0.99, True, 3e-5, "poly", None)
        assert cfg.model.resenc.deep_supervision and (cfg.loss.dice_weight, cfg.loss.ce_weight) == (1.0, 1.0)
        assert cfg.data.augment.preset == "nnunet" and cfg.eval.tta is None  # auto: on for CNN segmentation
    else:
        assert cfg.head.pool == "mean" and cfg.optim.lr == 1e-3
        assert cfg.data.crop_scale is None or cfg.data.crop_scale[0] >= 0.35


def test_the_3d_classifier_builds_with_a_pooled_head():
    from medmae.models.adapt import build_task_model

    cfg = load_config(FinetuneConfig, finetune_raw_from_preset("resenc-cls-3d", "cls"))
    model, _ = build_task_model(cfg, 2, None)
    assert model.pool == "mean" and model.head.in_features == cfg.model.resenc.widths[-1]
