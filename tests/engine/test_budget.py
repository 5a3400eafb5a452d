"""Compute budgets (``train.max_minutes``): the budget becomes a step count measured with an injected clock, the
lr schedule spans it, the calibration leaves no trace, and a crashed run resumes with the same count, bit for bit."""

from __future__ import annotations

import dataclasses
import itertools
import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from helpers import TINY_2D, CliProcess, loss_reprs, pretrain_args, train_rows
from medmae.config import OptimConfig, TrainConfig
from medmae.engine import budget
from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import DistInfo
from medmae.engine.loop import Trainer
from medmae.engine.optim import param_groups, warmup_cosine

EPOCHS = 10  # 8 points, batch 4: 2 steps per epoch, 20 steps without a budget


class Points(Dataset):
    def __init__(self, n: int = 8):
        self.x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        _, i = key
        return {"x": self.x[i], "index": i}


class Crash(RuntimeError):
    pass


def step_fn(crash_at: int | None = None):
    calls = [0]

    def fn(model: nn.Module, batch: dict) -> dict:
        calls[0] += 1
        if crash_at is not None and calls[0] == crash_at:
            raise Crash(f"crash at call {crash_at}")
        return {"loss": (model(batch["x"]) - 1.0).pow(2).mean()}

    return fn


def make_trainer(run_dir: Path, fn, **train) -> Trainer:
    """A model with dropout (uses the RNG) and batch norm (buffers): the calibration must put both back."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    cfg = TrainConfig(**{"epochs": EPOCHS, "batch_size": 4, "checkpoint_every": 3, "keep_last": 20, "device": "cpu",
                         **train})
    return Trainer(model=model, dataset=Points(), param_groups=param_groups(model, 0.0), train_cfg=cfg,
                   optim_cfg=OptimConfig(lr=0.05, warmup_epochs=2), run_dir=run_dir,
                   dist=DistInfo(0, 1, 0, torch.device("cpu")), step_fn=fn)


def fake_clock(monkeypatch, tick: float) -> list[int]:
    """Each call of the calibration clock advances it by ``tick`` s: the clock is read after every timed step, so
    every step takes ``tick`` s."""
    calls = itertools.count()
    seen: list[int] = []

    def clock() -> float:
        n = next(calls)
        seen.append(n)
        return n * tick

    monkeypatch.setattr(budget, "CLOCK", clock)
    return seen


def test_steps_in_budget_leaves_the_margin_and_refuses_a_bad_time():
    assert budget.steps_in_budget(1.0, 6.0) == 9  # 60 s x 0.9 / 6 s
    assert budget.steps_in_budget(1.0, 6.0, margin=0.0) == 10
    assert budget.steps_in_budget(0.01, 60.0) == 1  # never zero steps
    with pytest.raises(ValueError, match="-1"):
        budget.steps_in_budget(1.0, -1.0)


def test_a_few_slow_first_steps_do_not_set_the_step_time():
    """Calls 2..13 take 3, 3, 3, 1, ..., 1 s (first touches of cases): the slowest quarter is dropped, so the
    measured step is 1 s, not the mean's 1.5 s (which cost one of two identical demo arms two thirds of its steps)."""
    durations = iter([9.0] + [3.0] * 3 + [1.0] * 9)
    now = [0.0]

    def step():
        now[0] += next(durations)

    assert budget.time_steps(step, steps=13, clock=lambda: now[0]) == pytest.approx(1.0)
    assert budget.time_steps(lambda: None, steps=2, clock=iter([0.0, 2.0]).__next__) == pytest.approx(2.0)


def test_max_minutes_becomes_a_step_count_and_the_schedule_spans_it(tmp_path, monkeypatch):
    fake_clock(monkeypatch, tick=6.0)  # 6 s per step -> 9 steps in 0.9 x 60 s
    result = make_trainer(tmp_path, step_fn(), max_minutes=1.0).fit()
    assert result.step == result.total_steps == 9
    rows = train_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 10))
    warmup = round(2 * 2 * 9 / (EPOCHS * 2))  # warmup_epochs scaled to the budgeted steps, as epochs would be
    want = [warmup_cosine(s, lr=0.05, total_steps=9, warmup_steps=warmup) for s in range(9)]
    assert [r["lr"] for r in rows] == pytest.approx(want)
    unbudgeted = warmup_cosine(8, lr=0.05, total_steps=2 * EPOCHS, warmup_steps=4)
    assert rows[-1]["lr"] < 0.1 * unbudgeted, "the cosine must be near its end at the last budgeted step"
    logged = [r for r in budget_rows(tmp_path)]
    assert len(logged) == 1 and logged[0]["step_s"] == pytest.approx(6.0) and logged[0]["total_steps"] == 9
    assert result.usage["budget_steps"] == 9 and result.usage["measured_step_s"] == pytest.approx(6.0)
    assert result.usage["max_minutes"] == 1.0 and result.usage["steps"] == 9 and result.usage["train_minutes"] >= 0
    state = ckpt.load_checkpoint(ckpt.find_latest_valid(tmp_path / "checkpoints")).train_state
    assert state["budget"]["total_steps"] == 9 and state["total_steps"] == 9


