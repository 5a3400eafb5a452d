"""Several torchrun "nodes" on this machine: one ``torchrun --nnodes N --nproc-per-node 1`` per node, meeting at a
c10d rendezvous on localhost, each running ``tests/helpers.py`` (the medmae CLI with the test hooks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from helpers import HERE, subprocess_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def children_with_rank(pid: int) -> dict[int, int]:
    """The processes started by ``pid`` (torchrun starts its workers in sessions of their own) and their RANK."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
            found[int(entry.name)] = int(env.get("RANK", "-1"))
        except (OSError, ValueError, IndexError):
            continue
    return found


class Node:
    """One node: ``torchrun`` with ``nproc`` workers, output in ``log``; ``--max-restarts 0``: a failed worker ends it."""

    def __init__(self, args: Sequence[str], log: Path, *, port: int, rdzv_id: str, nnodes: int = 2, nproc: int = 1,
                 env: dict[str, str] | None = None):
        self.log = log
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", rdzv_id,
               "--max-restarts", "0", "--monitor-interval", "0.5", str(HERE), *map(str, args)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(**(env or {})),
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ranks(self) -> list[int]:
        return sorted(children_with_rank(self.proc.pid).values())

    def signal(self, signum: int) -> None:
        """Send ``signum`` to torchrun itself (as a scheduler does)."""
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"node did not exit in {timeout} s:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL the node: its workers and torchrun itself, as a machine that dies."""
        for pid in children_with_rank(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)


def start_nodes(args: Sequence[str], logs: Sequence[Path], *, nproc: int = 1,
                env: dict[str, str] | None = None) -> list[Node]:
    """One node per log file, all meeting at one rendezvous."""
    port, rdzv = free_port(), f"medmae-test-{os.getpid()}-{time.monotonic_ns()}"
    return [Node(args, log, port=port, rdzv_id=rdzv, nnodes=len(logs), nproc=nproc, env=env) for log in logs]


def wait_all(nodes: Sequence[Node], timeout: float) -> list[int]:
    """Exit codes of every node; every one still running after ``timeout`` is killed and the test fails."""
    deadline = time.monotonic() + timeout
    try:
        return [n.wait(max(1.0, deadline - time.monotonic())) for n in nodes]
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.kill()
