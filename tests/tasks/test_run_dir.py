"""The run directory: one run at a time (an advisory lock naming its holder), taken before anything is cleaned
or written, released at the end (also in-process); a path that cannot be a directory is one clear error."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

import medmae
from helpers import TINY_2D, CliProcess, checkpoint_steps, invoke, pretrain_args, run_cli, train_rows
from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import DistInfo
from medmae.errors import EXIT_CONFIG, RunDirError, SourceError
from medmae.tasks.run_dir import LOCK_FILE, RunLock, check_directory_path, prepare_run_dir

ONE = DistInfo(0, 1, 0, __import__("torch").device("cpu"))


def test_a_second_lock_on_a_run_dir_is_refused_naming_the_holder_until_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    with pytest.raises(RunDirError) as err:
        second.acquire()
    msg = str(err.value)
    assert str(tmp_path) in msg and f"pid {os.getpid()}" in msg and f"host {socket.gethostname()}" in msg
    first.release()
    second.acquire()
    second.release()


@pytest.mark.parametrize("under", [False, True], ids=["is-a-file", "under-a-file"])
def test_a_run_dir_that_is_or_lies_under_a_file_is_a_run_dir_error(tmp_path, under):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory\n")
    run = blocker / "run" / "deeper" if under else blocker
    with pytest.raises(RunDirError, match="which is a file" if under else "is a file") as err:
        check_directory_path(run)
    assert str(run) in str(err.value)
    with pytest.raises(RunDirError):
        prepare_run_dir(run, "x: 1\n", None, ONE)
    assert blocker.read_text() == "not a directory\n"


def test_refusing_a_run_with_checkpoints_releases_the_lock(tmp_path):
    (tmp_path / "checkpoints" / "step_00000002").mkdir(parents=True)
    with pytest.raises(RunDirError, match="already holds checkpoints"):
        prepare_run_dir(tmp_path, "x: 1\n", None, ONE)
    with prepare_run_dir(tmp_path, "x: 1\n", "auto", ONE):
        assert (tmp_path / "config.yaml").read_text() == "x: 1\n"
    RunLock(tmp_path).acquire()


def test_pretrain_twice_in_one_process_releases_the_lock_after_success_and_after_failure(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SourceError, match="no such file"):  # fails after the lock was taken
        medmae.pretrain(preset="demo-2d", data=tmp_path / "missing", run_dir=run, overrides=TINY_2D)
    assert (run / LOCK_FILE).is_file()
    medmae.pretrain(preset="demo-2d", run_dir=run, overrides=TINY_2D, max_steps=2)
    assert "log_every: 1\n" in (run / "config.yaml").read_text()
    medmae.pretrain(preset="demo-2d", run_dir=run, overrides=(*TINY_2D, "train.log_every=2"), max_steps=4, resume="auto")
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3, 4]
    assert "log_every: 2\n" in (run / "config.yaml").read_text(), "a resumed run records the config it ran with"
    lock = RunLock(run)
    lock.acquire()  # nobody holds it any more
    lock.release()


@pytest.mark.timeout(180)
def test_a_second_run_on_a_run_dir_in_use_is_refused_before_it_touches_anything(tmp_path):
    """Two runs on one directory used to both exit 0 with interleaved metrics, and a second ``--resume auto``
    deleted the first one's checkpoint in flight."""
    run = tmp_path / "run"
    args = pretrain_args(run)
    first = CliProcess(args, tmp_path / "first.log", pause_at=5)
    first.wait_for_step(run, 5)
    in_flight = run / "checkpoints" / f"{ckpt.step_dir_name(8)}.tmp-{first.proc.pid}"
    in_flight.mkdir()  # as if the first run were writing its next checkpoint right now
    config = (run / "config.yaml").read_text()
    for extra in ([], ["--resume", "auto"]):
        result = invoke([*args, *extra, "--set", "train.seed=7"])
        assert result.exit_code == EXIT_CONFIG, result.output[-2000:]
        text = " ".join(result.output.split())
        assert "in use by another medmae run" in text and f"pid {first.proc.pid}" in text, text
        assert f"host {socket.gethostname()}" in text and "Traceback" not in result.output
    assert in_flight.is_dir(), "the refused run cleaned the first run's checkpoint in flight"
    assert (run / "config.yaml").read_text() == config, "the refused run overwrote config.yaml"
    assert [r["step"] for r in train_rows(run)] == [1, 2, 3, 4, 5]
    in_flight.rmdir()
    first.resume_after_pause()
    assert first.wait() == 0, first.output()[-3000:]
    assert [r["step"] for r in train_rows(run)] == list(range(1, 13))
    assert checkpoint_steps(run) == [8, 12]
    run_cli([*args, "--resume", "auto"], tmp_path / "after.log")  # the lock went with the first process
