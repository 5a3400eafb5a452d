"""Loading pretrained weights into a model: sources, the adaptation plan and applying it, the load report."""

import argparse
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from exports import DIM, export, smooth_table, vit
from medmae.config import FinetuneConfig, finetune_raw_from_preset, load_config
from medmae.errors import ContractError, ExportError
from medmae.models.adapt import (
    EncoderSource,
    adapt_channels,
    build_task_model,
    family_plan,
    interpolate_pos_embed,
    load_encoder_weights,
    plan_of,
    read_encoder_source,
)
from medmae.models.contract import AdaptationPlan, PosEmbedPlan, make_contract, read_contract, save_encoder
from medmae.models.heads import Classifier
from medmae.models.registry import family
from medmae.models.vit import ViT


# ----------------------------------------------------------------------------------- pos-embed interpolation


@pytest.mark.parametrize("grid,new", [((4, 6), (8, 3)), ((4, 4, 2), (2, 6, 4))])
def test_pos_embed_interpolation_shapes_and_identity(grid, new):
    table = torch.randn(1, math.prod(grid), 12)
    assert torch.equal(interpolate_pos_embed(table, grid, grid), table)
    out = interpolate_pos_embed(table, grid, new)
    assert out.shape == (1, math.prod(new), 12) and out.dtype == table.dtype


@pytest.mark.parametrize("grid", [(6, 10), (6, 4, 8)])
def test_pos_embed_round_trip_keeps_a_smooth_table(grid):
    table = smooth_table(grid)
    up = tuple(2 * n for n in grid)
    back = interpolate_pos_embed(interpolate_pos_embed(table, grid, up), up, grid)
    err = (back - table).abs().reshape(*grid, -1)
    # linear resampling clamps at the border: tokens there move by up to a quarter token and back
    assert err.max() < 0.08 and err[(slice(1, -1),) * len(grid)].max() < 0.02, err.max()
    # a resampling that swapped the axes would be far off: the waves differ per axis
    swapped = table.reshape(1, *grid, -1).transpose(1, 2).reshape(1, -1, table.shape[-1])
    if len(grid) == 2:
        assert (interpolate_pos_embed(swapped, grid[::-1], grid) - table).abs().max() > 0.3


def test_upsampled_table_matches_the_finer_grid():
    """Resampling a plane wave to a 2x finer grid gives the wave at the new token centres."""
    grid, fine = (8, 8), (16, 16)
    table = smooth_table(grid)
    up = interpolate_pos_embed(table, grid, fine).reshape(*fine, -1)
    coarse = table.reshape(*grid, -1)
    # fine token (2i+1, 2j+1) sits at coarse coordinate (i + 0.25, j + 0.25): close to coarse token (i, j)
    err = (up[3:13:2, 3:13:2] - coarse[1:6, 1:6]).abs().max().item()
    assert err < 0.2


# ------------------------------------------------------------------------------------- channel adaptation


@pytest.mark.parametrize("src,dst", [(1, 3), (3, 1), (1, 4), (3, 4)])
def test_adapt_channels_keeps_the_grey_response(src, dst):
    torch.manual_seed(0)
    w = torch.randn(DIM, src, 4, 4)
    new = adapt_channels(w, dst)
    assert new.shape == (DIM, dst, 4, 4)
    grey = torch.rand(2, 1, 4, 4)
    ref = torch.nn.functional.conv2d(grey.expand(-1, src, -1, -1), w)
    torch.testing.assert_close(torch.nn.functional.conv2d(grey.expand(-1, dst, -1, -1), new), ref)


def test_one_channel_export_into_four_channel_encoder(tmp_path):
    torch.manual_seed(0)
    src = vit(3, img=32, patch=16)
    path = export(tmp_path / "enc.safetensors", src)
    dst = vit(3, img=32, patch=16, in_channels=4)
    report = load_encoder_weights(dst, read_encoder_source(path))
    assert report.reshaped == ["patch_embed.proj.weight"]
    assert any("1 to 4 input channels" in a for a in report.adaptations)
    assert report.missing == [] and report.unexpected == []
    grey = torch.rand(2, 1, 32, 32, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst(grey.expand(-1, 4, -1, -1, -1)), src(grey), atol=1e-5, rtol=1e-4)


# -------------------------------------------------------------------------------------------- load report


