"""Training progress: a rich bar on a terminal; off a terminal (CI, SLURM logs, pipes) a plain log line every
``train.log_every`` steps and at least every ``logging.progress_every_s`` seconds, with step/total, loss,
throughput and ETA, so a slow run is never silent for minutes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from medmae.engine.logging import is_interactive

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(step: int, total: int, row: dict[str, Any], items_per_s: float, eta_s: float | None) -> str:
    """``step 200/1000 (20 %) loss 0.8297 lr 1.39e-03 7.2 items/s ETA 1m51s``."""
    loss = row.get("loss")
    loss_text = f"{loss:.4f}" if isinstance(loss, float) else "nan"
    eta = f" ETA {format_duration(eta_s)}" if eta_s is not None and step < total else ""
    return (f"step {step}/{total} ({100 * step / max(total, 1):.0f} %) loss {loss_text} lr {row.get('lr', 0.0):.2e} "
            f"{items_per_s:.1f} items/s{eta}")


class Progress:
    """rich progress bar on a terminal; plain lines otherwise (see the module doc). ``clock``: for tests."""

    def __init__(self, total: int, start: int, *, enabled: bool, log_every: int, every_s: float = 30.0,
                 batch: int = 1, interactive: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.start, self.enabled, self.log_every = total, start, enabled, log_every
        self.every_s, self.batch, self.clock = every_s, batch, clock
        self.interactive = is_interactive() if interactive is None else interactive
        self.bar: Any = None
        self.t_start = self.t_line = clock()
        self.step_line = start

    def __enter__(self) -> Progress:
        self.t_start = self.t_line = self.clock()
        if self.enabled and self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def due(self, step: int, now: float) -> bool:
        """A line at every ``log_every``-th step, the last step, and when ``every_s`` seconds passed since the last."""
        timed = self.every_s > 0 and now - self.t_line >= self.every_s
        return step % self.log_every == 0 or step == self.total or timed

    def set_total(self, total: int) -> None:
        """The run's new length (a re-checked time budget)."""
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def update(self, step: int, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            info = f"loss {row.get('loss') or float('nan'):.4f} lr {row.get('lr', 0.0):.2e} {row.get('items_per_s', 0.0):.1f} items/s"
            self.bar.update(self.task, completed=step, info=info)
            return
        now = self.clock()
        if not self.due(step, now):
            return
        window = max(now - self.t_line, 1e-9)
        rate = (step - self.step_line) * self.batch / window  # items/s since the last line
        done = step - self.start
        eta = (now - self.t_start) / done * (self.total - step) if done > 0 else None
        log.info("%s", progress_line(step, self.total, row, rate, eta))
        self.t_line, self.step_line = now, step

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
