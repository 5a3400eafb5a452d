"""Off a terminal a run prints a progress line every ``logging.progress_every_s`` seconds (besides every
``train.log_every`` steps) with step/total, loss, throughput and ETA; checked with a fake clock."""

from __future__ import annotations

import logging

import pytest

from medmae.engine.progress import Progress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(steps: int, seconds_per_step: float, **kwargs) -> None:
    clock = FakeClock()
    progress = Progress(steps, 0, enabled=True, interactive=False, clock=clock, batch=8, **kwargs)
    with progress:
        for step in range(1, steps + 1):
            clock.now += seconds_per_step
            progress.update(step, {"loss": 1.0 / step, "lr": 1e-3})


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="medmae.engine.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "medmae.engine.progress"]


def test_a_slow_run_prints_a_line_every_n_seconds_with_throughput_and_eta(lines):
    run(100, 7.0, log_every=50, every_s=30)
    out = lines()
    # 7 s a step: a line after 35 s (step 5), 70 s (10), ...; step 50 (log_every) and 100 (the last) as well
    assert [int(m.split()[1].split("/")[0]) for m in out[:3]] == [5, 10, 15]
    assert out[0] == "step 5/100 (5 %) loss 0.2000 lr 1.00e-03 1.1 items/s ETA 11m05s"  # 5*8/35 items/s; 35/5*95 s
    assert any(m.startswith("step 50/100 (50 %)") for m in out)
    assert out[-1] == "step 100/100 (100 %) loss 0.0100 lr 1.00e-03 1.1 items/s"  # no ETA at the end
    assert len(out) == 20  # every 5th step: the time lines fall on the log_every steps


def test_a_fast_run_prints_only_every_log_every_steps(lines):
    run(100, 0.1, log_every=50, every_s=30)
    assert [m.split(" (")[0] for m in lines()] == ["step 50/100", "step 100/100"]


def test_zero_seconds_switches_the_time_lines_off(lines):
    run(20, 60.0, log_every=10, every_s=0)
    assert [m.split(" (")[0] for m in lines()] == ["step 10/20", "step 20/20"]


def test_a_resumed_run_estimates_from_its_own_steps(lines):
    clock = FakeClock()
    progress = Progress(100, 90, enabled=True, interactive=False, clock=clock, batch=2, log_every=5, every_s=30)
    with progress:
        clock.now += 10
        progress.update(91, {"loss": 0.5, "lr": 1e-4})
        clock.now += 10
        progress.update(95, {"loss": float("nan"), "lr": 1e-4})
    assert lines() == ["step 95/100 (95 %) loss nan lr 1.00e-04 0.5 items/s ETA 20s"]  # 5 steps * 2 / 20 s; 20 s / 5 * 5


def test_other_ranks_print_nothing(lines):
    clock = FakeClock()
    progress = Progress(10, 0, enabled=False, interactive=False, clock=clock, log_every=1)
    with progress:
        clock.now += 100
        progress.update(1, {"loss": 1.0, "lr": 1e-3})
    assert lines() == []


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (61, "1m01s"), (3600 * 2 + 7 * 60 + 5, "2h07m")])
def test_durations_read_like_clocks(seconds, text):
    assert format_duration(seconds) == text