def test_medmae_export_into_classifier(tmp_path):
    torch.manual_seed(0)
    pre = vit(pos_embed="sincos")
    pre.pos_embed.mul_(0.5).add_(0.1)  # a table no fresh encoder has, so a copy is visible
    path = export(tmp_path / "export" / "encoder.safetensors", pre)
    src = read_encoder_source(tmp_path)  # a pretraining run directory names its export
    assert src.kind == "medmae" and src.path == str(path) and src.contract["encoder"]["patch_size"] == [8, 8]
    torch.manual_seed(1)
    model = Classifier(vit(pos_embed="learnable"), 3)
    head_before = model.head.weight.detach().clone()
    report = load_encoder_weights(model.encoder, read_encoder_source(path))
    assert report.loaded == sorted(pre.state_dict()) and "pos_embed" in report.loaded
    assert report.missing == [] and report.unexpected == [] and report.reshaped == [] and report.adaptations == []
    assert isinstance(model.encoder.pos_embed, torch.nn.Parameter) and model.encoder.pos_embed.requires_grad
    torch.testing.assert_close(model.encoder.pos_embed.detach(), pre.pos_embed)
    for k, v in pre.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v)
    assert torch.equal(model.head.weight, head_before)
    assert "0 missing" in report.summary() and str(path) in report.summary()


def test_run_directory_without_export_is_an_error(tmp_path):
    with pytest.raises(ExportError, match=f"{tmp_path}.*export/encoder.safetensors"):
        read_encoder_source(tmp_path)


def test_medmae_export_into_a_larger_image_interpolates(tmp_path):
    pre = vit(img=32)
    path = export(tmp_path / "enc.safetensors", pre)
    enc = vit(img=48, pos_embed="learnable")
    report = load_encoder_weights(enc, read_encoder_source(path))
    assert report.reshaped == ["pos_embed"]
    assert report.adaptations == ["pos_embed interpolated from grid (4, 4) to (6, 6)"]
    torch.testing.assert_close(enc.pos_embed.detach(), interpolate_pos_embed(pre.pos_embed, (4, 4), (6, 6)))


def timm_state(enc: ViT) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``enc`` as a timm / MAE checkpoint: prefixed keys, cls slot in pos_embed, head and decoder keys."""
    s = enc.state_dict()
    cls_pos = torch.randn(1, 1, DIM)
    state = {}
    for i, (k, v) in enumerate(s.items()):
        if k == "pos_embed":
            v = torch.cat([cls_pos, v], dim=1)
        state[("module." if i % 2 else "model.") + k] = v
    state.update({"head.weight": torch.randn(5, DIM), "head.bias": torch.zeros(5), "mask_token": torch.zeros(1, 1, DIM),
                  "decoder_embed.weight": torch.randn(16, DIM), "decoder_pos_embed": torch.zeros(1, 17, 16),
                  "decoder_blocks.0.norm1.weight": torch.ones(16)})
    return state, cls_pos


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_style_checkpoint(tmp_path, fmt):
    torch.manual_seed(0)
    rgb = vit(img=32, in_channels=3, pos_embed="learnable")
    with torch.no_grad():
        rgb.pos_embed.copy_(smooth_table(rgb.grid, DIM))
    state, cls_pos = timm_state(rgb)
    path = tmp_path / f"vit.{fmt}"
    if fmt == "pth":
        torch.save({"model": state, "epoch": 3}, path)
    else:
        save_file(state, str(path))
    src = read_encoder_source(path)
    assert src.kind == "foreign" and src.contract is None
    enc = vit(img=64, in_channels=1, pos_embed="learnable")
    report = load_encoder_weights(enc, src)
    assert sorted(report.reshaped) == ["patch_embed.proj.weight", "pos_embed"]
    assert len(report.adaptations) == 3
    for what in ("cls slot of pos_embed folded into cls_token", "pos_embed interpolated from grid (4, 4) to (8, 8)",
                 "from 3 to 1 input channels"):
        assert any(what in a for a in report.adaptations), (what, report.adaptations)
    assert report.loaded == sorted(rgb.state_dict()) and report.missing == [] and report.unexpected == []
    assert not any(k.startswith(("head", "decoder", "mask_token")) for k in report.loaded)
    got = enc.state_dict()
    torch.testing.assert_close(got["cls_token"], rgb.cls_token.detach() + cls_pos)
    torch.testing.assert_close(got["blocks.1.attn.qkv.weight"], rgb.blocks[1].attn.qkv.weight.detach())
    grey_kernel = rgb.patch_embed.proj.weight.detach().sum(1, keepdim=True)
    torch.testing.assert_close(got["patch_embed.proj.weight"], grey_kernel)
    torch.testing.assert_close(got["pos_embed"], interpolate_pos_embed(rgb.pos_embed.detach(), (4, 4), (8, 8)))


def test_checkpoint_of_another_size_names_the_key(tmp_path):
    other = ViT(2, (32, 32), (8, 8), 1, embed_dim=48, depth=2, num_heads=2)
    path = tmp_path / "big.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ContractError, match=r"big\.pth: \S+ has shape \([^)]*48[^)]*\), the model expects \([^)]*32"):
        load_encoder_weights(vit(), read_encoder_source(path))


def test_foreign_patch_size_is_an_error(tmp_path):
    path = tmp_path / "p16.pth"
    torch.save(vit(img=32, patch=16).state_dict(), path)
    with pytest.raises(ContractError, match=r"p16\.pth: .*\(16, 16\) differs from the model's \(8, 8\)"):
        load_encoder_weights(vit(img=32, patch=8), read_encoder_source(path))


def test_load_that_matches_nothing(tmp_path):
    src = EncoderSource(str(tmp_path / "w.pth"), {"layer1.conv.weight": torch.zeros(3)}, None, "foreign")
    with pytest.raises(ContractError, match=r"w\.pth: no tensor matches the encoder \(0 of \d+ keys loaded\)"):
        load_encoder_weights(vit(), src)


def test_unusable_files_are_errors_naming_the_file(tmp_path):
    cnn = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, str(cnn))
    pickled = tmp_path / "mae_finetuned.pth"
    torch.save({"model": vit().state_dict(), "args": argparse.Namespace(lr=1e-3)}, pickled)
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    broken = tmp_path / "broken.safetensors"
    broken.write_text("not a safetensors header")
    for path, why in [(cnn, "not a medmae encoder export, nor a timm / MAE ViT checkpoint"),
                      (pickled, "argparse.Namespace"), (text, "cannot be loaded as plain weights"),
                      (broken, "not a readable safetensors file"), (tmp_path / "missing.pth", "no such encoder file")]:
        with pytest.raises(ExportError) as err:
            read_encoder_source(path)
        assert str(err.value).startswith(str(path)) and why in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------ the adaptation plan

FIXTURES = Path(__file__).parent / "fixtures" / "export_v1"  # written by medmae before the plan existed


def test_a_version_1_export_gets_its_familys_plan():
    vit_src = read_encoder_source(FIXTURES / "vit" / "encoder.safetensors")
    assert vit_src.contract["format_version"] == 1 and "adaptation" not in vit_src.contract
    assert plan_of(vit_src, 2) == AdaptationPlan(stem_key="patch_embed.proj.weight",
                                                 pos_embed=PosEmbedPlan("pos_embed", (4, 4), True, False))
    res_src = read_encoder_source(FIXTURES / "resenc" / "encoder.safetensors")
    assert plan_of(res_src, 3) == AdaptationPlan(stem_key="stem.conv.weight", extra_parts=("decoder",))
    assert plan_of(res_src, 3).key_prefix == "encoder."


def ft_config(task: str, preset: str, *overrides: str) -> FinetuneConfig:
    """A preset's fine-tuning config for ``task`` (as ``medmae finetune --preset``)."""
    return load_config(FinetuneConfig, {**finetune_raw_from_preset(preset, task), "task": task}, overrides=overrides)


