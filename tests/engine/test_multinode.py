"""Two torchrun "nodes" on this machine (``--nnodes 2 --nproc-per-node 1``, c10d rendezvous on localhost, gloo):
the run ends with the weights of the single-process run (within 1e-6); a node killed mid-run makes the other one
exit at once with one line, and the restarted nodes (``--resume auto``) end with the very weights of the run that
was never interrupted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CliProcess, latest_checkpoint, loss_reprs, pretrain_args, train_rows
from nodes import start_nodes, wait_all

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def wait_for_step(run_dir: Path, step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (train_rows(run_dir) and train_rows(run_dir)[-1]["step"] >= step):
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.05)


@pytest.mark.dist
@pytest.mark.timeout(300)
@pytest.mark.parametrize("bitwise", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fast", "bitwise"])
def test_two_nodes_match_one_process_and_resume_after_a_node_is_killed(tmp_path, bitwise):
    """fast: the resumed two-node run ends within 1e-6 of one process; bitwise (slow): also an uninterrupted two-node
    run alongside, whose losses and weights the resumed run must reproduce bit for bit."""
    one, whole, cut = tmp_path / "one", tmp_path / "whole", tmp_path / "cut"
    go = tmp_path / "cut.go"
    single = CliProcess(pretrain_args(one), tmp_path / "one.log")
    uninterrupted = start_nodes(pretrain_args(whole), [tmp_path / "whole-a.log", tmp_path / "whole-b.log"]) \
        if bitwise else []
    pause = {"MEDMAE_TEST_PAUSE_AT": "5", "MEDMAE_TEST_GO": str(go)}  # every rank waits after step 5
    broken = start_nodes(pretrain_args(cut), [tmp_path / "cut-a.log", tmp_path / "cut-b.log"], env=pause)
    try:
        wait_for_step(cut, 5, 150)
        victim = next(n for n in broken if n.ranks() == [1])
        survivor = next(n for n in broken if n is not victim)
        victim.kill()
        go.touch()
        t0 = time.monotonic()
        rc = survivor.wait(60)
        took = time.monotonic() - t0
    finally:
        wait_all(broken, 1)
    out = survivor.output()
    assert rc != 0 and took < 60, out[-3000:]
    line = next((ln for ln in out.splitlines() if ln.startswith("error: ")), out[-3000:])
    assert "rank 0 of 2 lost the other processes of this run after step 5" in line, line
    assert "checkpoints/step_00000004" in line and "--resume auto" in line, line
    assert latest_checkpoint(cut).name == "step_00000004"

    restarted = start_nodes([*pretrain_args(cut), "--resume", "auto"], [tmp_path / "again-a.log", tmp_path / "again-b.log"])
    assert wait_all(restarted, 200) == [0, 0], [n.output()[-2000:] for n in restarted]
    logs = "".join(n.output() for n in restarted)
    assert "resumed from" in logs and "(step 4)" in logs, logs[-3000:]
    assert single.wait(200) == 0, single.output()[-3000:]

    gap = max_gap(weights(cut), weights(one))
    assert gap < 1e-6, f"two nodes end {gap:.3g} away from one process"
    moved = max_gap(weights(one), load_file(str(one / "checkpoints" / "step_00000008" / "model.safetensors")))
    assert moved > 100 * gap, "the comparison is only meaningful if training moved the weights"
    if bitwise:
        assert wait_all(uninterrupted, 200) == [0, 0], [n.output()[-2000:] for n in uninterrupted]
        assert loss_reprs(cut) == loss_reprs(whole), "the resumed run must log the uninterrupted run's losses bit for bit"
        resumed, reference = weights(cut), weights(whole)
        assert all(torch.equal(resumed[k], reference[k]) for k in reference), "weights differ from the uninterrupted run"
