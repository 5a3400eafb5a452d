"""The ``medmae`` command line, in-process with typer's CliRunner: help, presets, config errors, a tiny 3D
pretraining run with its artefacts, reconstruction, bad data and the ``--resume`` rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from helpers import TINY_2D, TINY_3D, set_args, checkpoint_steps, flat, invoke, latest_checkpoint, loss_reprs, pretrain_args, train_rows
from medmae.cli import app
from medmae.config import preset_names
from medmae.engine import checkpoint as ckpt
from medmae.models.contract import read_contract

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_clean_exit(result, code: int) -> None:
    """The CLI chose this exit code itself (no traceback escaped)."""
    assert result.exit_code == code, result.output[-3000:]
    assert isinstance(result.exception, SystemExit) or (code == 0 and result.exception is None), repr(result.exception)
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ help


def test_top_level_help_lists_every_command():
    result = invoke(["--help"])
    assert_clean_exit(result, 0)
    commands = typer.main.get_command(app).commands
    assert {"pretrain", "reconstruct", "presets", "demo"} <= set(commands)
    for name in commands:
        assert name in result.output


@pytest.mark.parametrize("command", sorted(typer.main.get_command(app).commands))
def test_each_command_help_lists_its_options(command):
    result = invoke([command, "--help"])
    assert_clean_exit(result, 0)
    text = flat(result.output)
    params = typer.main.get_command(app).commands[command].params
    options = ["--help"] + [opt for p in params if p.param_type_name == "option" for opt in p.opts if opt.startswith("--")]
    missing = [o for o in options if o not in text]
    assert not missing, f"`medmae {command} --help` does not show {missing}"


def test_presets_lists_every_preset_by_its_full_name():
    result = invoke(["presets"])
    assert_clean_exit(result, 0)
    names = preset_names()
    assert {"demo-2d", "demo-3d"} <= set(names)
    text = flat(result.output)
    missing = [n for n in names if n not in text]
    assert not missing, f"presets not shown in full: {missing}\n{result.output}"


# ------------------------------------------------------------------------------------------ bad configs


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.depthx=3", "model.depthx"), ("train.batch_size=many", "train.batch_size"), ("optim.betas=[0.9]", "optim.betas.1")],
)
def test_a_bad_override_exits_2_naming_the_key(tmp_path, override, key):
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", (*TINY_2D, override)))
    assert_clean_exit(result, 2)
    assert f"{key}:" in flat(result.output), "the error line must start with the key path"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_yaml_with_an_unknown_nested_key_exits_2_naming_its_path(tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("model:\n  spatial_dims: 2\n  img_size: [32, 32]\n  decoder:\n    embed_dim: 16\n    dropout: 0.1\n")
    result = invoke(["pretrain", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert_clean_exit(result, 2)
    assert "model.decoder.dropout:unknownkey" in flat(result.output)
    assert "mine.yaml" in flat(result.output)


def test_an_unknown_preset_exits_2_listing_the_known_ones(tmp_path):
    result = invoke(["pretrain", "--preset", "demo-4d", "--run-dir", str(tmp_path / "run")])
    assert_clean_exit(result, 2)
    assert "demo-4d" in result.output and "demo-2d" in flat(result.output)


# -------------------------------------------------------------------------------- a tiny 3D pretraining


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain3d") / "run"
    result = invoke(pretrain_args(run, "demo-3d", TINY_3D, "--max-steps", "3"))
    assert_clean_exit(result, 0)
    return run


def synthetic_ct_images() -> list[Path]:
    """The synthetic CT volumes the 3D run was trained on (generated into the session's cache)."""
    root = Path(os.environ["MEDMAE_CACHE"]) / "synthetic"
    found = sorted(root.glob("abdomen_ct-*/imagesTr/*.nii.gz"))
    assert found, f"no synthetic CT in {root}"
    return found


def test_pretrain_writes_checkpoint_encoder_metrics_and_figure(run3d):
    latest = (run3d / "checkpoints" / "LATEST").read_text().strip()
    assert latest == ckpt.step_dir_name(3)
    ckpt.verify(run3d / "checkpoints" / latest)
    assert [r["step"] for r in train_rows(run3d)] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in train_rows(run3d))
    figures = sorted((run3d / "figures").glob("*.png"))
    assert figures and figures[-1].read_bytes()[:8] == PNG_MAGIC
    with Image.open(figures[-1]) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_the_exported_encoder_carries_its_contract(run3d):
    path = run3d / "export" / "encoder.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "medmae-encoder"
    assert meta["arch"] == "vit"
    assert meta["spatial_dims"] == "3"
    assert json.loads(meta["patch_size"]) == [16, 16, 16]
    assert meta["in_channels"] == "1"
    assert json.loads(meta["img_size"]) == [32, 32, 32]
    assert json.loads(meta["intensity"]) == {"name": "ct_window", "lo": -175.0, "hi": 250.0}
    contract = read_contract(path)
    assert contract["encoder"]["embed_dim"] == 32 and contract["encoder"]["depth"] == 1
    assert contract["pretraining"]["steps"] == 3
    weights = load_file(str(path))
    mae = ckpt.load_checkpoint(latest_checkpoint(run3d)).model_state
    assert weights.keys() == {k[len("encoder."):] for k in mae if k.startswith("encoder.")}
    assert all(torch.equal(v, mae["encoder." + k]) for k, v in weights.items())