def test_a_step_time_measured_on_a_busy_machine_is_flagged(tmp_path, monkeypatch, caplog):
    """Beside other work (a test suite, another run) a budget buys far fewer steps: the demo's ResEnc arms got 13-42
    steps instead of 505-573 and scored Dice 0.42-0.46 instead of 0.95. The run says so and records the load."""
    fake_clock(monkeypatch, tick=6.0)
    cpus = budget.cpu_count()

    def run(name: str, pressure: float | None, load: float):
        monkeypatch.setattr(budget, "cpu_pressure", lambda: pressure)
        monkeypatch.setattr(budget.os, "getloadavg", lambda: (load * cpus, 0.0, 0.0))
        caplog.clear()
        with caplog.at_level("WARNING", logger="medmae.engine.budget"):
            return make_trainer(tmp_path / name, step_fn(), max_minutes=1.0).fit()

    busy = run("busy", 0.7, 3.0)
    assert "the machine was busy" in caplog.text and "waited for a CPU 70% of the last 10 s" in caplog.text
    assert busy.usage["busy"] is True and busy.usage["cpu_pressure"] == pytest.approx(0.7), "summary.json / task.json"
    assert budget_rows(tmp_path / "busy")[0]["load_per_cpu"] == pytest.approx(3.0)
    # the load average lags (a sweep's previous cell, work that just ended): the CPU pressure of the last 10 s decides
    lagging = run("lagging", 0.05, 1.6)
    assert "busy" not in caplog.text and lagging.usage["busy"] is False
    # without pressure stall information (macOS, older kernels) the load average decides
    old_kernel = run("old", None, 3.0)
    assert "load average 3.0 per CPU" in caplog.text and old_kernel.usage["busy"] is True
    idle = run("idle", None, 0.5)
    assert "busy" not in caplog.text and idle.usage["busy"] is False
    assert budget_rows(tmp_path / "idle")[0]["load_per_cpu"] == pytest.approx(0.5)


def test_cpu_pressure_reads_the_kernels_ten_second_average(tmp_path):
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=71.37 avg60=48.00 avg300=50.45 total=24800764169\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert budget.cpu_pressure(str(psi)) == pytest.approx(0.714)
    psi.write_text("garbage\n")
    assert budget.cpu_pressure(str(psi)) is None
    assert budget.cpu_pressure(str(tmp_path / "absent")) is None


