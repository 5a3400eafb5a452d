"""Bad run directories, damaged checkpoints and resumes that cannot work, through the real CLI: each one exits
with its code and one ``error:`` line naming the file or key, never a traceback, and leaves the run's checkpoints
and ``config.yaml`` as they were."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers import TINY_2D, flat, invoke, pretrain_args, set_args
from medmae.data.cache import sha256_file
from medmae.engine import checkpoint as ckpt
from medmae.tasks.run_dir import RunLock

FT_2D = ("model.depth=1", "model.embed_dim=32", "model.num_heads=2", "data.synthetic.n=40", "data.synthetic.size=[32,32]",
         "model.img_size=[32,32]", "train.batch_size=4")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny 2D pretraining run: checkpoints at steps 8 and 12."""
    run = tmp_path_factory.mktemp("finished") / "run"
    result = invoke(pretrain_args(run))
    assert result.exit_code == 0, result.output[-3000:]
    return run


def rewrite_manifest(path: Path) -> None:
    m = json.loads((path / ckpt.MANIFEST).read_text())
    m["files"] = {n: {"sha256": sha256_file(path / n), "size": (path / n).stat().st_size} for n in m["files"]}
    (path / ckpt.MANIFEST).write_text(json.dumps(m))


class RunsShell:
    def __reduce__(self):
        return os.system, ("echo pwned",)


# Each case: (damage(tmp, run) -> (argv, [words the error line must hold]), expected exit code).
# ``run`` is a copy of the finished run; NEWEST is its step-12 checkpoint.
NEWEST = f"checkpoints/{ckpt.step_dir_name(12)}"
Case = Callable[[Path, Path], tuple[list[str], list[str]]]


def run_dir_is_a_file(tmp: Path, run: Path):
    (tmp / "file").write_text("x\n")
    return pretrain_args(tmp / "file"), [str(tmp / "file"), "is a file, not a directory"]


def run_dir_under_a_file(tmp: Path, run: Path):
    (tmp / "file").write_text("x\n")
    return pretrain_args(tmp / "file" / "run"), [str(tmp / "file" / "run"), f"under {tmp / 'file'}, which is a file"]


def finetune_run_dir_is_a_file(tmp: Path, run: Path):
    (tmp / "file").write_text("x\n")
    return (["finetune", "--task", "cls", "--preset", "demo-2d", "--run-dir", str(tmp / "file"), *set_args(FT_2D)],
            [str(tmp / "file"), "is a file"])


HELD: list[RunLock] = []


@pytest.fixture(autouse=True)
def _release_held_locks():
    yield
    while HELD:
        HELD.pop().release()


def run_dir_in_use(tmp: Path, run: Path):
    HELD.append(RunLock(run))
    HELD[-1].acquire()  # another process would do the same; flock refuses a second open file description too
    return [*pretrain_args(run), "--resume", "auto"], [str(run), "in use", f"pid {os.getpid()}", socket.gethostname()]


def rerun_without_resume(tmp: Path, run: Path):
    return pretrain_args(run), [str(run), "already holds checkpoints", "--resume auto"]


def every_checkpoint_corrupt(tmp: Path, run: Path):
    for _, path in ckpt.committed_steps(run / "checkpoints"):
        (path / ckpt.MANIFEST).unlink()
    return [*pretrain_args(run), "--resume", "auto"], [
        str(run / NEWEST), str(run / "checkpoints" / ckpt.step_dir_name(8)), "no MANIFEST.json",
        "refusing to start from scratch"]


def manifest_is_a_list(tmp: Path, run: Path):
    (run / NEWEST / ckpt.MANIFEST).write_text("[1, 2, 3]")
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [str(run / NEWEST / ckpt.MANIFEST), "not a checkpoint manifest"]


def manifest_without_size(tmp: Path, run: Path):
    m = json.loads((run / NEWEST / ckpt.MANIFEST).read_text())
    del m["files"][ckpt.STATE_FILE]["size"]
    (run / NEWEST / ckpt.MANIFEST).write_text(json.dumps(m))
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [str(run / NEWEST / ckpt.MANIFEST), "'size' (integer)"]


