"""The training loop: exact resume after SIGKILL / SIGTERM (real ``medmae pretrain`` subprocesses), the NaN/Inf
guard and the schedule (in-process :class:`Trainer` on a toy model)."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from helpers import TINY_2D, CliProcess, checkpoint_steps, latest_checkpoint, loss_reprs, pretrain_args, run_cli, train_rows
from medmae.config import OptimConfig, TrainConfig
from medmae.engine import checkpoint as ckpt
from medmae.engine.distributed import DistInfo
from medmae.engine.loop import NonFiniteLossError, Schedule, Trainer
from medmae.engine.optim import param_groups
from medmae.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_PREEMPTED

TOTAL_STEPS = 12  # TINY_2D: 3 steps per epoch, 4 epochs, checkpoints every 4 steps


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bitwise-equal loss curve, final checkpoint weights and exported encoder."""
    assert loss_reprs(run_dir) == loss_reprs(reference)
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, TOTAL_STEPS + 1))
    assert latest_checkpoint(run_dir).name == ckpt.step_dir_name(TOTAL_STEPS)
    for rel in (f"checkpoints/{ckpt.step_dir_name(TOTAL_STEPS)}/{ckpt.MODEL_FILE}", "export/encoder.safetensors"):
        got, want = load_file(str(run_dir / rel)), load_file(str(reference / rel))
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{rel}: tensors differ from the uninterrupted run: {different}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny 2D pretraining run."""
    base = tmp_path_factory.mktemp("reference")
    run_cli(pretrain_args(base / "run"), base / "run.log")
    return base / "run"


@pytest.mark.timeout(240)
def test_sigkill_at_any_point_then_resume_auto_is_bitwise_identical(tmp_path, reference):
    """One run killed -9 four times: just after a checkpoint, mid-interval past an epoch boundary, at an epoch
    boundary, and half-way through writing a checkpoint; each ``--resume auto`` continues from the newest
    committed checkpoint and the finished run equals the uninterrupted one bit for bit."""
    run = tmp_path / "run"
    args = pretrain_args(run)
    resume = [*args, "--resume", "auto"]
    # (args, kill after the metrics row of this step, newest committed checkpoint after the kill)
    plan = [(args, 5, 4), (resume, 7, 4), (resume, 9, 8)]
    for i, (a, step, committed) in enumerate(plan):
        p = CliProcess(a, tmp_path / f"crash{i}.log", pause_at=step)
        p.wait_for_step(run, step)
        p.proc.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
        p.kill_group()
        assert train_rows(run)[-1]["step"] == step
        assert checkpoint_steps(run)[-1] == committed, p.output()[-2000:]

    p = CliProcess(resume, tmp_path / "crash-in-save.log", kill_in_save=TOTAL_STEPS)
    assert p.wait() == -signal.SIGKILL
    p.kill_group()
    leftovers = [q.name for q in (run / "checkpoints").iterdir() if ".tmp-" in q.name]
    assert leftovers, "the kill during the checkpoint write should have left a partial directory"
    assert checkpoint_steps(run)[-1] == 8

    run_cli(resume, tmp_path / "final.log")
    assert not [q for q in (run / "checkpoints").iterdir() if ".tmp-" in q.name]
    assert_same_run(run, reference)


@pytest.mark.timeout(180)
def test_sigkill_with_two_loader_workers_resumes_to_the_single_process_loader_result(tmp_path, reference):
    """Items are pure functions of (seed, epoch, index): two loader workers and a crash change nothing."""
    run = tmp_path / "run"
    args = pretrain_args(run, "demo-2d", (*TINY_2D, "data.num_workers=2"))
    p = CliProcess(args, tmp_path / "crash.log", pause_at=6)
    p.wait_for_step(run, 6)
    p.proc.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    p.kill_group()
    run_cli([*args, "--resume", "auto"], tmp_path / "resume.log")
    assert_same_run(run, reference)


@pytest.mark.timeout(180)
def test_sigterm_checkpoints_the_current_step_exits_143_and_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    args = pretrain_args(run)
    p = CliProcess(args, tmp_path / "term.log", pause_at=6)
    p.wait_for_step(run, 6)
    p.proc.send_signal(signal.SIGTERM)
    p.resume_after_pause()
    assert p.wait() == EXIT_PREEMPTED, p.output()[-2000:]
    assert latest_checkpoint(run).name == ckpt.step_dir_name(6)
    ckpt.verify(latest_checkpoint(run))
    assert train_rows(run)[-1]["step"] == 6
    assert not (run / "export").exists(), "a pre-empted run must not export an encoder"

    run_cli([*args, "--resume", "auto"], tmp_path / "resume.log")
    assert_same_run(run, reference)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGINT, EXIT_INTERRUPTED)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_whole_process_group_with_loader_workers_checkpoints_and_resumes_exactly(
        tmp_path, reference, sig, code):
    """SLURM, Kubernetes, ``docker stop`` and Ctrl-C signal every process of the group, DataLoader workers
    included: the workers must survive it so that the main process saves at the step boundary and exits."""
    run = tmp_path / "run"
    args = pretrain_args(run, "demo-2d", (*TINY_2D, "data.num_workers=2"))
    p = CliProcess(args, tmp_path / "stop.log", pause_at=6)  # CliProcess starts a new session: its own group
    p.wait_for_step(run, 6)
    os.killpg(p.proc.pid, sig)
    time.sleep(0.5)  # let a worker that would die of it die (and the main process notice) before going on
    p.resume_after_pause()
    assert p.wait() == code, p.output()[-3000:]
    assert "killed by signal" not in p.output() and "Traceback" not in p.output(), p.output()[-3000:]
    assert latest_checkpoint(run).name == ckpt.step_dir_name(6)
    ckpt.verify(latest_checkpoint(run))
    assert not [q for q in (run / "checkpoints").iterdir() if ".tmp-" in q.name]
    assert not (run / "export").exists()

    run_cli([*args, "--resume", "auto"], tmp_path / "resume.log")
    assert_same_run(run, reference)


@pytest.mark.timeout(120)
def test_a_second_ctrl_c_aborts_at_once_without_saving_and_exits_130(tmp_path):
    run = tmp_path / "run"
    p = CliProcess(pretrain_args(run, "demo-2d", (*TINY_2D, "data.num_workers=2")), tmp_path / "int.log", pause_at=6)
    p.wait_for_step(run, 6)
    os.killpg(p.proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(p.proc.pid, signal.SIGINT)  # the run is still paused inside step 6: nothing saved yet
    assert p.wait() == EXIT_INTERRUPTED, p.output()[-3000:]
    out = p.output()
    assert "error: interrupted" in out and "--resume auto" in out and "Traceback" not in out, out[-3000:]
    assert checkpoint_steps(run) == [4] and latest_checkpoint(run).name == ckpt.step_dir_name(4)
    assert not [q for q in (run / "checkpoints").iterdir() if ".tmp-" in q.name]


# ------------------------------------------------------------------------------- in-process Trainer


class Points(Dataset):
    """Toy dataset keyed like :class:`~medmae.data.dataset.CaseDataset`: ``(epoch, index)``."""

    def __init__(self, n: int = 8, dim: int = 3):
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        _, i = key
        return {"x": self.x[i], "index": i}


class NaNAt:
    """step_fn whose loss is NaN at the given (1-based) steps; records the weights each step starts from."""

    def __init__(self, nan_steps=(), poison_weights_at: int | None = None):
        self.nan_steps, self.poison_at = set(nan_steps), poison_weights_at
        self.calls, self.start_weights, self.batch_indices = 0, [], []

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        self.calls += 1
        if self.calls == self.poison_at:
            with torch.no_grad():
                model.weight.fill_(float("inf"))
        self.start_weights.append(model.weight.detach().clone())
        self.batch_indices.append([int(i) for i in batch["index"]])
        loss = (model(batch["x"]) - 1.0).pow(2).mean()
        return {"loss": loss * float("nan") if self.calls in self.nan_steps else loss}


def make_trainer(run_dir: Path, step_fn, **train) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    train_cfg = TrainConfig(**{"epochs": 4, "batch_size": 4, "checkpoint_every": 1, "keep_last": 20, "device": "cpu", **train})
    return Trainer(
        model=model,
        dataset=Points(),
        param_groups=param_groups(model, 0.0),
        train_cfg=train_cfg,
        optim_cfg=OptimConfig(lr=0.05, warmup_epochs=0),
        run_dir=run_dir,
        dist=DistInfo(0, 1, 0, torch.device("cpu")),
        step_fn=step_fn,
        case_ids=[f"case{i}" for i in range(8)],
    )


def committed_weights(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {step: ckpt.load_checkpoint(path).model_state for step, path in ckpt.committed_steps(run_dir / "checkpoints")}


def test_isolated_nan_steps_are_skipped_counted_and_leave_weights_unchanged(tmp_path):
    fn = NaNAt(nan_steps={2, 5})
    result = make_trainer(tmp_path, fn).fit()
    assert result.step == 8 and result.skipped_steps == 2
    assert math.isfinite(result.last_loss)
    w = fn.start_weights
    assert torch.equal(w[2], w[1]), "the NaN step 2 changed the weights"
    assert torch.equal(w[5], w[4]), "the NaN step 5 changed the weights"
    assert not torch.equal(w[1], w[0]) and not torch.equal(w[3], w[2]), "finite steps must update the weights"
    rows = train_rows(tmp_path)
    assert [r["skipped"] for r in rows] == [0, 1, 1, 1, 2, 2, 2, 2]
    assert [r["loss"] is None for r in rows] == [s in (2, 5) for s in range(1, 9)], "non-finite losses are JSON null"
    for step, state in committed_weights(tmp_path).items():
        assert all(torch.isfinite(v).all() for v in state.values()), f"checkpoint {step} holds non-finite weights"


def test_consecutive_nan_steps_raise_naming_the_step_and_cases(tmp_path):
    fn = NaNAt(nan_steps={3, 4, 5})
    with pytest.raises(NonFiniteLossError) as err:
        make_trainer(tmp_path, fn, nan_max_consecutive=3).fit()
    msg = str(err.value)
    assert "step 5" in msg
    for i in fn.batch_indices[4]:
        assert f"case{i}" in msg
    assert fn.calls == 5, "training must stop at the third consecutive NaN step"
    weights = committed_weights(tmp_path)
    assert sorted(weights) == [1, 2, 3, 4]
    for step, state in weights.items():
        assert all(torch.isfinite(v).all() for v in state.values()), f"checkpoint {step} holds non-finite weights"


def test_non_finite_weights_are_never_committed(tmp_path):
    fn = NaNAt(poison_weights_at=3)
    with pytest.raises(NonFiniteLossError, match="at step 3") as err:
        make_trainer(tmp_path, fn).fit()
    assert str(tmp_path / "checkpoints" / ckpt.step_dir_name(2)) in str(err.value)
    assert sorted(committed_weights(tmp_path)) == [1, 2]
    assert latest_checkpoint(tmp_path).name == ckpt.step_dir_name(2)


def test_weights_made_non_finite_by_finite_steps_stop_with_exit_1_naming_the_steps_and_the_last_good_checkpoint(tmp_path):
    """An infinite learning rate: loss and gradient stay finite, the update makes the weights infinite. The run
    stops with the NaN policy's error (exit 1), not a checkpoint error, and commits nothing non-finite."""
    make_trainer(tmp_path, NaNAt(), checkpoint_every=2).fit(max_steps=2)
    trainer = make_trainer(tmp_path, NaNAt(), checkpoint_every=1)
    trainer.optim_cfg = trainer.optim_cfg.model_copy(update={"lr": math.inf})  # whatever the config accepts
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(resume="auto")
    assert err.value.exit_code == EXIT_DATA
    msg = str(err.value)
    assert "at step 3" in msg and "optim.lr" in msg
    assert str(tmp_path / "checkpoints" / ckpt.step_dir_name(2)) in msg
    assert not any(r["loss"] is None for r in train_rows(tmp_path)), "the losses were finite"
    assert sorted(committed_weights(tmp_path)) == [2], "the non-finite weights of step 3 must not be committed"


def test_schedule_counts_steps_warmup_and_the_batch_scaled_lr():
    train = TrainConfig(epochs=3, batch_size=4)
    s = Schedule.build(18, train, OptimConfig(base_lr=1e-3, warmup_epochs=1), None)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (4, 12, 4)
    assert s.lr == pytest.approx(1e-3 * 4 / 256)
    capped = Schedule.build(18, train, OptimConfig(lr=0.1, warmup_epochs=1), max_steps=6)
    assert (capped.total_steps, capped.warmup_steps, capped.lr) == (6, 2, 0.1)
    # fewer cases than the batch: one process uses batches of all cases, several processes refuse
    small = Schedule.build(3, train, OptimConfig(lr=0.1), None)
    assert (small.global_batch, small.steps_per_epoch, small.total_steps) == (3, 1, 3)
    with pytest.raises(ValueError, match="fewer than the batch size 4"):
        Schedule.build(3, train, OptimConfig(), None, world_size=2)
    # min_steps raises the length of short runs; warmup keeps its share of the run
    longer = Schedule.build(18, TrainConfig(epochs=3, batch_size=4, min_steps=24), OptimConfig(warmup_epochs=1), None)
    assert (longer.total_steps, longer.warmup_steps) == (24, 8)
