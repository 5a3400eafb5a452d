"""Bad input to the config / CLI / evaluation side of medmae: one table of cases, each a small bad input written
by the test and run through the CLI in-process. Every case must end with the CLI's own exit code and one
readable ``error:`` line that names the file, option or config key — never a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import TINY_2D, flat, invoke, pretrain_args, set_args
from test_cli import assert_clean_exit

FT_TINY = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "data.synthetic.n=16",
           "data.synthetic.size=[32,32]", "model.img_size=[32,32]", "train.batch_size=4", "eval.bootstrap=20")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny pretraining run and a tiny fine-tuning run (one step each)."""
    root = tmp_path_factory.mktemp("bad-input-runs")
    assert_clean_exit(invoke(pretrain_args(root / "pre", "demo-2d", TINY_2D, "--max-steps", "1")), 0)
    ft = ["finetune", "--task", "cls", "--preset", "demo-2d", "--run-dir", root / "ft", *set_args(FT_TINY), "--max-steps", "1"]
    assert_clean_exit(invoke(ft), 0)
    return {"pre": root / "pre", "ft": root / "ft"}


def encoder_with_contract(path: Path, contract_text: str) -> Path:
    """A safetensors file that claims to be a medmae encoder, with the given ``medmae_contract`` header."""
    save_file({"patch_embed.proj.weight": torch.zeros(4, 1, 8, 8)}, str(path),
              metadata={"format": "medmae-encoder", "medmae_contract": contract_text})
    return path


GOOD_CONTRACT = {"format": "medmae-encoder", "arch": "vit", "preprocessing": {"spatial_dims": 2},
                 "encoder": {"img_size": [32, 32], "patch_size": [8, 8], "embed_dim": 4}}


def bad_contract(tmp: Path, name: str, contract: object) -> tuple[list, str]:
    text = contract if isinstance(contract, str) else json.dumps(contract)
    path = encoder_with_contract(tmp / f"{name}.safetensors", text)
    return finetune_from(path, tmp), str(path)


def finetune_from(init: object, tmp: Path) -> list:
    return ["finetune", "--task", "cls", "--preset", "demo-2d", "--init", init, "--run-dir", tmp / "run", *set_args(FT_TINY)]


def pretrain_with(*overrides: str, preset: str = "demo-2d") -> Callable[[Path, dict], tuple[list, str]]:
    return lambda tmp, runs: (pretrain_args(tmp / "run", preset, (*TINY_2D, *overrides)), "")


def pool_config_with_data(tmp: Path, runs: dict) -> tuple[list, str]:
    path = tmp / "pool.yaml"
    path.write_text("data:\n  sources:\n    - path: a\n    - path: b\n")
    return ["pretrain", path, "--data", tmp / "x", "--run-dir", tmp / "run"], str(tmp / "x")


def not_utf8_config(tmp: Path, runs: dict) -> tuple[list, str]:
    path = tmp / "résumé.yaml"
    path.write_bytes(b"name: r\xe9sum\xe9\nmodel:\n  arch: vit\n")
    return ["pretrain", path, "--run-dir", tmp / "run"], str(path)


def a_file(tmp: Path) -> str:
    """A plain file where a folder is expected."""
    path = tmp / "a_file"
    path.write_text("not a folder")
    return str(path)


def out_is_a_file(tmp: Path, runs: dict) -> tuple[list, str]:
    out = tmp / "predictions"
    out.write_text("a file where the output folder should go")
    return ["predict", runs["ft"], tmp / "x.png", "--out", out], str(out)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, dict], tuple[list, str]]  # (tmp_path, runs) -> (CLI args, a path the message must name)
    code: int
    says: str  # further text the message must contain
    needs_runs: bool = False


