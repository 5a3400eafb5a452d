"""``medmae plan``: fingerprint -> a complete, loadable config on synthetic 2D / 3D datasets of different spacings
and shapes; the plan round-trips through YAML, runs through ``pretrain`` / ``finetune`` / ``sweep --plan`` and is
carried by the run directory, the export contract and ``task.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import invoke
from medmae.config import FinetuneConfig, PretrainConfig, dump_yaml, load_config
from medmae.data.synthetic.writer import write_dataset
from medmae.errors import ConfigError
from medmae.models.contract import read_contract
from medmae.planning import network
from medmae.planning.fingerprint import fingerprint
from medmae.planning.plan import make_plan
from medmae.planning.plan_file import plan_configs, read_plan, write_plan
from medmae.planning.sections import SGD_MIN_STEPS
from medmae.tasks.plan import parse_budget

FAST = {"flops_per_s": 2e11, "memory_bytes": 8 * 2**30}  # a fixed device: no timing in the tests


def ct_manifest(root: Path, z_spacings: list[float]) -> Path:
    """CT volumes (48 x 48 x 16) with 0.8 mm pixels and the given slice spacings, in one manifest with labels."""
    rows = []
    for i, z in enumerate(z_spacings):
        sub = root / f"part{i}"
        write_dataset(sub, "abdomen_ct", 2, seed=i, shape=(48, 48, 16), spacing=(0.8, 0.8, z))
        with (sub / "manifest.csv").open() as f:
            for r in csv.DictReader(f):
                rows.append({"case_id": f"p{i}-{Path(r['path']).name[:-7]}", "path": f"part{i}/{r['path']}",
                             "mask": f"part{i}/{r['mask']}", "subject_id": f"p{i}-{r['subject_id']}", "modality": "CT"})
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, ["case_id", "path", "mask", "subject_id", "modality"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def anisotropic_ct(tmp_path_factory) -> Path:
    return ct_manifest(tmp_path_factory.mktemp("ct"), [2.5, 5.0, 5.0, 5.0, 5.0])


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("cxr"), "cxr", 12, size=48).parent


def test_anisotropic_ct_gets_the_separate_axis_rule_a_foreground_window_and_a_valid_config(anisotropic_ct, tmp_path):
    fp = fingerprint(str(anisotropic_ct))
    assert fp.modality == "CT" and fp.physical_spacing and fp.labelled_seg == 10
    plan = make_plan(fp, task="seg", budget_minutes=30, **FAST)
    want_z = float(np.percentile([2.5] * 2 + [5.0] * 8, 10))  # 10th percentile, not the 5 mm median
    assert plan["data"]["spacing"] == [0.8, 0.8, pytest.approx(want_z)]
    assert "10th percentile" in plan["plan"]["decisions"]["spacing"]["why"]
    window = plan["data"]["intensity"]
    assert window["name"] == "ct_window" and -1000 < window["lo"] < window["hi"] < 3000
    crop = plan["model"]["img_size"]
    stride = 2 ** (len(plan["model"]["resenc"]["widths"]) - 1)
    assert all(c % stride == 0 for c in crop)
    assert plan["model"]["arch"] == "resenc" and plan["finetune"]["seg"]["train"]["max_minutes"] == 30
    assert plan["train"]["max_minutes"] == 60, "the MAE gets twice a fine-tuning run's budget"
    assert plan["finetune"]["seg"]["model"]["resenc"]["deep_supervision"] is True
    assert plan["finetune"]["data"]["foreground_prob"] == pytest.approx(0.33)
    path = write_plan(tmp_path / "plan.yaml", plan)
    configs = plan_configs(read_plan(path))
    assert set(configs) == {"pretrain", "seg"}
    ft: FinetuneConfig = configs["seg"]
    assert ft.data.spacing == plan["data"]["spacing"] and ft.model.img_size == crop and ft.train.max_minutes == 30
    again = load_config(PretrainConfig, yaml.safe_load(dump_yaml(configs["pretrain"])))
    assert dump_yaml(again) == dump_yaml(configs["pretrain"]), "the plan's config round-trips through config.yaml"


def test_radiographs_plan_one_channel_histeq_and_a_smaller_budget_gives_a_smaller_network_or_batch(cxr):
    fp = fingerprint(str(cxr))  # grey PNGs its dataset.json tags XR
    assert fp.spatial_dims == 2 and not fp.physical_spacing and fp.modality == "XR"
    small = make_plan(fp, task="cls", budget_minutes=0.05, flops_per_s=2e10, memory_bytes=8 * 2**30)
    large = make_plan(fp, task="cls", budget_minutes=600, flops_per_s=2e10, memory_bytes=8 * 2**30)
    for p in (small, large):
        assert p["model"]["in_channels"] == 1 and p["data"]["spacing"] is None
        assert p["data"]["intensity"] == {"name": "xray_histeq"}
        assert p["model"]["img_size"] == [48, 48] and p["data"]["resize"] is None
        assert p["finetune"]["head"]["pool"] == "mean"
    width = lambda p: sum(p["model"]["resenc"]["widths"]) * sum(p["model"]["resenc"]["blocks"])  # noqa: E731
    assert (width(small), small["train"]["batch_size"]) < (width(large), large["train"]["batch_size"])
    assert width(small) <= width(large) and small["train"]["batch_size"] <= large["train"]["batch_size"]
    assert small["plan"]["warnings"] and not large["plan"]["warnings"]


def test_vit_and_swin_on_request_get_adamw_cosine_and_their_masks(cxr):
    fp = fingerprint(str(cxr))
    vit = make_plan(fp, task="seg", budget_minutes=60, family="vit", **FAST)
    assert vit["model"]["arch"] == "vit" and vit["mask"]["kind"] == "random" and vit["optim"]["name"] == "adamw"
    assert vit["finetune"]["seg"]["optim"]["schedule"] == "cosine" and vit["finetune"]["seg"]["optim"]["layer_decay"]
    assert all(s % 16 == 0 for s in vit["model"]["img_size"])
    swin = make_plan(fp, task="seg", budget_minutes=60, family="swin", **FAST)
    assert swin["model"]["arch"] == "swin" and swin["mask"]["kind"] == "window"
    assert all(s % 32 == 0 for s in swin["model"]["img_size"])
    for p in (vit, swin):
        plan_configs(read_plan(write_plan(Path(cxr) / f"{p['model']['arch']}.yaml", p)))
    with pytest.raises(ConfigError, match="known families"):
        make_plan(fp, task="seg", budget_minutes=60, family="unet", **FAST)


def test_a_short_budget_trains_the_cnn_with_adamw_and_a_long_one_with_nnunets_sgd(anisotropic_ct):
    fp = fingerprint(str(anisotropic_ct))
    short = make_plan(fp, task="seg", budget_minutes=5, **FAST)
    long = make_plan(fp, task="seg", budget_minutes=60 * 24 * 30, **FAST)
    assert short["plan"]["decisions"]["predicted_steps"] < SGD_MIN_STEPS <= long["plan"]["decisions"]["predicted_steps"]
    for opt in (short["optim"], short["finetune"]["seg"]["optim"]):
        assert opt["name"] == "adamw" and opt["schedule"] == "cosine" and opt["layer_decay"] is None
    assert short["finetune"]["seg"]["optim"]["lr"] > short["optim"]["lr"], "fine-tuning at 3e-3, the MAE at 1e-3"
    for opt in (long["optim"], long["finetune"]["seg"]["optim"]):
        assert opt["name"] == "sgd" and opt["nesterov"] and opt["schedule"] == "poly"
    assert "AdamW" in short["plan"]["decisions"]["optimizer"] and "SGD" in long["plan"]["decisions"]["optimizer"]


def test_an_explicit_pretraining_budget_sets_only_the_mae(anisotropic_ct):
    fp = fingerprint(str(anisotropic_ct))
    plan = make_plan(fp, task="seg", budget_minutes=30, pretrain_minutes=45, **FAST)
    assert plan["train"]["max_minutes"] == 45 and plan["finetune"]["seg"]["train"]["max_minutes"] == 30
    assert plan == make_plan(fp, task="seg", budget_minutes=30, pretrain_minutes=45, **FAST), "planning is pure"
    with pytest.raises(ConfigError, match="--pretrain-budget"):
        make_plan(fp, task="seg", budget_minutes=30, pretrain_minutes=0, **FAST)
    with pytest.raises(ConfigError, match="--pretrain-budget '1 hour'"):
        parse_budget("1 hour", "--pretrain-budget")


@pytest.mark.parametrize(("amx", "avx512_bf16", "named"),
                         [(False, False, None), (False, True, "AVX512-BF16"), (True, False, "AMX")])
def test_auto_precision_is_fp32_on_a_cpu_naming_bf16_instructions_and_bf16_on_a_gpu(anisotropic_ct, monkeypatch, amx,
                                                                                   avx512_bf16, named):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    fp = fingerprint(str(anisotropic_ct))
    plan = make_plan(fp, task="seg", budget_minutes=30, **FAST)
    assert plan["train"]["precision"] == plan["finetune"]["seg"]["train"]["precision"] == "fp32"
    why = plan["plan"]["decisions"]["precision"]["why"]
    assert (named in why and "--precision bf16" in why) if named else "emulated" in why
    gpu = make_plan(fp, task="seg", budget_minutes=30, device="cuda", **FAST)
    assert gpu["train"]["precision"] == "bf16", "a GPU plan is bf16 whatever this machine's CPU"


def test_a_given_precision_overrides_the_cpus_and_sizes_the_memory(anisotropic_ct, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    fp = fingerprint(str(anisotropic_ct))
    fp32 = make_plan(fp, task="seg", budget_minutes=30, precision="fp32", **FAST)
    bf16 = make_plan(fp, task="seg", budget_minutes=30, precision="bf16", **FAST)
    assert fp32["train"]["precision"] == "fp32" and fp32["plan"]["decisions"]["precision"] == {"value": "fp32",
                                                                                               "why": "given"}
    assert bf16["finetune"]["seg"]["train"]["precision"] == "bf16"
    assert fp32["plan"]["decisions"]["network"] == bf16["plan"]["decisions"]["network"]
    assert bf16["plan"]["decisions"]["memory_gib"] < fp32["plan"]["decisions"]["memory_gib"], "bf16 activations"
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, got 'fp16'"):
        make_plan(fp, task="seg", budget_minutes=30, precision="fp16", **FAST)


def test_budget_parsing():
    assert parse_budget("90s") == 1.5 and parse_budget("30m") == 30 and parse_budget("2h") == 120
    assert parse_budget("45") == 45 and parse_budget("1d") == 1440
    with pytest.raises(ConfigError, match="30 minutes"):
        parse_budget("30 minutes")


def test_plan_cli_then_pretrain_finetune_and_sweep_with_plan(cxr, tmp_path, monkeypatch):
    """The plan loads in every verb, is saved as plan.yaml in each run, and the export and task.json carry it."""
    monkeypatch.setattr(network, "measure_step_s", lambda cfg, n, batch, *a, **k: 10.0 * batch)  # slow: the smallest
    out = tmp_path / "plan.yaml"
    r = invoke(["plan", cxr, "--task", "seg", "--budget", "1m", "--pretrain-budget", "1m", "--out", out,
                "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    assert "network" in r.output and out.is_file()
    assert read_plan(out).raw["train"]["precision"] == "bf16", "--precision reaches the plan (auto is fp32 on a CPU)"
    assert "precision" in r.output and "given" in r.output, "the printed plan says what was decided and why"
    assert read_plan(out).raw["model"]["resenc"]["widths"][0] == 8, "a slow device gets the smallest network"
    text = out.read_text()
    pre = tmp_path / "pre"
    r = invoke(["pretrain", "--plan", out, "--run-dir", pre, "--max-steps", "1", "--set", "train.batch_size=2"])
    assert r.exit_code == 0, r.output
    assert (pre / "plan.yaml").read_text() == text
    contract = read_contract(pre / "export" / "encoder.safetensors")
    assert contract["pretraining"]["plan"]["sha256"] == read_plan(out).sha256
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["training"]["max_minutes"] == 1 and summary["training"]["budget_steps"] == 1
    ft = tmp_path / "ft"
    no_budget = ["--set", "train.max_minutes=null"]  # the budget's calibration is tested with pretraining above
    r = invoke(["finetune", "--plan", out, "--init", pre, "--run-dir", ft, "--max-steps", "1",
                "--set", "train.batch_size=2", *no_budget])
    assert r.exit_code == 0, r.output
    task = json.loads((ft / "task.json").read_text())
    assert task["plan"]["sha256"] == read_plan(out).sha256 and (ft / "plan.yaml").read_text() == text
    assert yaml.safe_load((ft / "config.yaml").read_text())["model"]["arch"] == "resenc"
    r = invoke(["finetune", "--plan", out, "--preset", "demo-2d", "--run-dir", tmp_path / "both"])
    assert r.exit_code == 2 and "one of CONFIG, --preset or --plan" in r.output
    r = invoke(["sweep", "--task", "seg", "--plan", out, "--init", "scratch", "--run-dir", tmp_path / "W",
                "--fractions", "1.0", "--seeds", "1", "--max-steps", "1", "--set", "train.batch_size=2",
                "--set", "eval.bootstrap=20", *no_budget])
    assert r.exit_code == 0, r.output
    cell = next((tmp_path / "W" / "cells").iterdir())
    assert (cell / "plan.yaml").read_text() == text
    assert json.loads((tmp_path / "W" / "sweep.json").read_text())["plan"] == str(out)


def test_a_file_that_is_not_a_plan_is_refused_naming_it(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("model: {arch: vit}\n")
    r = invoke(["finetune", "--plan", bad, "--task", "seg", "--run-dir", tmp_path / "r"])
    assert r.exit_code == 2 and "not a medmae plan" in r.output and str(bad) in "".join(r.output.split())