def test_the_cpu_pressure_is_the_processs_own_cgroups_where_it_has_one(tmp_path):
    """On a node shared by jobs the system-wide pressure counts other jobs' waits: the cgroup's own is read first."""
    proc, cgroups = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/slurm/job_7/step_0\n")
    assert budget.pressure_file(str(proc), str(cgroups)) == f"{proc}/pressure/cpu", "no cpu.pressure there: system-wide"
    own = cgroups / "slurm" / "job_7" / "step_0" / "cpu.pressure"
    own.parent.mkdir(parents=True)
    own.write_text("some avg10=2.00 avg60=1.00 avg300=0.50 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert budget.pressure_file(str(proc), str(cgroups)) == str(own)
    (proc / "self" / "cgroup").write_text("4:memory:/x\n1:cpu:/\n")  # cgroup v1 only
    assert budget.pressure_file(str(proc), str(cgroups)) == f"{proc}/pressure/cpu"
    (proc / "self" / "cgroup").write_text("4:memory:/x\n1:cpu:/\n0::/job_9\n")  # hybrid: v2 under unified/
    hybrid = cgroups / "unified" / "job_9" / "cpu.pressure"
    hybrid.parent.mkdir(parents=True)
    hybrid.write_text(own.read_text())
    assert budget.pressure_file(str(proc), str(cgroups)) == str(hybrid)


def test_a_run_of_the_same_cost_takes_the_step_time_another_run_measured(tmp_path, monkeypatch):
    """Two timings of one network differ (±15 %), which gave a sweep's identical arms different step counts: a run
    whose cost key matches takes the other run's step time (and its load), and so its step count; another key
    measures."""
    fake_clock(monkeypatch, tick=6.0)
    first = make_trainer(tmp_path / "first", step_fn(), max_minutes=1.0)
    first.cost_key = "net-a"
    assert first.fit().step == 9
    measured = budget.read_budget(tmp_path / "first")
    assert measured is not None and measured.cost_key == "net-a" and measured.step_s == pytest.approx(6.0)
    given = dataclasses.replace(measured, step_s_from="runs/first")

    seen = fake_clock(monkeypatch, tick=3.0)  # measured now, a step would take 3 s: 18 steps
    same = make_trainer(tmp_path / "same", step_fn(), max_minutes=1.0)
    same.cost_key, same.given_budget = "net-a", given
    result = same.fit()
    assert not seen, "nothing was timed"
    assert result.step == result.total_steps == 9 and result.usage["step_s_from"] == "runs/first"
    assert result.usage["measured_step_s"] == pytest.approx(6.0)
    assert budget.read_budget(tmp_path / "same") == dataclasses.replace(given, max_minutes=1.0)

    other = make_trainer(tmp_path / "other", step_fn(), max_minutes=1.0)
    other.cost_key, other.given_budget = "net-b", given  # another network: measures its own
    result = other.fit()
    assert seen and result.step == 18 and "step_s_from" not in result.usage
    assert budget.read_budget(tmp_path / "nowhere") is None


def test_the_cost_key_is_the_parameter_shapes_and_the_settings_not_the_weights():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 8), nn.Linear(3, 8)  # other weights, same shapes
    settings = {"batch": 4, "precision": "fp32"}
    assert budget.cost_key(a, settings) == budget.cost_key(b, settings)
    assert budget.cost_key(a, settings) != budget.cost_key(nn.Linear(3, 9), settings)
    assert budget.cost_key(a, settings) != budget.cost_key(a, {**settings, "batch": 8})


def test_a_budget_never_exceeds_epochs_or_max_steps(tmp_path, monkeypatch):
    fake_clock(monkeypatch, tick=0.01)  # 10 ms per step: thousands of steps would fit
    result = make_trainer(tmp_path / "a", step_fn(), max_minutes=1.0).fit()
    assert result.step == 20
    result = make_trainer(tmp_path / "b", step_fn(), max_minutes=1.0).fit(max_steps=5)
    assert result.step == 5 and result.usage["budget_steps"] == 5


def test_the_calibration_leaves_no_trace(tmp_path, monkeypatch):
    """A budgeted run of 9 steps equals the run ``max_steps=9`` bit for bit (same weights, RNG, losses)."""
    fake_clock(monkeypatch, tick=6.0)
    make_trainer(tmp_path / "budget", step_fn(), max_minutes=1.0).fit()
    trainer = make_trainer(tmp_path / "steps", step_fn())
    trainer.fit(max_steps=9)
    assert losses(tmp_path / "budget") == losses(tmp_path / "steps")


def test_short_steps_are_timed_again_over_a_longer_stretch_and_that_leaves_no_trace_either(tmp_path, monkeypatch):
    """3 timed steps of 10 ms are noise-prone: a second timing covers 2 % of the budget, capped at 48 steps."""
    assert budget.calibration_steps(0.01, 1.0) == budget.CALIBRATION_MAX_STEPS  # 1.2 s wanted: 121 steps, capped
    assert budget.calibration_steps(0.5, 8.0) == 1 + 20  # 2 % of 8 min = 9.6 s: 20 timed steps of 0.5 s
    assert budget.calibration_steps(6.0, 1.0) == budget.CALIBRATION_STEPS  # long steps: the first timing stands
    assert budget.calibration_steps(0.01, 600.0) == budget.CALIBRATION_MAX_STEPS  # 30 s at most
    assert budget.calibration_steps(0.1, 0.5) == 1 + 20  # 2 % of 30 s is 0.6 s: 2 s at least
    fake_clock(monkeypatch, tick=0.01)
    result = make_trainer(tmp_path / "budget", step_fn(), max_minutes=1.0).fit()
    logged = budget_rows(tmp_path / "budget")[0]
    assert logged["timed_steps"] == budget.CALIBRATION_MAX_STEPS - 1
    assert logged["step_s"] == pytest.approx(0.01)
    make_trainer(tmp_path / "steps", step_fn()).fit(max_steps=result.step)
    assert losses(tmp_path / "budget") == losses(tmp_path / "steps")


