"""``train.parallel=fsdp`` under torchrun (2 gloo processes): the run ends within 1e-6 of the single-process run,
its checkpoints hold a plain model's and optimizer's state and its export is the single-process file; pre-empted by
SIGTERM it saves a consolidated checkpoint, and resumed (``--resume auto``) reproduces the uninterrupted run bit for
bit (slow)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CliProcess, latest_checkpoint, loss_reprs, pretrain_args, TINY_2D
from medmae.engine import checkpoint as ckpt
from medmae.models.contract import read_contract
from nodes import start_nodes, wait_all
from test_multinode import max_gap, wait_for_step, weights

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")

FSDP = (*TINY_2D, "train.parallel=fsdp")


def check_single_process_format(fsdp_run: Path, one: Path) -> None:
    """The FSDP checkpoint is the single-process format (a plain AdamW's state, keyed by parameter index) and the
    export holds the trained encoder whole."""
    loaded = ckpt.load_checkpoint(latest_checkpoint(fsdp_run))
    assert loaded.model_state.keys() == weights(one).keys()
    state = loaded.train_state["optimizer"]
    reference = torch.load(latest_checkpoint(one) / "train_state.pt", weights_only=True)["optimizer"]
    assert [g["params"] for g in state["param_groups"]] == [g["params"] for g in reference["param_groups"]]
    for i, s in reference["state"].items():
        assert state["state"][i]["exp_avg"].shape == s["exp_avg"].shape
        assert torch.allclose(state["state"][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-4, atol=1e-10), i
    export = fsdp_run / "export" / "encoder.safetensors"
    assert read_contract(export)["arch"] == "vit"
    exported = load_file(str(export))
    assert exported and all(torch.equal(v, loaded.model_state[f"encoder.{k}"]) for k, v in exported.items())


def check_close(run: Path, one: Path) -> None:
    gap = max_gap(weights(run), weights(one))
    assert gap < 1e-6, f"FSDP ends {gap:.3g} away from one process"
    assert max_gap(weights(one), load_file(str(one / "checkpoints" / "step_00000008" / "model.safetensors"))) > 100 * gap


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_fsdp_ends_at_the_single_process_weights_and_saves_the_single_process_format(tmp_path):
    one, run = tmp_path / "one", tmp_path / "fsdp"
    single = CliProcess(pretrain_args(one), tmp_path / "one.log")
    [fsdp] = start_nodes(pretrain_args(run, "demo-2d", FSDP), [tmp_path / "fsdp.log"], nproc=2)
    assert wait_all([fsdp], 200) == [0], fsdp.output()[-3000:]
    assert "FSDP: parameters, gradients and optimizer state sharded over 2 processes" in fsdp.output()
    assert single.wait(200) == 0, single.output()[-3000:]
    check_close(run, one)
    check_single_process_format(run, one)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_preempted_and_resumed_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    one, whole, cut = tmp_path / "one", tmp_path / "whole", tmp_path / "cut"
    go = tmp_path / "cut.go"
    single = CliProcess(pretrain_args(one), tmp_path / "one.log")
    [uninterrupted] = start_nodes(pretrain_args(whole, "demo-2d", FSDP), [tmp_path / "whole.log"], nproc=2)
    pause = {"MEDMAE_TEST_PAUSE_AT": "5", "MEDMAE_TEST_GO": str(go)}
    [run] = start_nodes(pretrain_args(cut, "demo-2d", FSDP), [tmp_path / "cut.log"], nproc=2, env=pause)
    try:
        wait_for_step(cut, 5, 150)
        run.signal(signal.SIGTERM)  # torchrun hands it to its workers; they save at the end of step 5
        time.sleep(0.5)
        go.touch()
        assert run.wait(90) != 0
    finally:
        wait_all([run], 1)
    out = run.output()
    assert out.count("pre-emption signal: checkpoint at step 5 saved") == 2, out[-3000:]
    assert latest_checkpoint(cut).name == "step_00000005"

    [again] = start_nodes([*pretrain_args(cut, "demo-2d", FSDP), "--resume", "auto"], [tmp_path / "again.log"], nproc=2)
    assert wait_all([again, uninterrupted], 200) == [0, 0], again.output()[-3000:] + uninterrupted.output()[-3000:]
    assert "resumed from" in again.output() and "(step 5)" in again.output()
    assert loss_reprs(cut) == loss_reprs(whole)
    resumed, reference = weights(cut), weights(whole)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference), "weights differ from the uninterrupted run"
    assert single.wait(200) == 0, single.output()[-3000:]
    check_close(cut, one)
    check_single_process_format(cut, one)
