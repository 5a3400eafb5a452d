"""Pre-emption: SIGTERM / SIGUSR1 ask the loop to checkpoint at the next step boundary and exit."""

from __future__ import annotations

import signal
from types import FrameType


HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class StopRequest:
    """Context manager that records the first pre-emption signal instead of dying on it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
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
