"""Pre-emption and Ctrl-C: the loop checkpoints at the next step boundary and exits (143, or 130 for SIGINT).

SIGTERM / SIGUSR1 (SLURM, Kubernetes, ``docker stop``) and a first SIGINT (Ctrl-C) only record the request; a
SIGINT after a request aborts at once (``KeyboardInterrupt``). These signals usually reach the whole process
group, so DataLoader workers ignore them (:func:`ignore_stop_signals`) and live until the main process has
saved and shuts them down.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from medmae.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

log = logging.getLogger(__name__)

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                            getattr(signal, "SIGINT", None)) if s is not None)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ignore the stop signals sent to the process group.

    Torch's workers die on SIGTERM, and the main process then fails with ``DataLoader worker ... is killed by
    signal`` before it can checkpoint. Ignoring them is safe: a worker exits when the main process shuts the
    loader down or dies.
    """
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)


class StopRequest:
    """Context manager that records the first stop signal instead of dying on it; a later SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        if self.signum is None and signum == signal.SIGINT:
            log.warning("Ctrl-C: a checkpoint is saved after this step (Ctrl-C again to abort without it)")
        self.signum = self.signum or signum

    def __enter__(self) -> StopRequest:
        try:
            for s in HANDLED:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave handlers alone
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """0 without a request, 130 for SIGINT, 143 for SIGTERM / SIGUSR1."""
        if self.signum is None:
            return 0
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_PREEMPTED
