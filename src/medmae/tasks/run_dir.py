"""Setting up run directories: creating and locking them, ``config.yaml`` of a new run, the bad-case log, the
folder of each evaluation, and output folders. The names of the files are :mod:`medmae.run_layout`.

A run holds an advisory ``fcntl.flock`` on ``R/run.lock`` from before it cleans or writes anything in ``R`` until
it ends (rank 0 under torchrun). The file records the holder (pid, host, start time) so that a second run is
refused with a line naming it. The kernel drops the lock when its process dies: a crashed run leaves no
stale lock, and the file itself means nothing while nobody holds it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import DistInfo, on_main
from medmae.errors import ConfigError, RunDirError
from medmae.run_layout import (
    BAD_CASES_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    LOCK_FILE,
    SUMMARY_FILE,
    checkpoints_dir,
    eval_split_dir,
    slug,
)

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

log = logging.getLogger(__name__)

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def check_directory_path(run_dir: Path) -> None:
    """``run_dir`` is a directory or can become one: neither it nor a folder above it is a file."""
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == run_dir else f"lies under {p}, which is a file"
                raise RunDirError(f"{run_dir}: {where}, not a directory; choose another --run-dir")
            return


def make_directory(run_dir: Path) -> None:
    check_directory_path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:  # a file appeared meanwhile
        raise RunDirError(f"{run_dir}: cannot be created as a directory ({e.strerror}: {e.filename})") from None


def describe_holder(path: Path) -> str:
    """``pid 123 on host node1, since 2026-01-01 12:00:00`` from a lock file (or that the holder is unknown)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class RunLock:
    """Exclusive advisory lock on ``R/run.lock``; a context manager that releases it on exit."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = run_dir, run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and record the holder, or raise :class:`RunDirError` naming the process holding it."""
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in _UNSUPPORTED:
                log.warning("%s: the file system does not support locks; another run on this directory is not "
                            "prevented", self.path)
                return
            raise RunDirError(f"{self.run_dir}: in use by another medmae run ({describe_holder(self.path)}, lock "
                              f"{self.path}); wait for it to end or use another --run-dir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _set_up(run_dir: Path, cfg_yaml: str, resume: str | None, lock: RunLock) -> None:
    make_directory(run_dir)
    lock.acquire()  # before anything in the directory is read for a decision, cleaned or written
    if resume is None and ckpt.committed_steps(checkpoints_dir(run_dir)):
        raise RunDirError(f"{run_dir} already holds checkpoints: pass --resume auto to continue it, or use another --run-dir")
    old = run_dir / CONFIG_FILE
    if resume is None or not old.is_file():
        old.write_text(cfg_yaml)
    elif old.read_text() != cfg_yaml:  # written by the Trainer once the checkpoint is restored (run_files)
        log.warning("config differs from the one this run started with (%s); the new one is used", old)


def prepare_run_dir(run_dir: Path, cfg_yaml: str, resume: str | None, dist: DistInfo) -> RunLock:
    """Create and lock the run directory, refuse to overwrite a run that has checkpoints unless resuming, and
    write ``config.yaml`` of a new run; returns the lock, held until the run ends (``with prepare_run_dir(...):``).

    A resumed run's ``config.yaml`` is replaced only once its checkpoint is restored (``Trainer.run_files``): a
    refused resume leaves the config that goes with the checkpoints."""
    lock = RunLock(run_dir)
    try:
        on_main(lambda: _set_up(run_dir, cfg_yaml, resume, lock), dist)
    except BaseException:
        lock.release()
        raise
    return lock


def write_bad_cases(run_dir: Path, skipped: Iterable[Mapping[str, str]]) -> Path:
    """``R/bad_cases.jsonl``: the cases ``data.on_bad_case=skip`` left out, one JSON object per line
    (``case_id``, ``path``, ``error``)."""
    path = run_dir / BAD_CASES_FILE
    path.write_text("".join(json.dumps(dict(b)) + "\n" for b in skipped))
    return path


def output_dir(out: str | Path, option: str = "--out") -> Path:
    """``--out`` (or another folder option) as a folder, created; a file in its place is an error naming it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{option} {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ------------------------------------------------------------------------------------------ evaluations

_MANIFEST_SUFFIXES = (".csv", ".json", ".npz", ".yaml", ".yml")


def data_name(data: str | Path) -> str:
    """Short name of a dataset path: the folder, or the manifest without its suffix (``dataset.json``: its folder)."""
    p = Path(str(data).rstrip("/"))
    if p.name.lower() in ("dataset.json", "dataset.yaml"):
        p = p.parent
    name = p.name[: -len(p.suffix)] if p.suffix.lower() in _MANIFEST_SUFFIXES else p.name
    return slug(name)


def eval_dir(run_dir: str | Path, split: str, data: str | Path | None = None) -> Path:
    """``RUN/eval/<split>`` or, for other data, ``RUN/eval/<data-name>_<split>``; a folder that already holds
    another dataset's evaluation gets the path's short hash added, so evaluations never overwrite each other."""
    if data is None:
        return eval_split_dir(run_dir, split)
    root = Path(run_dir) / EVAL_DIR
    out = root / f"{data_name(data)}_{slug(split)}"
    previous = out / SUMMARY_FILE
    if previous.is_file() and json.loads(previous.read_text()).get("data") != str(data):
        digest = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:8]
        out = root / f"{data_name(data)}-{digest}_{slug(split)}"
    return out
