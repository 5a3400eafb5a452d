"""``examples/slurm/pretrain.sbatch`` run by bash with stand-ins for ``srun`` and ``scontrol``: SIGUSR1 to the batch
shell (``--signal=B:USR1``) reaches the workers through srun and torchrun, they checkpoint and stop, the script
requeues the job; the requeued start resumes (``--resume auto``), finishes and does not requeue again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import HERE, TINY_2D, set_args, subprocess_env, train_rows
from nodes import free_port

SCRIPT = HERE.parents[1] / "examples" / "slurm" / "pretrain.sbatch"
STUBS = {
    "srun": '#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n',  # one node: run the command here
    "scontrol": '#!/bin/bash\nif [ "$1" = show ]; then echo localhost; else echo "$@" >> "$STUB_LOG"; fi\n',
    "torchrun": f'#!/bin/bash\nexec {sys.executable} -m torch.distributed.run "$@"\n',
}
LONGER = (*TINY_2D, "train.epochs=100", "train.checkpoint_every=50", "train.figure_every=1000", "train.log_every=50")


def start(tmp_path: Path, run_dir: Path, log: Path, restart: int) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(tmp_path / "scontrol.log"),
                         SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost",
                         SLURM_RESTART_COUNT=str(restart), NPROC_PER_NODE="1", MASTER_PORT=str(free_port()))
    args = ["bash", str(SCRIPT), str(run_dir), "--preset", "demo-2d", *set_args(LONGER)]
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigusr1_to_the_batch_shell_checkpoints_requeues_and_the_next_start_finishes(tmp_path):
    run_dir = tmp_path / "run"
    first = start(tmp_path, run_dir, tmp_path / "first.log", 0)
    try:
        deadline = time.monotonic() + 150
        while not (train_rows(run_dir) and train_rows(run_dir)[-1]["step"] >= 3):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGUSR1)
        assert first.wait(90) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    out = (tmp_path / "first.log").read_text()
    assert "SIGUSR1 (time limit near)" in out and "pre-emption signal: checkpoint at step" in out, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped_at = train_rows(run_dir)[-1]["step"]
    assert stopped_at < 300

    second = start(tmp_path, run_dir, tmp_path / "second.log", 1)
    assert second.wait(200) == 0, (tmp_path / "second.log").read_text()[-3000:]
    out = (tmp_path / "second.log").read_text()
    assert f"(step {stopped_at})" in out and "pretraining finished" in out, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], "a finished run is not requeued"
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, 301))