def manifest_not_json(tmp: Path, run: Path):
    (run / NEWEST / ckpt.MANIFEST).write_text('{"files": ')
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [str(run / NEWEST / ckpt.MANIFEST), "unreadable manifest"]


def weights_header_corrupt_with_matching_manifest(tmp: Path, run: Path):
    f = run / NEWEST / ckpt.MODEL_FILE
    data = bytearray(f.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 : 8 + n] = b"[" + b" " * (n - 1)
    f.write_bytes(bytes(data))
    rewrite_manifest(run / NEWEST)
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [str(f), "not a readable safetensors file"]


def train_state_runs_code(tmp: Path, run: Path):
    torch.save({"step": 12, "optimizer": {}, "rng": [], "payload": RunsShell()}, run / NEWEST / ckpt.STATE_FILE)
    rewrite_manifest(run / NEWEST)
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [
        str(run / NEWEST / ckpt.STATE_FILE), "refusing to unpickle", "unsupported GLOBAL posix.system"]


def train_state_truncated_with_matching_manifest(tmp: Path, run: Path):
    f = run / NEWEST / ckpt.STATE_FILE
    f.write_bytes(f.read_bytes()[:200])
    rewrite_manifest(run / NEWEST)
    return [*pretrain_args(run), "--resume", str(run / NEWEST)], [str(f), "unreadable train state"]


def resume_into_another_model(tmp: Path, run: Path):
    args = pretrain_args(run, "demo-2d", (*TINY_2D, "model.embed_dim=64"))
    return [*args, "--resume", "auto"], [str(run / NEWEST / ckpt.MODEL_FILE), "does not fit this model",
                                         "encoder.cls_token: [1, 1, 32] in the checkpoint, [1, 1, 64] in the model", "more tensors of other shapes"]


def resume_another_runs_checkpoint(tmp: Path, run: Path):
    other = tmp / "other"
    shutil.copytree(run, other)
    return [*pretrain_args(run), "--resume", str(other / NEWEST)], [
        str(other / NEWEST), str(run), "already holds checkpoints of its own"]


def resume_a_file(tmp: Path, run: Path):
    f = run / NEWEST / ckpt.MODEL_FILE
    return [*pretrain_args(run), "--resume", str(f)], [str(f), "is a file"]


def resume_a_missing_path(tmp: Path, run: Path):
    return [*pretrain_args(run), "--resume", str(tmp / "nope")], [str(tmp / "nope"), "does not exist"]


CASES: list[tuple[Case, int]] = [
    (run_dir_is_a_file, 2), (run_dir_under_a_file, 2), (finetune_run_dir_is_a_file, 2), (run_dir_in_use, 2),
    (rerun_without_resume, 2), (every_checkpoint_corrupt, 2), (manifest_is_a_list, 2), (manifest_without_size, 2),
    (manifest_not_json, 2), (weights_header_corrupt_with_matching_manifest, 2), (train_state_runs_code, 2),
    (train_state_truncated_with_matching_manifest, 2), (resume_into_another_model, 2),
    (resume_another_runs_checkpoint, 2), (resume_a_file, 2), (resume_a_missing_path, 2),
]


@pytest.mark.parametrize(("case", "code"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_bad_engine_input_is_one_clear_line_with_its_exit_code(finished, tmp_path, case, code):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    argv, words = case(tmp_path, run)
    before = sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*"))
    config = (run / "config.yaml").read_text()
    result = invoke(argv)
    assert result.exit_code == code, result.output[-3000:]
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "will likely succeed" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output[-3000:]
    missing = [w for w in words if flat(w) not in flat(errors[0])]
    assert not missing, f"the error line does not name {missing}:\n{errors[0]}"
    after = sorted(str(p.relative_to(run)) for p in (run / "checkpoints").rglob("*"))
    assert after == before, "a refused run must leave the checkpoints as they were"
    assert (run / "config.yaml").read_text() == config, "a refused run must leave the config of its checkpoints"