CASES = [
    Case("heads-vs-width", pretrain_with("model.num_heads=5"), 2, "model.num_heads:5headsdonotdivideembed_dim=32"),
    Case("decoder-heads", pretrain_with("model.decoder.num_heads=5"), 2, "model.decoder.num_heads:5heads"),
    Case("swin-stage-heads", pretrain_with("model.swin.num_heads=[1,2,4,7]", preset="demo-swin-2d"), 2,
         "model.swin.num_heads[3]:7headsdonotdivide"),
    Case("threads-negative", pretrain_with("train.threads=-3"), 2, "train.threads:"),
    Case("threads-zero", pretrain_with("train.threads=0"), 2, "train.threads:"),
    Case("lr-negative", pretrain_with("optim.lr=-1"), 2, "optim.lr:Inputshouldbegreaterthan0"),
    Case("lr-nan", pretrain_with("optim.lr=.nan"), 2, "optim.lr:Inputshouldbeafinitenumber"),
    Case("lr-inf", pretrain_with("optim.lr=.inf"), 2, "optim.lr:Inputshouldbeafinitenumber"),
    Case("weight-decay-negative", pretrain_with("optim.weight_decay=-0.1"), 2, "optim.weight_decay:"),
    Case("flip-axis-of-a-3d-preset-turned-2d", pretrain_with("model.spatial_dims=2", "model.img_size=[32,32]",
                                                            preset="demo-3d"), 2, "data.flip_axes:axes[2]outofrange"),
    Case("crop-scale-in-3d", pretrain_with("data.crop_scale=[0.5,1.0]", "model.img_size=[32,32,32]", preset="demo-3d"),
         2, "data.crop_scale:"),
    Case("config-not-utf8", not_utf8_config, 2, "notUTF-8text"),
    Case("data-option-with-a-pool-config", pool_config_with_data, 2, "--data"),
    Case("contract-bad-json", lambda tmp, runs: bad_contract(tmp, "badjson", "{not json"), 2, "notvalidJSON"),
    Case("contract-a-list", lambda tmp, runs: bad_contract(tmp, "alist", [1, 2]), 2, "expectedaJSONobject,gotlist"),
    Case("contract-encoder-not-a-mapping", lambda tmp, runs: bad_contract(tmp, "enc", {**GOOD_CONTRACT, "encoder": [3]}),
         2, "'encoder'mustbeamapping"),
    Case("contract-without-img-size", lambda tmp, runs: bad_contract(
        tmp, "noimg", {**GOOD_CONTRACT, "encoder": {"patch_size": [8, 8]}}), 2, "encoder.img_sizemustbealist"),
    Case("init-empty", lambda tmp, runs: (finetune_from("", tmp), ""), 2, "--initisempty"),
    Case("init-a-finetune-run", lambda tmp, runs: (finetune_from(runs["ft"], tmp), str(runs["ft"])), 2,
         "afine-tuningrun", needs_runs=True),
    Case("evaluate-missing-run", lambda tmp, runs: (["evaluate", tmp / "nope"], str(tmp / "nope")), 2, "nosuchrundirectory"),
    Case("evaluate-a-pretraining-run", lambda tmp, runs: (["evaluate", runs["pre"]], str(runs["pre"])), 2,
         "butapretrainingrun", needs_runs=True),
    Case("evaluate-threads-zero", lambda tmp, runs: (["evaluate", tmp, "--threads", "0"], ""), 2,
         "Invalidvaluefor'--threads'"),
    Case("predict-missing-run", lambda tmp, runs: (["predict", tmp / "nope", tmp / "x.png"], str(tmp / "nope")), 2,
         "nosuchrundirectory"),
    Case("predict-out-is-a-file", out_is_a_file, 2, "existsandisnotafolder", needs_runs=True),
    Case("reconstruct-missing-run", lambda tmp, runs: (["reconstruct", tmp / "nope", tmp / "x.png"], str(tmp / "nope")), 2,
         "nosuchrundirectory"),
    Case("reconstruct-a-finetune-run", lambda tmp, runs: (["reconstruct", runs["ft"], tmp / "x.png"], str(runs["ft"])), 2,
         "afine-tuningrun;reconstructneeds", needs_runs=True),
    Case("sweep-fraction-zero", lambda tmp, runs: (["sweep", "--task", "cls", "--init", "scratch", "--fractions", "0",
                                                    "--run-dir", tmp / "W"], ""), 2, "labelfractionsmustbein(0,1]"),
    Case("sweep-no-fractions", lambda tmp, runs: (["sweep", "--task", "cls", "--init", "scratch", "--fractions", ",",
                                                   "--run-dir", tmp / "W"], ""), 2, "--fractions:nolabelfraction"),
    Case("report-not-a-sweep", lambda tmp, runs: (["report", tmp], str(tmp)), 2, "notasweepdirectory"),
    Case("sweep-init-missing", lambda tmp, runs: (["sweep", "--task", "cls", "--init", tmp / "nope", "--fractions", "1",
                                                   "--run-dir", tmp / "W"], str(tmp / "nope")), 2,
         "nosuchencoderfileorrundirectory"),
    Case("sweep-run-dir-is-a-file", lambda tmp, runs: (["sweep", "--task", "cls", "--init", "scratch", "--fractions", "1",
                                                        "--run-dir", a_file(tmp)], a_file(tmp)), 2, "existsandisnotafolder"),
    Case("demo-run-dir-is-a-file", lambda tmp, runs: (["demo", "--run-dir", a_file(tmp)], a_file(tmp)), 2,
         "--run-dir"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_error_line(case, tmp_path, request):
    runs = request.getfixturevalue("runs") if case.needs_runs else {}
    args, path = case.build(tmp_path, runs)
    result = invoke(args)
    assert_clean_exit(result, case.code)
    text = flat(result.output)
    assert flat(path) in text, f"the message must name {path}:\n{result.output}"
    assert case.says in text, result.output
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)
