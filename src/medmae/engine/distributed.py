"""torchrun DDP set-up: gloo on CPU, NCCL on GPU; one process is the single-process special case."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from joblib import cpu_count

from medmae.errors import ConfigError, MedmaeError, PeerLostError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available here (use auto or cpu)")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def set_threads(threads: int | None, option: str = "train.threads") -> None:
    """torch CPU threads of this process: ``threads`` where given; else torch's default, capped at the CPUs this
    process may use (its affinity and its container's CPU quota, which torch does not read: in a pod limited to 2
    CPUs on a 64-core node it would run 32 threads on them). ``OMP_NUM_THREADS``, which torchrun sets, decides
    where it is set."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"{option} must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > (usable := cpu_count()):
        log.info("torch CPU threads: %d, the CPUs this process may use (torch counted %d)", usable,
                 torch.get_num_threads())
        torch.set_num_threads(usable)


def check_batch(global_batch: int, info: DistInfo) -> None:
    """The global batch is split evenly over the processes."""
    if global_batch % info.world_size:
        raise ConfigError(f"train.batch_size={global_batch} is the global batch and must be divisible by the "
                          f"{info.world_size} processes")


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process.

    ``timeout_s`` bounds every collective: a process whose peers hang fails after it instead of waiting forever
    (a dead peer is seen at once on gloo, by the NCCL watchdog only at the timeout)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, device)


def shutdown_distributed() -> None:
    """Leave the process group at the end of a command. A process that exits with it still open can abort in
    gloo's thread teardown ('terminate called without an active exception', SIGABRT), which then holds its
    peer's torchrun until a timeout (seen once in the 2-node test under load)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank; a user error there is raised on every rank
    (instead of rank 0 exiting while the others wait in the next collective)."""
    if not info.enabled:
        return fn()
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (MedmaeError, OSError) as e:
            error = e
    result, error = gather_objects((result, error), info)[0]
    if error is not None:
        raise error
    return result


_PEER_SIGNS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Broken pipe")


def is_peer_failure(err: BaseException) -> bool:
    """A collective that failed because another process of the run died or hung, not because of this one: torch's
    ``DistError`` family (store, network, NCCL) or gloo's plain ``RuntimeError`` about its TCP pairs."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _PEER_SIGNS)


def peer_lost(err: BaseException, info: DistInfo, step: int, restart_from: object) -> PeerLostError:
    """The one line a surviving process exits with when another one is gone."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    reason = first.split("] ", 1)[-1].split(". ", 1)[0][:160]  # gloo: "[source location] What. Advice..."
    return PeerLostError(f"rank {info.rank} of {info.world_size} lost the other processes of this run after step "
                         f"{step} ({reason}): a node died, was killed or hung, see its log; last checkpoint "
                         f"{restart_from or 'none'}; start every node again with --resume auto")
