"""Choosing what a run resumes from: ``--resume auto`` never deletes what it could not verify (quarantine), refuses
when nothing is usable, and a checkpoint of another run is not resumed into a run directory with its own."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from medmae.engine import checkpoint as ckpt
from medmae.engine import resume
from test_checkpoint import corrupt_header, save


@pytest.fixture
def three(tmp_path) -> Path:
    root = tmp_path / "run" / "checkpoints"
    for step in (2, 4, 6):
        save(root, step)
    return root


def test_auto_quarantines_unusable_newer_checkpoints_and_resumes_the_newest_usable(three, caplog):
    corrupt_header(three / "step_00000006")  # the manifest matches: only loading finds it
    with caplog.at_level(logging.WARNING, logger="medmae.engine.resume"):
        loaded = resume.choose(three, "auto")
    assert loaded.path == three / "step_00000004" and loaded.train_state["step"] == 4
    moved = three / resume.QUARANTINE / "step_00000006"
    assert (moved / ckpt.MODEL_FILE).is_file(), "the unusable checkpoint must be kept, not deleted"
    assert [s for s, _ in ckpt.committed_steps(three)] == [4, 2]
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "step_00000006" in text and str(moved) in text and "not a readable safetensors file" in text

    save(three, 6, keep_last=1)  # a later run: quarantine is never picked nor pruned
    assert [s for s, _ in ckpt.committed_steps(three)] == [6]
    assert (moved / ckpt.MODEL_FILE).is_file()
    assert resume.choose(three, "auto").path == three / "step_00000006"


def test_a_second_quarantine_of_the_same_step_keeps_both(three):
    for _ in range(2):
        save(three, 8)
        (three / "step_00000008" / ckpt.MANIFEST).unlink()
        assert resume.choose(three, "auto").path == three / "step_00000006"
    assert sorted(p.name for p in (three / resume.QUARANTINE).iterdir()) == ["step_00000008", "step_00000008-2"]


def test_auto_refuses_when_checkpoints_exist_but_none_is_usable_and_touches_nothing(three):
    (three / "step_00000006" / ckpt.MANIFEST).unlink()
    corrupt_header(three / "step_00000004")
    (three / "step_00000002" / ckpt.STATE_FILE).write_bytes(b"junk")
    with pytest.raises(ckpt.CheckpointError) as err:
        resume.choose(three, "auto")
    msg = str(err.value)
    assert "refusing to start from scratch" in msg and "\n" not in msg
    for name, why in [("step_00000006", "no MANIFEST.json"), (f"step_00000004/{ckpt.MODEL_FILE}", "safetensors"),
                      (f"step_00000002/{ckpt.STATE_FILE}", "truncated or changed")]:
        assert str(three / name) in msg and why in msg, (name, msg)
    assert [s for s, _ in ckpt.committed_steps(three)] == [6, 4, 2]
    assert not (three / resume.QUARANTINE).exists()


def test_auto_without_checkpoints_starts_fresh(tmp_path):
    assert resume.choose(tmp_path / "checkpoints", "auto") is None
    assert resume.choose(tmp_path / "checkpoints", None) is None


def test_a_path_is_a_run_dir_a_checkpoints_folder_or_a_checkpoint(three):
    assert resume.resolve_path(three, str(three.parent)) == three / "step_00000006"
    assert resume.resolve_path(three, str(three)) == three / "step_00000006"
    assert resume.resolve_path(three, str(three / "step_00000002")) == three / "step_00000002"
    with pytest.raises(ckpt.CheckpointError, match="does not exist") as err:
        resume.resolve_path(three, str(three / "step_00000009"))
    assert str(three / "step_00000009") in str(err.value)
    with pytest.raises(ckpt.CheckpointError, match="is a file"):
        resume.resolve_path(three, str(three / "step_00000002" / ckpt.MODEL_FILE))
    (three / "step_00000004" / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no MANIFEST.json") as err:
        resume.choose(three, str(three / "step_00000004"))
    assert str(three / "step_00000004") in str(err.value)


def test_another_runs_checkpoint_is_refused_into_a_run_dir_with_checkpoints_and_deletes_nothing(three, tmp_path):
    other = tmp_path / "other" / "checkpoints"
    save(other, 10)
    with pytest.raises(ckpt.CheckpointError) as err:
        resume.choose(three, str(other / "step_00000010"))
    msg = str(err.value)
    assert str(other / "step_00000010") in msg and str(three.parent) in msg and "already holds checkpoints" in msg
    assert [s for s, _ in ckpt.committed_steps(three)] == [6, 4, 2]
    fresh = tmp_path / "fresh" / "checkpoints"
    assert resume.choose(fresh, str(other.parent)).path == other / "step_00000010", "an empty run dir may fork a run"


def test_drop_newer_removes_a_verified_abandoned_continuation_and_quarantines_what_does_not_verify(three):
    (three / "step_00000004" / ckpt.MANIFEST).unlink()
    resume.drop_newer(three, 2)
    assert [s for s, _ in ckpt.committed_steps(three)] == [2]
    assert [p.name for p in (three / resume.QUARANTINE).iterdir()] == ["step_00000004"]


def test_restore_refuses_an_optimizer_state_of_another_model_naming_the_file(three):
    loaded = ckpt.load_checkpoint(three / "step_00000006")
    model = torch.nn.Module()
    model.enc = torch.nn.Linear(3, 4)
    model.register_buffer("steps", torch.tensor([0]))
    optimizer = torch.optim.AdamW([{"params": [model.enc.weight]}, {"params": [model.enc.bias]}])
    with pytest.raises(ckpt.CheckpointError, match="optimizer state does not fit") as err:
        resume.restore(loaded, model, optimizer, 0, 1)
    assert str(three / "step_00000006" / ckpt.STATE_FILE) in str(err.value)