def test_a_crashed_budgeted_run_resumes_with_its_step_count_bit_for_bit(tmp_path, monkeypatch):
    """The resumed run has a machine ten times faster (another clock): it must not measure again."""
    fake_clock(monkeypatch, tick=6.0)
    make_trainer(tmp_path / "ref", step_fn(), max_minutes=1.0).fit()
    with pytest.raises(Crash):
        make_trainer(tmp_path / "run", step_fn(crash_at=4 + 8), max_minutes=1.0).fit()  # 4 timing calls, crash in step 8
    assert [s for s, _ in ckpt.committed_steps(tmp_path / "run" / "checkpoints")][0] == 6
    seen = fake_clock(monkeypatch, tick=0.6)
    result = make_trainer(tmp_path / "run", step_fn(), max_minutes=1.0).fit(resume="auto")
    assert seen == [], "a resumed run must reuse the checkpoint's budget, not measure again"
    assert result.step == 9 and result.usage["measured_step_s"] == pytest.approx(6.0)
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    final = {k: ckpt.load_checkpoint(p).model_state for k, p in (("run", tmp_path / "run"), ("ref", tmp_path / "ref"))
             for p in [ckpt.find_latest_valid(p / "checkpoints")]}
    assert all(torch.equal(final["run"][k], final["ref"][k]) for k in final["ref"])


@pytest.mark.timeout(240)
def test_sigkill_of_a_budgeted_pretraining_then_resume_auto_is_bitwise_the_run_of_its_step_count(tmp_path):
    """A real ``kill -9`` of ``medmae pretrain`` with ``train.max_minutes``: the resumed process (its clock ten
    times faster) keeps the 9 budgeted steps and ends bit for bit where ``--max-steps 9`` ends."""
    budgeted = pretrain_args(tmp_path / "run", "demo-2d", (*TINY_2D, "train.max_minutes=0.1"))  # 5.4 s / 0.6 s
    p = CliProcess(budgeted, tmp_path / "crash.log", pause_at=6, clock_tick=0.6)  # 0.6 s per step -> 9 steps
    p.wait_for_step(tmp_path / "run", 6)
    p.proc.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    p.kill_group()
    resumed = CliProcess([*budgeted, "--resume", "auto"], tmp_path / "resume.log", clock_tick=0.06)
    assert resumed.wait() == 0, resumed.output()[-2000:]
    ref = CliProcess(pretrain_args(tmp_path / "ref", "demo-2d", TINY_2D, "--max-steps", "9"), tmp_path / "ref.log")
    assert ref.wait() == 0, ref.output()[-2000:]
    assert [s for s, _ in loss_reprs(tmp_path / "run")] == list(range(1, 10))
    assert loss_reprs(tmp_path / "run") == loss_reprs(tmp_path / "ref")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["training"]["budget_steps"] == 9 and summary["training"]["measured_step_s"] == pytest.approx(0.6)
    assert summary["training"]["max_minutes"] == 0.1
    assert budget.steps_in_budget(0.1, 0.6) == 9


def test_when_a_budget_is_re_checked_and_what_the_loops_step_time_makes_of_it(monkeypatch):
    assert budget.recheck_step(733) == 74  # 10 % of the steps
    assert budget.recheck_step(46) == 23  # at least 3 warm-up + 20 timed steps ...
    assert budget.recheck_step(45) is None  # ... and half the run left after them
    b = budget.Budget(max_minutes=1.0, step_s=0.5, total_steps=108, budget_steps=108, recheck_at=23)
    slower = budget.refix_budget(b, 23, 0.6, schedule_steps=200)  # 54 s / 0.6 s
    assert (slower.total_steps, slower.budget_steps, slower.checked_at) == (90, 90, 23)
    assert slower.step_s == 0.6 and slower.calibrated_step_s == 0.5
    assert budget.refix_budget(b, 23, 0.3, schedule_steps=150).total_steps == 150  # epochs / max_steps still cap it
    assert budget.refix_budget(b, 30, 10.0, schedule_steps=200).total_steps == 30  # over budget: ends now
    timer = budget.LoopTimer(start=0, until=7)
    now = iter([0.0, 1.0, 2.0, 3.0, 10.0])
    monkeypatch.setattr(budget, "CLOCK", lambda: next(now))
    # steps 1-2 are warm-up, the clock is read from step 3; 6 -> 7 takes 7 s (a figure): it counts
    assert [timer.tick(s) for s in range(1, 8)] == [None] * 6 + [pytest.approx(2.5)]


