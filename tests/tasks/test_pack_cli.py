"""``medmae data pack`` end to end: packing by parts, merging and verifying from the CLI; pretraining on a pack equals
pretraining on the same source through the cache, without the raw files, and resumes mid-epoch bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TINY_2D, flat, invoke, latest_checkpoint, loss_reprs, pretrain_args
from medmae.data.synthetic import write_dataset
from medmae.errors import EXIT_CONFIG, EXIT_DATA

SIZE = ("--set", "model.img_size=[32,32]")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """(source folder, its pack made by two parts and a merge through the CLI)."""
    root = tmp_path_factory.mktemp("packcli")
    write_dataset(root / "src", "cxr", 12, seed=0, size=32)
    out = root / "pack"
    for part in ("0/2", "1/2"):
        r = invoke(["data", "pack", root / "src", "--preset", "demo-2d", *SIZE, "--part", part, "--out", out,
                    "--shard-cases", "4", "--workers", "2"])
        assert r.exit_code == 0, r.output
        assert "--merge" in flat(r.output)
    r = invoke(["data", "pack", "--merge", out, "--out", out])
    assert r.exit_code == 0 and "12 cases in 4 shard(s)" in r.output, r.output
    r = invoke(["data", "pack", "--verify", out])
    assert r.exit_code == 0 and "4 shard(s), 0 damaged; 12 raw case(s) checked, 0 changed" in r.output, r.output
    return root / "src", out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "export" / "encoder.safetensors"))


def test_pretrain_on_a_pack_without_its_raw_files_equals_the_cache_path_and_resumes_bitwise(packed, tmp_path):
    src, pack = packed
    cached = tmp_path / "cached"
    r = invoke(pretrain_args(cached, "demo-2d", TINY_2D) + ["--data", src])
    assert r.exit_code == 0, r.output
    moved = src.with_name("src-moved")
    src.rename(moved)  # reading the pack must not need them
    try:
        run = tmp_path / "packed"
        r = invoke(pretrain_args(run, "demo-2d", TINY_2D) + ["--data", pack])
        assert r.exit_code == 0, r.output
        assert loss_reprs(run) == loss_reprs(cached), "a lossless pack must train exactly like the cache"
        ref = _weights(cached)
        assert all(torch.equal(ref[k], v) for k, v in _weights(run).items())
        record = json.loads((run / "pretrain_cases.json").read_text())
        want = json.loads((cached / "pretrain_cases.json").read_text())
        assert [c["sha256"] for c in record["cases"]] == [c["sha256"] for c in want["cases"]]

        resumed = tmp_path / "resumed"
        shutil.copytree(run, resumed)
        r = invoke(pretrain_args(resumed, "demo-2d", TINY_2D) + ["--data", pack, "--resume",
                                                                   resumed / "checkpoints" / "step_00000008"])  # mid-epoch 2
        assert r.exit_code == 0, r.output
        assert loss_reprs(resumed) == loss_reprs(run) and len(loss_reprs(run)) == 12
        assert all(torch.equal(ref[k], v) for k, v in _weights(resumed).items())
    finally:
        moved.rename(src)


def test_a_pack_of_many_shards_pretrains_in_shard_windows_and_resumes_bitwise(packed, tmp_path):
    src, four_shards = packed
    many = tmp_path / "many"
    r = invoke(["data", "pack", src, "--preset", "demo-2d", *SIZE, "--out", many, "--shard-cases", "1"])
    assert r.exit_code == 0 and "12 cases in 12 shard(s)" in r.output, r.output
    run, global_order = tmp_path / "run", tmp_path / "global"
    for out, data in ((run, many), (global_order, four_shards)):
        r = invoke(pretrain_args(out, "demo-2d", TINY_2D) + ["--data", data])
        assert r.exit_code == 0, r.output
    state = torch.load(latest_checkpoint(run) / "train_state.pt", weights_only=True)
    assert state["loader"]["order"].startswith("shard-windows "), state["loader"]
    assert loss_reprs(run) != loss_reprs(global_order), "12 shards > the 8 a reader keeps open: not the global order"
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    r = invoke(pretrain_args(resumed, "demo-2d", TINY_2D) + ["--data", many, "--resume",
                                                               resumed / "checkpoints" / "step_00000008"])
    assert r.exit_code == 0, r.output
    assert loss_reprs(resumed) == loss_reprs(run) and len(loss_reprs(run)) == 12
    ref = _weights(run)
    assert all(torch.equal(ref[k], v) for k, v in _weights(resumed).items())


def test_a_pack_made_with_another_contract_is_refused_exit_2(packed, tmp_path):
    _, pack = packed
    r = invoke(pretrain_args(tmp_path / "run", "demo-2d", (*TINY_2D, "data.intensity.name=xray_histeq")) + ["--data", pack])
    assert r.exit_code == EXIT_CONFIG, r.output
    assert "data.intensity" in r.output and str(pack) in flat(r.output) and "Traceback" not in r.output


def test_a_damaged_shard_stops_training_with_its_name_exit_1(packed, tmp_path):
    _, pack = packed
    bad = tmp_path / "bad"
    shutil.copytree(pack, bad)
    shard = bad / json.loads((bad / "medmae-pack.json").read_text())["shards"][2]["name"]
    data = bytearray(shard.read_bytes())
    for k in range(200, len(data) - 200, 5):
        data[k] ^= 0xA5
    shard.write_bytes(bytes(data))
    r = invoke(pretrain_args(tmp_path / "run", "demo-2d", TINY_2D) + ["--data", bad])
    assert r.exit_code == EXIT_DATA, r.output
    assert str(shard) in flat(r.output) and "Traceback" not in r.output
    r = invoke(["data", "pack", "--verify", bad])
    assert r.exit_code == EXIT_DATA and f"damaged shard: {shard}" in flat(r.output).replace("damagedshard:", "damaged shard: ")


def test_data_pack_help_and_bad_arguments():
    r = invoke(["data", "pack", "--help"])
    assert r.exit_code == 0
    for opt in ("--out", "--workers", "--part", "--merge", "--verify", "--plan", "--masks", "--codec"):
        assert opt in r.output
    r = invoke(["data", "pack", "x", "--preset", "demo-2d", "--part", "2/2", "--out", "y"])
    assert r.exit_code == EXIT_CONFIG and "0 <= i < n" in r.output


def test_finetune_and_evaluate_on_a_pack_without_its_raw_files(packed, tmp_path):
    from medmae.tasks.evaluate import evaluate
    from medmae.tasks.finetune import finetune
    from medmae.tasks.pack import pack_sources

    src, _ = packed
    pack = tmp_path / "seg-pack"
    pack_sources([src], preset="demo-2d", overrides=("model.img_size=[32,32]",), out=pack, with_masks=True)
    moved = src.with_name("src-away")
    src.rename(moved)
    try:
        tiny = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "model.img_size=[32,32]",
                "train.batch_size=2", "eval.bootstrap=20", "head.feature_size=8")
        run = finetune(task="seg", preset="demo-2d", data=pack, run_dir=tmp_path / "ft", overrides=tiny, max_steps=2)
        summary = evaluate(run)
        assert summary["n_cases"] == len(json.loads((run / "splits.json").read_text())["test"]) > 0
    finally:
        moved.rename(src)
