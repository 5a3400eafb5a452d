"""A full disk: one line naming the path, exit code 3, the partial checkpoint removed and ``LATEST`` still naming
the previous checkpoint, which still verifies. For real on a small tmpfs (in a user and mount namespace) when
the machine allows it; the same code path by an ``OSError(ENOSPC)`` from the write otherwise."""

from __future__ import annotations

import errno
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import HERE, TINY_2D, pretrain_args, subprocess_env
from medmae.engine import checkpoint as ckpt
from medmae.errors import EXIT_ENVIRONMENT, EnvironmentProblem
from medmae.models.contract import save_encoder

# config, metrics and the step-4 checkpoint (~300 kB) fit; the step-8 checkpoint does not
TMPFS_SIZE = "450k"


def tmpfs_allowed(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.timeout(180)
def test_a_really_full_disk_during_a_checkpoint_exits_3_and_keeps_the_previous_one(tmp_path):
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    if not tmpfs_allowed(disk):
        pytest.skip("no user/mount namespaces here (unshare -rm + tmpfs not permitted)")
    run = disk / "run"
    cli = [sys.executable, str(HERE), *pretrain_args(run, "demo-2d", (*TINY_2D, "train.figure_every=100"))]
    script = (f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {shlex.quote(str(disk))} || exit 99; "
              f"{shlex.join(cli)}; rc=$?; cp -a {shlex.quote(str(run))} {shlex.quote(str(kept))}; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=subprocess_env(), capture_output=True,
                          text=True, timeout=170)
    out = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_ENVIRONMENT, out[-3000:]
    assert "Traceback" not in out and "enforce fail" not in out, out[-3000:]
    error = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "no space left on device" in error[0], out[-3000:]
    assert str(run / "checkpoints" / ckpt.step_dir_name(8)) in error[0] and ckpt.step_dir_name(4) in error[0]
    root = kept / "checkpoints"
    assert (root / ckpt.LATEST).read_text().strip() == ckpt.step_dir_name(4)
    assert [s for s, _ in ckpt.committed_steps(root)] == [4]
    ckpt.verify(root / ckpt.step_dir_name(4))
    assert not [p for p in root.iterdir() if ".tmp-" in p.name], "the partial checkpoint must be removed"


def test_a_full_disk_while_exporting_the_encoder_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "export" / "encoder.safetensors"
    contract = {"arch": "vit", "encoder": {"spatial_dims": 2}, "preprocessing": {"intensity": {"name": "minmax"}}}
    save_encoder(path, {"w": torch.ones(2)}, contract)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medmae.data.cache.os.fsync", no_space)
    with pytest.raises(EnvironmentProblem) as err:
        save_encoder(path, {"w": torch.zeros(2)}, contract)
    assert err.value.exit_code == EXIT_ENVIRONMENT
    assert str(err.value) == f"{path}: no space left on device"
    assert torch.equal(load_file(str(path))["w"], torch.ones(2)), "the previous export must stay whole"
    assert [p.name for p in path.parent.iterdir()] == ["encoder.safetensors"], "no temporary file is left"