def test_a_measured_budget_is_re_fixed_once_from_the_loops_own_step_time(tmp_path, monkeypatch):
    """The calibration measured 0.6 s per step (90 steps in 54 s), the loop runs at 1.2 s: after 23 steps the count
    becomes 45 and the lr schedule spans it from there; the re-fixed budget is what checkpoints, metrics and a run
    of the same cost take."""
    monkeypatch.setattr(Trainer, "_measure_step", lambda self, schedule: (0.6, 3))
    fake_clock(monkeypatch, tick=1.2)  # only the loop reads the clock now
    run = make_trainer(tmp_path / "run", step_fn(), max_minutes=1.0, epochs=100)
    run.cost_key = "net-a"
    result = run.fit()
    assert result.step == result.total_steps == 45
    first, second = budget_rows(tmp_path / "run")
    assert (first["total_steps"], first["recheck_at"], first["checked_at"]) == (90, 23, None)
    assert (second["step"], second["total_steps"], second["checked_at"]) == (23, 45, 23)
    assert second["step_s"] == pytest.approx(1.2) and second["calibrated_step_s"] == pytest.approx(0.6)
    lrs = [r["lr"] for r in train_rows(tmp_path / "run")]
    assert lrs[:23] == pytest.approx([warmup_cosine(s, lr=0.05, total_steps=90, warmup_steps=2) for s in range(23)])
    assert lrs[23:] == pytest.approx([warmup_cosine(s, lr=0.05, total_steps=45, warmup_steps=1) for s in range(23, 45)])
    assert result.usage["measured_step_s"] == pytest.approx(1.2) and result.usage["checked_at"] == 23
    state = ckpt.load_checkpoint(ckpt.find_latest_valid(tmp_path / "run" / "checkpoints")).train_state
    assert state["budget"]["checked_at"] == 23 and state["total_steps"] == 45
    taken = budget.read_budget(tmp_path / "run")
    assert taken is not None and taken.total_steps == 45

    seen = fake_clock(monkeypatch, tick=0.1)
    same = make_trainer(tmp_path / "same", step_fn(), max_minutes=1.0, epochs=100)
    same.cost_key, same.given_budget = "net-a", dataclasses.replace(taken, step_s_from="runs/run")
    assert same.fit().step == 45 and not seen, "a run given a re-checked budget takes its steps and times nothing"


def test_a_run_resumes_exactly_after_its_re_check_and_re_checks_when_stopped_before_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_measure_step", lambda self, schedule: (0.6, 3))
    fake_clock(monkeypatch, tick=1.2)
    make_trainer(tmp_path / "ref", step_fn(), max_minutes=1.0, epochs=100).fit()
    with pytest.raises(Crash):
        make_trainer(tmp_path / "late", step_fn(crash_at=32), max_minutes=1.0, epochs=100).fit()  # checkpoint at 30
    seen = fake_clock(monkeypatch, tick=0.1)
    result = make_trainer(tmp_path / "late", step_fn(), max_minutes=1.0, epochs=100).fit(resume="auto")
    assert not seen and result.step == 45 and losses(tmp_path / "late") == losses(tmp_path / "ref")

    fake_clock(monkeypatch, tick=1.2)
    with pytest.raises(Crash):
        make_trainer(tmp_path / "early", step_fn(crash_at=11), max_minutes=1.0, epochs=100).fit()  # checkpoint at 9
    fake_clock(monkeypatch, tick=1.5)  # the resumed session is slower: 36 steps fit
    result = make_trainer(tmp_path / "early", step_fn(), max_minutes=1.0, epochs=100).fit(resume="auto")
    assert result.step == 36 and result.usage["checked_at"] == 9 + 3 + 20
    assert losses(tmp_path / "early")[:9] == losses(tmp_path / "ref")[:9]


def losses(run_dir: Path) -> list[tuple[int, str]]:
    return loss_reprs(run_dir)


def budget_rows(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "budget"]