def test_reconstruct_writes_a_figure_and_a_nifti_triplet(run3d, tmp_path):
    image = synthetic_ct_images()[0]
    out = tmp_path / "recon"
    result = invoke(["reconstruct", str(run3d), str(image), "--out", str(out)])
    assert_clean_exit(result, 0)
    stem = image.name[: -len(".nii.gz")]
    assert (out / f"{stem}_recon.png").read_bytes()[:8] == PNG_MAGIC
    vols = {s: nib.load(str(out / f"{stem}_{s}.nii.gz")).get_fdata() for s in ("original", "masked", "reconstruction")}
    assert all(v.shape == (32, 32, 32) for v in vols.values())
    masked_patches = 0
    for corner in np.ndindex(2, 2, 2):  # the 8 patches of 16^3
        box = tuple(slice(16 * c, 16 * c + 16) for c in corner)
        orig, shown, recon = (vols[s][box] for s in ("original", "masked", "reconstruction"))
        assert orig.any(), "every patch of the synthetic CT has tissue"
        if (shown == 0).all():
            masked_patches += 1
            assert not np.allclose(recon, orig, atol=1e-3), "a masked patch cannot be reproduced exactly"
        else:
            np.testing.assert_array_equal(shown, orig)
            np.testing.assert_allclose(recon, orig, atol=1e-5, err_msg="visible patches are copied")
    assert masked_patches == 6, "mask ratio 0.75 of 8 patches"


def test_a_two_channel_image_for_a_one_channel_model_is_an_error_naming_the_file(run3d, tmp_path):
    bad = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 32, 2), np.float32), np.eye(4)), str(bad))
    result = invoke(["reconstruct", str(run3d), str(bad), "--out", str(tmp_path / "recon")])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = flat(result.output)
    assert "two_channels.nii.gz" in text and "expected1channel" in text and "got2" in text


def test_rerunning_into_a_run_with_checkpoints_is_refused(run3d):
    before = sorted(p.name for p in (run3d / "checkpoints").iterdir())
    result = invoke(pretrain_args(run3d, "demo-3d", TINY_3D, "--max-steps", "3"))
    assert_clean_exit(result, 2)
    assert "--resume" in result.output and "alreadyholdscheckpoints" in flat(result.output)
    assert sorted(p.name for p in (run3d / "checkpoints").iterdir()) == before


# ------------------------------------------------------------------------------------------- bad data


