"""Config values that would crash a model, an optimizer or the first batch are refused when the config is read,
naming the key; a run's ``config.yaml`` holds only the model keys its architecture reads."""

from __future__ import annotations

import pytest
import yaml

from medmae.config import ConfigError, FinetuneConfig, PretrainConfig, dump_yaml, load_config, validate
from medmae.models.registry import build_mae

TINY = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.decoder.depth=1",
        "model.decoder.embed_dim=16", "model.decoder.num_heads=2")


def config_error(preset: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, preset=preset, overrides=overrides)
    return str(err.value)


@pytest.mark.parametrize(("preset", "override", "key"), [
    ("demo-2d", "model.num_heads=5", "model.num_heads: 5 heads do not divide embed_dim=32"),
    ("demo-2d", "model.decoder.num_heads=5", "model.decoder.num_heads: 5 heads do not divide decoder.embed_dim=16"),
    ("demo-swin-2d", "model.swin.num_heads=[1,2,4,5]", "model.swin.num_heads[3]: 5 heads do not divide"),
])
def test_heads_that_do_not_divide_the_width_are_config_errors(preset, override, key):
    message = config_error(preset, *TINY, override)
    assert key in message


def test_the_swin_heads_check_follows_the_stage_widths():
    load_config(PretrainConfig, preset="demo-swin-2d", overrides=["model.swin.embed_dim=12", "model.swin.num_heads=[3,3,3,3]"])
    message = config_error("demo-swin-2d", "model.swin.embed_dim=12", "model.swin.num_heads=[3,3,3,7]")
    assert "model.swin.num_heads[3]: 7 heads do not divide swin.embed_dim * 2**3=96" in message


@pytest.mark.parametrize(("override", "key"), [
    ("train.threads=-3", "train.threads"), ("train.threads=0", "train.threads"),
    ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"), ("optim.base_lr=0", "optim.base_lr"),
    ("optim.weight_decay=-0.05", "optim.weight_decay"), ("optim.min_lr=-1e-6", "optim.min_lr"),
    ("optim.clip_grad=0", "optim.clip_grad"), ("optim.betas=[0.9,1.0]", "optim.betas.1"),
    ("model.mlp_ratio=0", "model.mlp_ratio"), ("model.img_size=[0,32]", "model.img_size.0"),
])
def test_out_of_range_values_name_their_key(override, key):
    assert f"{key}: Input should be" in config_error("demo-2d", *TINY, override)


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lr=.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.base_lr=.inf", "optim.base_lr"),
    ("data.intensity.hi=.inf", "data.intensity.hi"), ("data.spacing=[.nan, 1.0]", "data.spacing.0"),
    ("mask.ratio=.nan", "mask.ratio"), ("data.modality_weights={XR: .inf}", "data.modality_weights.XR"),
    ("data.crop_scale=[.nan, 1.0]", "data.crop_scale.0"),
])
def test_non_finite_floats_are_refused_in_every_section(override, key):
    assert f"{key}: Input should be a finite number" in config_error("demo-2d", *TINY, override)


def test_a_3d_preset_turned_2d_is_refused_for_its_flip_axes():
    message = config_error("demo-3d", *TINY, "model.spatial_dims=2", "model.img_size=[32,32]")
    assert "data.flip_axes: axes [2] out of range for model.spatial_dims=2" in message


@pytest.mark.parametrize(("preset", "overrides", "expected"), [
    ("demo-2d", ["data.flip_axes=[0,0]"], "data.flip_axes: [0, 0] names an axis twice"),
    ("demo-3d", ["data.slice_axis=2"], "data.slice_axis: slices are for 2D models"),
    ("demo-3d", ["data.resize=[64,64]"], "data.resize: [64, 64] has 2 values, model.spatial_dims=3 needs 3"),
    ("demo-2d", ["data.resize=[64,64,64]"], "data.resize: [64, 64, 64] has 3 values, model.spatial_dims=2 needs 2"),
    ("demo-3d", ["data.crop_scale=[0.5,1.0]"], "data.crop_scale: random-resized crops are 2D only"),
    ("demo-2d", ["data.crop_scale=[0.9,0.5]"], "data.crop_scale: [0.9, 0.5] must be area fractions"),
    ("demo-3d", ["data.intensity.lo=300"], "data.intensity.hi: the window [lo, hi] = [300.0, 250.0] is empty"),
])
def test_keys_that_must_agree_with_each_other(preset, overrides, expected):
    assert expected in config_error(preset, *TINY, *overrides)


