"""Swin (VIS-MAE) and ResEnc (Revisiting MAE 3D) families through medmae's tasks: pretraining runs and their
exports, loading into task models, fine-tuning + evaluation, overfitting one sample, and the paper presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from safetensors.torch import load_file

from helpers import invoke, train_rows
from medmae.config import ConfigError, FinetuneConfig, PretrainConfig, load_config, preset_names
from medmae.data.synthetic import abdomen_ct, chest_xray
from medmae.engine import checkpoint as ckpt
from medmae.engine.optim import warmup_poly
from medmae.models.adapt import family_plan, load_encoder_weights, load_extra_parts, read_encoder_source
from medmae.models.contract import read_contract
from medmae.models.heads import Classifier
from medmae.models.registry import build_encoder, build_mae, family
from medmae.models.resenc import ResEncEncoder, ResEncMAE, ResEncUNet
from medmae.models.swin import SwinEncoder, SwinMAE, SwinUNet
from medmae.tasks import finetune as ft
from medmae.tasks.evaluate import evaluate
from medmae.tasks.pretrain import pretrain

# 12 synthetic 32x32 radiographs; a two-stage Swin (8x8 patch grid, four 16 px windows)
SWIN_DATA = ("data.synthetic.n=12", "data.synthetic.size=[32,32]", "model.img_size=[32,32]")
SWIN_TINY = (*SWIN_DATA, "model.swin.embed_dim=8", "model.swin.depths=[1,1]", "model.swin.num_heads=[1,2]",
             "model.swin.window_size=4", "train.batch_size=4", "data.figure_cases=1")
# 4 synthetic CT volumes cropped to 32^3 (eight 16^3 mask blocks); a two-stage ResEnc 4 -> 8 wide
RESENC_DATA = ("data.synthetic.n=4", "data.synthetic.size=[40,40,32]", "model.img_size=[32,32,32]")
RESENC_TINY = (*RESENC_DATA, "model.resenc.widths=[4,8]", "model.resenc.blocks=[1,1]", "data.figure_cases=1")


@pytest.fixture(scope="module")
def swin_run(tmp_path_factory) -> Path:
    return pretrain(preset="demo-swin-2d", run_dir=tmp_path_factory.mktemp("swin") / "S", overrides=SWIN_TINY,
                    max_steps=3)


@pytest.fixture(scope="module")
def resenc_run(tmp_path_factory) -> Path:
    return pretrain(preset="demo-resenc-3d", run_dir=tmp_path_factory.mktemp("resenc") / "C", overrides=RESENC_TINY,
                    max_steps=3)


# ------------------------------------------------------------------------------------------------ pretraining


@pytest.mark.parametrize("fixture,arch,parts", [("swin_run", "swin", {"encoder"}), ("resenc_run", "resenc", {"encoder", "decoder"})])
def test_pretraining_leaves_checkpoints_exports_and_a_figure(request, fixture, arch, parts):
    run = request.getfixturevalue(fixture)
    latest = ckpt.find_latest_valid(run / "checkpoints")
    assert latest is not None and latest.name == ckpt.step_dir_name(3)
    assert {p.stem for p in (run / "export").glob("*.safetensors")} == parts
    contract = read_contract(run / "export" / "encoder.safetensors")
    assert contract["arch"] == arch and contract["pretraining"]["mask_kind"] == ("window" if arch == "swin" else "block")
    # the adaptation plan fine-tuning follows: the family's, with the parts written beside the encoder
    assert contract["format_version"] == 2 and contract["adaptation"] == family_plan(family(arch), contract["encoder"]).as_json()
    assert set(contract["adaptation"]["extra_parts"]) == parts - {"encoder"} and contract["adaptation"]["pos_embed"] is None
    figures = list((run / "figures").glob("*.png"))
    assert figures and figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["figure_cases_masked_loss"])
    # the exported parts are exactly the trained model's parts
    state = ckpt.load_checkpoint(latest).model_state
    for part in parts:
        exported = load_file(str(run / "export" / f"{part}.safetensors"))
        assert exported.keys() == {k[len(part) + 1:] for k in state if k.startswith(part + ".")}
        assert all(torch.equal(v, state[f"{part}.{k}"]) for k, v in exported.items())


def test_resenc_preset_trains_with_nesterov_sgd_and_a_poly_schedule(resenc_run):
    st = ckpt.load_checkpoint(ckpt.find_latest_valid(resenc_run / "checkpoints")).train_state
    group = st["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.99 and group["nesterov"] is True and "betas" not in group
    rows = train_rows(resenc_run)
    lrs = [r["lr"] for r in rows]
    assert lrs == pytest.approx([warmup_poly(s, lr=1e-2, total_steps=3, warmup_steps=0) for s in range(3)])
    assert lrs[0] == pytest.approx(1e-2) and lrs[1] == pytest.approx(1e-2 * (2 / 3) ** 0.9)


@pytest.mark.parametrize("fixture", ["swin_run", "resenc_run"])
def test_export_loads_into_a_fresh_encoder_with_identical_outputs(request, fixture):
    run = request.getfixturevalue(fixture)
    cfg = load_config(PretrainConfig, run / "config.yaml")
    trained = build_mae(cfg)
    trained.load_state_dict(ckpt.load_checkpoint(ckpt.find_latest_valid(run / "checkpoints")).model_state)
    src = read_encoder_source(run)
    fam = family(src.contract["arch"])
    torch.manual_seed(123)  # a different initialisation from the run's
    fresh = fam.build_encoder(src.contract["encoder"], 0.0)
    report = load_encoder_weights(fresh, src)
    assert report.missing == [] and report.unexpected == [] and report.reshaped == []
    x = torch.rand(2, 1, *cfg.model.img_size)
    trained.encoder.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained.encoder(x), rtol=0, atol=0)


@pytest.mark.parametrize("fixture", ["swin_run", "resenc_run"])
def test_stem_is_adapted_to_more_input_channels(request, fixture):
    run = request.getfixturevalue(fixture)
    src = read_encoder_source(run)
    fam = family(src.contract["arch"])
    one = fam.build_encoder(src.contract["encoder"], 0.0)
    load_encoder_weights(one, src)
    two = fam.build_encoder({**src.contract["encoder"], "in_channels": 2}, 0.0)
    report = load_encoder_weights(two, src)
    assert report.reshaped == [fam.stem_key] and "1 to 2 input channels" in report.adaptations[0]
    x = torch.rand(1, 1, *src.contract["encoder"]["img_size"])
    with torch.no_grad():  # a grey image repeated over the channels gives the same features
        torch.testing.assert_close(two.eval()(x.repeat(1, 2, *[1] * (x.dim() - 2))), one.eval()(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ fine-tuning


@pytest.mark.parametrize("fixture,preset,data", [("swin_run", "demo-swin-2d", SWIN_DATA),
                                                 ("resenc_run", "demo-resenc-3d", RESENC_DATA)])
def test_segmentation_fine_tuning_and_evaluation(request, tmp_path, fixture, preset, data):
    run = request.getfixturevalue(fixture)
    seg = ft.finetune(task="seg", init=run, preset=preset, run_dir=tmp_path / "seg",
                      overrides=(*data, "train.batch_size=2"), max_steps=3)
    task = json.loads((seg / "task.json").read_text())
    expected = set(load_file(str(run / "export" / "encoder.safetensors")).keys())
    if (run / "export" / "decoder.safetensors").is_file():  # the CNN's pretrained U-Net decoder is loaded too
        expected |= {f"decoder.{k}" for k in load_file(str(run / "export" / "decoder.safetensors")).keys()}
        assert fixture == "resenc_run"
    assert set(task["load_report"]["loaded"]) == expected
    assert ckpt.find_latest_valid(seg / "checkpoints").name == ckpt.step_dir_name(3)
    summary = evaluate(seg)
    assert (seg / "eval" / "test" / "summary.json").is_file() and summary["task"] == "seg" and summary["n_cases"] >= 1
    dice = [r for r in summary["rows"] if r["metric"] == "dice"]
    assert dice and all(0.0 <= r["value"] <= 1.0 for r in dice if r["value"] is not None)


def test_resenc_segmenter_takes_the_pretrained_decoder(resenc_run):
    cfg = ft.resolve_finetune_config(task="seg", preset="demo-resenc-3d", overrides=RESENC_DATA)
    model, report = ft.build_task_model(cfg, 3, str(resenc_run))
    assert isinstance(model, ResEncUNet)
    notes = load_extra_parts(model, family(cfg.model.arch).extra_parts, report.source, report)
    exported = load_file(str(resenc_run / "export" / "decoder.safetensors"))
    assert model.decoder.state_dict().keys() == exported.keys()
    assert all(torch.equal(model.decoder.state_dict()[k], v) for k, v in exported.items())
    assert notes == [f"decoder: {len(exported)} tensors loaded from {resenc_run / 'export' / 'decoder.safetensors'}"]
    assert {f"decoder.{k}" for k in exported} <= set(report.loaded) and notes[0] in report.adaptations
    # the segmentation heads are new; a classifier has no decoder to fill
    assert not any(k.startswith("heads.") for k in report.loaded)
    classifier = Classifier(build_encoder(cfg.model), 2, pool="mean")
    assert load_extra_parts(classifier, family("resenc").extra_parts, report.source) == []


# ------------------------------------------------------------------------------------------------ overfitting


def _cxr_sample() -> tuple[torch.Tensor, torch.Tensor]:
    case = chest_xray(3, size=32)
    return torch.from_numpy(case.image_chw)[None], torch.from_numpy(case.anatomy.astype(np.int64))[None, None]


def _ct_sample() -> tuple[torch.Tensor, torch.Tensor]:
    """A 16^3 CT phantom (CT window) and its liver mask, twice: PyTorch's CPU heuristic sends single-sample 3D
    convolutions with few channels to a slow reference kernel, a batch of two to oneDNN (10x faster)."""
    case = abdomen_ct(3, shape=(16, 16, 16))
    x = torch.from_numpy(((np.clip(case.image_cxyz, -175, 250) + 175) / 425).astype(np.float32))[None]
    y = torch.from_numpy((case.label_xyz == 1).astype(np.int64))[None, None]
    return x.repeat(2, 1, 1, 1, 1), y.repeat(2, 1, 1, 1, 1)


def _train(model, loss_fn, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _swin_encoder() -> SwinEncoder:
    return SwinEncoder(2, (32, 32), (4, 4), 1, embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4)


def _resenc_encoder() -> ResEncEncoder:
    return ResEncEncoder(3, (16, 16, 16), (1, 1, 1), 1, widths=(8, 16), blocks=(1, 1))


@pytest.mark.parametrize("kind", ["swin", "resenc"])
def test_pretraining_overfits_one_sample(kind):
    torch.manual_seed(0)
    if kind == "swin":
        x, _ = _cxr_sample()
        mae = SwinMAE(_swin_encoder(), mask_ratio=0.75, mask_block=(2, 2))
    else:
        x, _ = _ct_sample()
        mae = ResEncMAE(_resenc_encoder(), mask_ratio=0.75, mask_block=(8, 8, 8))
    seeds = torch.full((len(x),), 11)
    losses = _train(mae, lambda: mae(x, seeds)["loss"], steps=40, lr=3e-3)
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def _dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    pred = logits.argmax(1, keepdim=True)
    scores = []
    for c in range(1, logits.shape[1]):
        p, t = pred == c, target == c
        scores.append(2 * float((p & t).sum()) / max(1, int(p.sum() + t.sum())))
    return float(np.mean(scores))


@pytest.mark.parametrize("kind", ["swin", "resenc"])
def test_segmentation_fine_tuning_overfits_one_sample(kind):
    torch.manual_seed(0)
    if kind == "swin":
        x, y = _cxr_sample()
        model = SwinUNet(_swin_encoder(), num_classes=3)
    else:
        x, y = _ct_sample()
        model = ResEncUNet(_resenc_encoder(), num_classes=2)
    # VIS-MAE's Dice : CE weighting
    loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.4, lambda_ce=0.6)
    before = _dice(model.eval()(x), y)
    model.train()
    _train(model, lambda: loss(model(x), y), steps=100 if kind == "swin" else 60, lr=3e-3)
    after = _dice(model.eval()(x), y)
    assert after > 0.9 and before < 0.6, (before, after)


# ------------------------------------------------------------------------------------------------ presets


def test_vismae_preset_builds_its_full_size_model():
    cfg = load_config(PretrainConfig, preset="vismae-swin-2d")
    assert (cfg.model.img_size, cfg.model.patch, cfg.mask.block_size, cfg.train.batch_size) == ([224, 224], [4, 4], 16, 640)
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.base_lr * cfg.train.batch_size / 256
    assert lr == pytest.approx(1e-4)
    mae = build_mae(cfg)
    n = sum(p.numel() for p in mae.encoder.parameters())
    # Swin-T (depths 2-2-6-2) is 27.52 M without its ImageNet head; VIS-MAE's 2-2-2-2 drops four 384-wide blocks
    block_384 = 12 * 384**2 + 13 * 384 + 169 * 12
    assert n == 27_519_354 - 2 * 96 * 4 * 4 - 4 * block_384  # and 1 input channel instead of 3
    assert mae.mask_block == (4, 4)
    seg = load_config(FinetuneConfig, ft.finetune_raw_from_preset("vismae-swin-2d", "seg"))
    assert (seg.loss.dice_weight, seg.loss.ce_weight, seg.train.epochs, seg.optim.warmup_epochs) == (0.4, 0.6, 150, 40)
    cls = load_config(FinetuneConfig, ft.finetune_raw_from_preset("vismae-swin-2d", "cls"))
    assert (cls.train.epochs, cls.optim.warmup_epochs) == (50, 10)


def test_resenc_preset_builds_resenc_l():
    cfg = load_config(PretrainConfig, preset="resenc-mae-3d")
    assert cfg.model.img_size == [160, 160, 160] and cfg.train.batch_size == 2 and cfg.train.max_steps == 1000 * 250
    mae = build_mae(cfg)
    n_enc = sum(p.numel() for p in mae.encoder.parameters())
    n_dec = sum(p.numel() for p in mae.decoder.parameters())
    assert 88e6 < n_enc < 93e6 and 16e6 < n_dec < 19e6
    assert mae.block_grid == (10, 10, 10) and not mae.sparse
    assert family("resenc").extra_exports(mae) == {"decoder": mae.decoder}


def test_new_presets_are_listed():
    names = {"vismae-swin-2d", "demo-swin-2d", "resenc-mae-3d", "resenc-mae-3d-adamw", "demo-resenc-3d"}
    assert names <= set(preset_names())
    result = invoke(["presets"])
    assert result.exit_code == 0
    assert all(n in result.output for n in names)


@pytest.mark.parametrize("preset,override,message", [
    ("demo-swin-2d", "mask.kind=block", "'block' does not apply to arch 'swin'"),
    ("demo-resenc-3d", "mask.kind=window", "'window' does not apply to arch 'resenc'"),
    ("demo-2d", "mask.kind=window", "'window' does not apply to arch 'vit'"),
    ("demo-swin-2d", "mask.block_size=6", r"6, 6\] px is not a multiple of the Swin patch size \[4, 4\]"),
    ("demo-resenc-3d", "mask.sparse=true", "multiples of the encoder's total stride 8"),
])
def test_mask_settings_that_do_not_fit_the_family_are_config_errors(preset, override, message):
    overrides = [override] + (["mask.block_size=4"] if "sparse" in override else [])
    cfg = load_config(PretrainConfig, preset=preset, overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        build_mae(cfg)


def test_config_rejects_sizes_the_stages_cannot_halve():
    with pytest.raises(ConfigError, match=r"img_size \[40, 40\] must be divisible by \[32, 32\]"):
        load_config(PretrainConfig, preset="demo-swin-2d", overrides=["model.img_size=[40,40]"])
    with pytest.raises(ConfigError, match="swin is 2D only"):
        load_config(PretrainConfig, preset="demo-swin-2d", overrides=["model.spatial_dims=3", "model.img_size=[64,64,64]"])


def test_deep_supervision_trains_through_finetune(resenc_run, tmp_path):
    """The ResEnc segmenter's multi-scale logits go through the deep-supervision loss of the fine-tuning step."""
    seg = ft.finetune(task="seg", init=resenc_run, preset="demo-resenc-3d", run_dir=tmp_path / "ds",
                      overrides=(*RESENC_DATA, "train.batch_size=2", "model.resenc.deep_supervision=true"), max_steps=2)
    rows = train_rows(seg)
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