def test_a_truncated_nifti_in_the_data_folder_is_named(tmp_path):
    data = tmp_path / "ct"
    data.mkdir()
    hu = np.random.default_rng(0).integers(-1000, 1000, (40, 40, 32)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 2.0, 1.0])), str(data / "good.nii.gz"))
    raw = (data / "good.nii.gz").read_bytes()
    (data / "cut_short.nii.gz").write_bytes(raw[: len(raw) // 3])
    result = invoke(pretrain_args(tmp_path / "run", "demo-3d", TINY_3D, "--data", str(data)))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "cut_short.nii.gz" in flat(result.output)


def test_a_non_image_named_png_in_the_data_folder_is_named(tmp_path):
    data = tmp_path / "cxr"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(data / "real.png")
    (data / "notes.png").write_text("this is not an image\n")
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", TINY_2D, "--data", str(data)))
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "notes.png" in flat(result.output)


# ------------------------------------------------------------------------------------------------ resume


def test_resume_from_a_missing_path_exits_2_naming_it(tmp_path):
    missing = tmp_path / "no" / "such" / "checkpoint"
    result = invoke(pretrain_args(tmp_path / "run", "demo-2d", TINY_2D, "--resume", str(missing)))
    assert_clean_exit(result, 2)
    text = flat(result.output)
    assert str(missing) in text and "doesnotexist" in text


def test_resume_auto_in_an_empty_run_dir_starts_fresh(tmp_path):
    run = tmp_path / "run"
    result = invoke(pretrain_args(run, "demo-2d", TINY_2D, "--resume", "auto", "--max-steps", "2"))
    assert_clean_exit(result, 0)
    assert [r["step"] for r in train_rows(run)] == [1, 2]
    assert checkpoint_steps(run) == [2]


def test_resume_auto_skips_a_corrupted_newest_checkpoint_and_finishes_identically(tmp_path):
    run = tmp_path / "run"
    args = pretrain_args(run, "demo-2d", (*TINY_2D, "train.keep_last=3"))
    assert_clean_exit(invoke(args), 0)
    assert checkpoint_steps(run) == [4, 8, 12]
    losses = loss_reprs(run)
    final = {k: v.clone() for k, v in load_file(str(latest_checkpoint(run) / ckpt.MODEL_FILE)).items()}  # no mmap

    newest = run / "checkpoints" / ckpt.step_dir_name(12) / ckpt.MODEL_FILE
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0x40
    newest.write_bytes(bytes(data))
    result = invoke([*args, "--resume", "auto"])
    assert_clean_exit(result, 0)
    text = flat(result.output)
    assert "step_00000012" in text and "fallingback" in text, "the fallback must be reported"
    assert "resumedfrom" in text and "step_00000008" in text
    kept = run / "checkpoints" / "quarantine" / ckpt.step_dir_name(12)
    assert (kept / ckpt.MODEL_FILE).read_bytes() == bytes(data), "the unverifiable checkpoint is kept, not deleted"
    assert flat(str(kept)) in text

    assert loss_reprs(run) == losses
    again = load_file(str(latest_checkpoint(run) / ckpt.MODEL_FILE))
    assert all(torch.equal(again[k], v) for k, v in final.items())
    ckpt.verify(latest_checkpoint(run))


def test_config_errors_are_printed_without_markup_and_mean_over_is_checked_before_training(tmp_path):
    """Brackets in messages survive (no rich markup), and unknown eval.mean_over names stop the run before training."""
    result = invoke(["finetune", "--task", "seg", "--preset", "demo-3d", "--run-dir", str(tmp_path / "F"),
                     *set_args((*TINY_3D, "eval.mean_over=[nope]")), "--max-steps", "1"])
    assert result.exit_code == 2, result.output
    assert "['nope']" in flat(result.output) and not (tmp_path / "F" / "checkpoints").exists()


def test_the_help_of_training_commands_names_the_tracking_keys():
    for command in ("pretrain", "finetune", "sweep"):
        text = flat(invoke([command, "--help"]).output)
        assert "logging.tensorboard=true" in text and "logging.mlflow_uri=URI" in text, command