def test_a_version_1_vit_export_still_fine_tunes():
    """An export written before the plan existed loads as before: architecture adopted, position table
    interpolated to the new grid, stem adapted to three channels, every tensor loaded."""
    cfg = ft_config("cls", "demo-2d", "model.img_size=[48,48]", "model.in_channels=3")
    model, report = build_task_model(cfg, 2, str(FIXTURES / "vit" / "encoder.safetensors"))
    exported = load_file(str(FIXTURES / "vit" / "encoder.safetensors"))
    assert cfg.model.encoder["embed_dim"] == 8 and cfg.model.encoder["depth"] == 1
    assert report.loaded == sorted(exported) and report.missing == [] and report.unexpected == []
    assert report.adaptations == ["pos_embed interpolated from grid (4, 4) to (6, 6)",
                                  "patch_embed.proj.weight adapted from 1 to 3 input channels"]
    torch.testing.assert_close(model.encoder.blocks[0].attn.qkv.weight.detach(), exported["blocks.0.attn.qkv.weight"])


def test_a_version_1_resenc_export_still_fine_tunes_with_its_decoder():
    cfg = ft_config("seg", "demo-resenc-3d", "model.img_size=[32,32,32]")
    model, report = build_task_model(cfg, 3, str(FIXTURES / "resenc" / "encoder.safetensors"))
    decoder = load_file(str(FIXTURES / "resenc" / "decoder.safetensors"))
    assert set(report.loaded) == set(load_file(str(FIXTURES / "resenc" / "encoder.safetensors"))) | {
        f"decoder.{k}" for k in decoder}
    assert all(torch.equal(model.decoder.state_dict()[k], v) for k, v in decoder.items())