def test_a_2d_resize_of_volumes_sliced_for_a_2d_model_is_allowed():
    load_config(PretrainConfig, preset="demo-2d", overrides=[*TINY, "data.slice_axis=2", "data.resize=[64,64,48]"])


@pytest.mark.parametrize(("overrides", "expected"), [
    (["eval.fold=5", "eval.folds=5"], "eval.fold: fold 5 does not exist with folds=5"),
    (["eval.test_fraction=0.6", "eval.val_fraction=0.4"], "eval.val_fraction: test_fraction 0.6 + val_fraction 0.4"),
    (["eval.test_fraction=0", "eval.val_fraction=0.2"], "eval.val_fraction: a validation split"),
    (["eval.regions={WT: [1, 2]}", "eval.mean_over=[TC]"], "eval.mean_over: ['TC'] are not among eval.regions"),
    (["eval.threshold=.nan"], "eval.threshold: Input should be a finite number"),
])
def test_eval_keys_that_must_agree(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(FinetuneConfig, {}, overrides=overrides)
    assert expected in str(err.value)


def test_test_fraction_zero_is_a_valid_config():
    assert load_config(FinetuneConfig, {}, overrides=["eval.test_fraction=0"]).eval.test_fraction == 0


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 7\)"):
        load_config(PretrainConfig, path)


# ------------------------------------------------------------------------------------------ config.yaml


def test_a_resenc_config_yaml_holds_only_resenc_model_keys_and_loads_back():
    cfg = load_config(PretrainConfig, preset="demo-resenc-3d", overrides=["model.resenc.kernel_size=5"])
    text = dump_yaml(cfg)
    model = yaml.safe_load(text)["model"]
    assert set(model) == {"arch", "spatial_dims", "img_size", "patch_size", "in_channels", "drop_path", "resenc", "encoder"}
    again = load_config(PretrainConfig, yaml.safe_load(text))
    assert dump_yaml(again) == text
    assert again.model.resenc == cfg.model.resenc and again.data == cfg.data and again.optim == cfg.optim
    assert sum(p.numel() for p in build_mae(again).parameters()) == sum(p.numel() for p in build_mae(cfg).parameters())


def test_a_swin_config_yaml_keeps_the_block_keys_it_reads_and_a_vit_one_its_decoder():
    swin = yaml.safe_load(dump_yaml(load_config(PretrainConfig, preset="demo-swin-2d")))["model"]
    assert {"swin", "mlp_ratio", "qkv_bias"} <= set(swin) and not {"size", "embed_dim", "decoder", "resenc"} & set(swin)
    vit = yaml.safe_load(dump_yaml(load_config(PretrainConfig, preset="demo-2d")))["model"]
    assert {"size", "embed_dim", "num_heads", "decoder", "pos_embed"} <= set(vit) and not {"swin", "resenc"} & set(vit)


def test_a_finetune_config_yaml_has_no_mae_decoder():
    cfg = validate(FinetuneConfig, {"model": {"arch": "vit", "size": "vit-t"}}, "test")
    assert "decoder" not in yaml.safe_load(dump_yaml(cfg))["model"]


def test_an_old_config_yaml_with_every_key_still_loads():
    cfg = load_config(PretrainConfig, preset="demo-resenc-3d")
    full = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)  # what older versions wrote
    assert "swin" in yaml.safe_load(full)["model"]
    assert load_config(PretrainConfig, yaml.safe_load(full)) == cfg


def test_reading_a_config_does_not_import_torch():
    """The config floor is pydantic and YAML only: loading a preset in a fresh process leaves torch unimported."""
    import subprocess
    import sys

    code = ("import sys, medmae.config as c; c.load_config(c.PretrainConfig, preset='demo-2d'); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
