"""DDP: a 2-process gloo run sees exactly the single-process batches and ends with the same weights: every
parameter within 1e-6 of the single-process run, the attention key bias included (its gradient is exactly zero,
see ``tests/models/test_key_bias.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medmae.config import ConfigError
from safetensors.torch import load_file

from helpers import CliProcess, latest_checkpoint, pretrain_args, subprocess_env, train_rows
from medmae.engine import distributed
from medmae.engine.distributed import check_batch, DistInfo, all_reduce_max, all_reduce_sum, gather_objects, init_distributed, pick_device


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    log = tmp_path / "ddp.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medmae.cli", *pretrain_args(ddp_dir)]
    with log.open("wb") as out:
        ddp = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env())
    single = CliProcess(pretrain_args(single_dir), tmp_path / "single.log")
    try:
        assert single.wait(200) == 0, single.output()[-3000:]
        assert ddp.wait(200) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if ddp.poll() is None:
            ddp.kill()
            ddp.wait()

    state = torch.load(latest_checkpoint(ddp_dir) / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    one, two = train_rows(single_dir), train_rows(ddp_dir)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 13))
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two))
    assert loss_gap < 1e-6, f"loss curves differ by up to {loss_gap:.3g}"

    a = load_file(str(latest_checkpoint(single_dir) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(ddp_dir) / "model.safetensors"))
    earlier = load_file(str(single_dir / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    gap = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    worst = max(a, key=lambda k: float((a[k].double() - b[k].double()).abs().max()))
    assert gap < 1e-6, f"final parameters differ by up to {gap:.3g} (in {worst})"
    moved = max(float((a[k].double() - earlier[k].double()).abs().max()) for k in a)
    assert moved > 100 * gap, "the comparison is only meaningful if training moved the weights"


def test_without_torchrun_it_is_one_process_and_collectives_are_identities(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    t = torch.tensor([1.5, -2.0])
    assert torch.equal(all_reduce_sum(t.clone(), info), t)
    assert torch.equal(all_reduce_max(t.clone(), info), t)
    assert gather_objects({"a": 1}, info) == [{"a": 1}]


def test_cuda_requested_without_cuda_is_an_error():
    if torch.cuda.is_available():
        assert pick_device("cuda", 0) == torch.device("cuda", 0)
    else:
        with pytest.raises(ConfigError, match="train.device=cuda but CUDA is not available"):
            pick_device("cuda")
        assert pick_device("auto") == torch.device("cpu")
    assert DistInfo(1, 2, 1, torch.device("cpu")).is_main is False
    with pytest.raises(ConfigError, match="batch_size=6 .* divisible by the 4 processes"):
        check_batch(6, DistInfo(0, 4, 0, torch.device("cpu")))
    check_batch(8, DistInfo(0, 4, 0, torch.device("cpu")))


def test_threads_default_to_torchs_count_capped_at_the_cpus_this_process_may_use(monkeypatch):
    """torch counts the host's cores, not a container's CPU quota (a pod limited to 2 CPUs: 32 threads)."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(distributed, "cpu_count", lambda: 1)  # a quota of one CPU
        distributed.set_threads(None)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(4)
        monkeypatch.setattr(distributed, "cpu_count", lambda: 8)  # more CPUs than torch's count: torch's count
        distributed.set_threads(None)
        assert torch.get_num_threads() == 4
        monkeypatch.setattr(distributed, "cpu_count", lambda: 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # torchrun's (or the user's) choice is left to decide
        distributed.set_threads(None)
        assert torch.get_num_threads() == 4
        distributed.set_threads(2)  # an explicit count wins over both
        assert torch.get_num_threads() == 2
        with pytest.raises(ConfigError, match="--threads must be at least 1, got 0"):
            distributed.set_threads(0, "--threads")
    finally:
        torch.set_num_threads(before)