def rewrite_with_plan(src_dir: Path, dst_dir: Path, **plan_changes) -> Path:
    """The ResEnc fixture as a version-2 export whose plan differs from the family's by ``plan_changes``."""
    contract = read_contract(src_dir / "encoder.safetensors")
    plan = replace(family_plan(family("resenc"), contract["encoder"]), **plan_changes)
    contract = {**{k: v for k, v in contract.items() if k != "format_version"},
                **make_contract(arch="resenc", encoder=contract["encoder"], preprocessing=contract["preprocessing"],
                                pretraining=contract["pretraining"], adaptation=plan)}
    for name in ("encoder", "decoder"):
        save_encoder(dst_dir / f"{name}.safetensors", load_file(str(src_dir / f"{name}.safetensors")),
                     contract if name == "encoder" else {**contract, "part": name})
    return dst_dir / "encoder.safetensors"


def test_fine_tuning_follows_the_plan_in_the_export(tmp_path):
    """``extra_parts`` empty: the decoder beside the export is not loaded, though the task model has one."""
    path = rewrite_with_plan(FIXTURES / "resenc", tmp_path, extra_parts=())
    assert read_contract(path)["adaptation"]["extra_parts"] == [] and read_contract(path)["format_version"] == 2
    cfg = ft_config("seg", "demo-resenc-3d", "model.img_size=[32,32,32]")
    torch.manual_seed(0)
    model, report = build_task_model(cfg, 3, str(path))
    assert report.loaded == sorted(load_file(str(path))) and not any(k.startswith("decoder.") for k in report.loaded)
    torch.manual_seed(0)
    scratch, _ = build_task_model(ft_config("seg", "demo-resenc-3d", "model.img_size=[32,32,32]",
                                            "model.resenc.widths=[2,4]", "model.resenc.blocks=[1,1]"), 3, None)
    assert all(torch.equal(v, scratch.decoder.state_dict()[k]) for k, v in model.decoder.state_dict().items())
    # the family's own plan loads it
    full = rewrite_with_plan(FIXTURES / "resenc", tmp_path / "full")
    _, report = build_task_model(ft_config("seg", "demo-resenc-3d", "model.img_size=[32,32,32]"), 3, str(full))
    assert any(k.startswith("decoder.") for k in report.loaded)


def test_a_plan_that_forbids_interpolation_is_kept(tmp_path):
    pre = vit(img=32)
    kwargs = read_contract(export(tmp_path / "a.safetensors", pre))["encoder"]
    plan = replace(family_plan(family("vit"), kwargs), pos_embed=PosEmbedPlan("pos_embed", (4, 4), interpolate=False))
    prep = read_contract(tmp_path / "a.safetensors")["preprocessing"]
    path = save_encoder(tmp_path / "b.safetensors", pre.state_dict(),
                        make_contract(arch="vit", encoder=kwargs, preprocessing=prep, adaptation=plan))
    assert load_encoder_weights(vit(img=32), read_encoder_source(path)).adaptations == []
    with pytest.raises(ContractError, match=r"b\.safetensors: pos_embed was trained on the token grid \(4, 4\), the "
                                            r"model's is \(6, 6\).*does not allow interpolating"):
        load_encoder_weights(vit(img=48), read_encoder_source(path))


def test_a_plan_that_does_not_fit_the_file_is_an_error_naming_it(tmp_path):
    pre = vit(img=32)
    contract = read_contract(export(tmp_path / "a.safetensors", pre))
    plan = replace(family_plan(family("vit"), contract["encoder"]), pos_embed=PosEmbedPlan("pos_embed", (3, 3)))
    path = save_encoder(tmp_path / "grid.safetensors", pre.state_dict(),
                        make_contract(arch="vit", encoder=contract["encoder"], preprocessing=contract["preprocessing"],
                                      adaptation=plan))
    with pytest.raises(ContractError, match=r"grid\.safetensors: pos_embed of shape \(1, 16, 32\) does not fit the "
                                            r"token grid \(3, 3\) of its adaptation plan"):
        load_encoder_weights(vit(img=32), read_encoder_source(path))
    path = rewrite_with_plan(FIXTURES / "resenc", tmp_path / "prefix", key_prefix="backbone.")
    with pytest.raises(ExportError, match=r"prefix/encoder\.safetensors: its adaptation plan puts the encoder at "
                                          r"'backbone\.', which the resenc seg model does not have"):
        build_task_model(ft_config("seg", "demo-resenc-3d", "model.img_size=[32,32,32]"), 3, str(path))


def test_a_foreign_checkpoint_gets_an_inferred_plan(tmp_path):
    state, _ = timm_state(vit(img=32))
    torch.save(state, tmp_path / "timm.pth")
    plan = plan_of(read_encoder_source(tmp_path / "timm.pth"), 2)
    assert plan == AdaptationPlan(stem_key="patch_embed.proj.weight",
                                  pos_embed=PosEmbedPlan("pos_embed", (4, 4), True, cls_slot=True))
