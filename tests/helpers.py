"""Helpers for the engine and CLI tests: tiny configs, CLI runs in-process and as subprocesses.

Run as a script (``python tests/helpers.py pretrain ...``) it is the ``medmae`` CLI with two test hooks,
set by environment variables, that make crashes land at an exact point of a run:

- ``MEDMAE_TEST_PAUSE_AT=k``: after the metrics row of step ``k`` is written, block until the file named by
  ``MEDMAE_TEST_GO`` exists (the test meanwhile sends SIGKILL or SIGTERM);
- ``MEDMAE_TEST_KILL_IN_SAVE=k``: SIGKILL itself while checkpoint ``k`` is half written (weights written,
  no train state, no manifest);
- ``MEDMAE_TEST_CLOCK_TICK=s``: the budget's calibration clock advances ``s`` seconds per call, so
  ``train.max_minutes`` gives a known step count (the clock is read after every timed step: ``s`` s per step).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()

TINY_MODEL = (
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
    "model.decoder.depth=1",
    "model.decoder.embed_dim=16",
    "model.decoder.num_heads=2",
)

# 12 synthetic 32x32 radiographs, batch 4: 3 steps per epoch, 4 epochs = 12 steps, checkpoints at 4, 8, 12.
# MONAI augmentation on (nnU-Net's set): the kill / resume and DDP tests check that it keeps items pure functions.
TINY_2D = (
    *TINY_MODEL,
    "data.augment.preset=nnunet",
    "data.synthetic.n=12",
    "data.synthetic.size=[32,32]",
    "model.img_size=[32,32]",
    "data.figure_cases=2",
    "train.batch_size=4",
    "train.epochs=4",
    "train.checkpoint_every=4",
    "train.figure_every=2",
    "train.log_every=1",
    "optim.warmup_epochs=1",
)

# 4 synthetic 40x40x32 CT volumes cropped to 32^3 (8 patches of 16^3), batch 2.
TINY_3D = (
    *TINY_MODEL,
    "data.synthetic.n=4",
    "data.synthetic.size=[40,40,32]",
    "model.img_size=[32,32,32]",
    "data.figure_cases=1",
    "train.batch_size=2",
)


def set_args(overrides: Sequence[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for o in overrides for a in ("--set", o)]


def pretrain_args(run_dir: Path, preset: str = "demo-2d", overrides: Sequence[str] = TINY_2D, *extra: str) -> list[str]:
    return ["pretrain", "--preset", preset, "--run-dir", str(run_dir), *set_args(overrides), *extra]


# ------------------------------------------------------------------------------------------------ run files


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a line cut by a crash ends the list)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return [r for r in rows if r.get("kind", "train") == "train"]


def loss_reprs(run_dir: Path) -> list[tuple[int, str]]:
    """(step, repr(loss)) per logged step: equal lists mean bitwise-equal float32 losses."""
    return [(r["step"], repr(r["loss"])) for r in train_rows(run_dir)]


def latest_checkpoint(run_dir: Path) -> Path:
    name = (Path(run_dir) / "checkpoints" / "LATEST").read_text().strip()
    return Path(run_dir) / "checkpoints" / name


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = Path(run_dir) / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit())


def new_file_mode() -> int:
    """The mode ``open`` gives a new file under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def flat(text: str) -> str:
    """Text without whitespace: rich wraps long lines (and paths) at the console width."""
    return "".join(text.split())


# ------------------------------------------------------------------------------------------ in-process CLI


def invoke(args: Sequence[str]):
    """Run ``medmae <args>`` in this process with typer's CliRunner; logging configuration is restored after."""
    from typer.testing import CliRunner

    from medmae.cli import app

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


# ----------------------------------------------------------------------------------------- subprocesses


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test's environment (so ``MEDMAE_CACHE`` is shared) with one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDMAE_TEST_")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class CliProcess:
    """``medmae`` (with the test hooks of this module) as a subprocess; output goes to ``log``."""

    def __init__(self, args: Sequence[str], log: Path, *, pause_at: int | None = None,
                 kill_in_save: int | None = None, env: dict[str, str] | None = None, clock_tick: float | None = None):
        self.log = Path(log)
        self.go = self.log.with_suffix(".go")
        extra = {}
        if pause_at is not None:
            extra.update(MEDMAE_TEST_PAUSE_AT=str(pause_at), MEDMAE_TEST_GO=str(self.go))
        if kill_in_save is not None:
            extra["MEDMAE_TEST_KILL_IN_SAVE"] = str(kill_in_save)
        if clock_tick is not None:
            extra["MEDMAE_TEST_CLOCK_TICK"] = str(clock_tick)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(HERE), *map(str, args)], stdout=out,
                                         stderr=subprocess.STDOUT, env={**subprocess_env(**extra), **(env or {})},
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"medmae did not finish in {timeout} s:\n{self.output()[-3000:]}") from None

    def wait_for_step(self, run_dir: Path, step: int, timeout: float = 120) -> None:
        """Block until ``metrics.jsonl`` in ``run_dir`` has reached ``step``."""
        deadline = time.monotonic() + timeout
        while True:
            rows = train_rows(run_dir)
            if rows and rows[-1]["step"] >= step:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"medmae exited ({self.proc.returncode}) before step {step}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill_group()
                raise AssertionError(f"step {step} not reached in {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.02)

    def resume_after_pause(self) -> None:
        self.go.touch()

    def kill_group(self) -> None:
        """SIGKILL this run's process group (the run and any data-loader workers it started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


def run_cli(args: Sequence[str], log: Path, timeout: float = 120) -> CliProcess:
    """Run ``medmae <args>`` to completion in a subprocess and assert it succeeded."""
    p = CliProcess(args, log)
    rc = p.wait(timeout)
    assert rc == 0, f"medmae {' '.join(map(str, args))} exited {rc}:\n{p.output()[-3000:]}"
    return p


# ------------------------------------------------------------------------------- hooks (script mode only)


def _install_test_hooks() -> None:
    from medmae.engine import checkpoint, logging as mlog

    pause_at = os.environ.get("MEDMAE_TEST_PAUSE_AT")
    if pause_at is not None:
        write, go = mlog.MetricsLog.write, Path(os.environ["MEDMAE_TEST_GO"])

        def write_then_pause(self, row):
            write(self, row)
            if row.get("step") == int(pause_at):
                deadline = time.monotonic() + 120
                while not go.exists():
                    if time.monotonic() > deadline:  # the test is gone: do not linger
                        os._exit(99)
                    time.sleep(0.01)

        mlog.MetricsLog.write = write_then_pause

    kill_at = os.environ.get("MEDMAE_TEST_KILL_IN_SAVE")
    if kill_at is not None:
        write = checkpoint._write_synced
        weights_of_step = f"{checkpoint.step_dir_name(int(kill_at))}.tmp-"

        def write_then_die(path, data):
            write(path, data)
            if path.name == checkpoint.MODEL_FILE and path.parent.name.startswith(weights_of_step):
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._write_synced = write_then_die

    tick = os.environ.get("MEDMAE_TEST_CLOCK_TICK")
    if tick is not None:
        import itertools

        from medmae.engine import budget

        calls = itertools.count()
        budget.CLOCK = lambda: next(calls) * float(tick)


if __name__ == "__main__":
    _install_test_hooks()
    from medmae.cli import main

    sys.exit(main())
