"""Checkpoints: atomic commit, rotation, corruption detection with fallback, and loading that never unpickles code."""

from __future__ import annotations

import ast
import json
import logging
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import medmae
from medmae.data.cache import sha256_file
from medmae.engine import checkpoint as ckpt


def weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"enc.weight": torch.randn(4, 3, generator=g), "enc.bias": torch.randn(4, generator=g),
            "steps": torch.tensor([step])}


def save(root: Path, step: int, keep_last: int = 5, **kw) -> Path:
    state = {"step": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(2) * step}}, "param_groups": [{"lr": 0.1}]},
             "rng": [{"torch": torch.get_rng_state()}]}
    return ckpt.save_checkpoint(root, step, model_state=kw.pop("model_state", weights(step)), train_state=state,
                                keep_last=keep_last, **kw)


def rewrite_manifest(path: Path) -> None:
    """Make MANIFEST.json describe the files as they are now (as if the files had been written that way)."""
    m = json.loads((path / ckpt.MANIFEST).read_text())
    m["files"] = {n: {"sha256": sha256_file(path / n), "size": (path / n).stat().st_size} for n in m["files"]}
    (path / ckpt.MANIFEST).write_text(json.dumps(m))


def payload_offset(safetensors_path: Path) -> int:
    """First byte of the tensor data: after the 8-byte header length and the JSON header."""
    with open(safetensors_path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


@pytest.fixture
def three(tmp_path) -> Path:
    """A checkpoint root with committed steps 2, 4 and 6."""
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save(root, step)
    return root


def test_commit_layout_and_round_trip(tmp_path):
    root = tmp_path / "checkpoints"
    path = save(root, 7, metadata={"stage": "pretrain"})
    assert path == root / "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == [ckpt.MANIFEST, ckpt.MODEL_FILE, ckpt.STATE_FILE]
    assert (root / ckpt.LATEST).read_text().strip() == "step_00000007"
    loaded = ckpt.load_checkpoint(path)
    assert all(torch.equal(loaded.model_state[k], v) for k, v in weights(7).items())
    assert loaded.train_state["step"] == 7
    assert torch.equal(loaded.train_state["optimizer"]["state"][0]["exp_avg"], torch.full((2,), 7.0))
    assert loaded.metadata["stage"] == "pretrain" and loaded.metadata["step"] == "7"


def test_truncated_weights_are_detected_and_the_previous_checkpoint_is_used(three, caplog):
    newest = three / "step_00000006" / ckpt.MODEL_FILE
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated") as err:
        ckpt.verify(three / "step_00000006")
    assert str(newest) in str(err.value)
    with caplog.at_level(logging.WARNING, logger="medmae.engine.checkpoint"):
        assert ckpt.find_latest_valid(three) == three / "step_00000004"
    assert any("step_00000006" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records)
    assert ckpt.resolve_resume(three, "auto") == three / "step_00000004"


def test_one_flipped_payload_byte_is_detected_although_safetensors_would_load_it(three, caplog):
    newest = three / "step_00000006" / ckpt.MODEL_FILE
    data = bytearray(newest.read_bytes())
    data[payload_offset(newest) + 5] ^= 0x01
    newest.write_bytes(bytes(data))
    silently_wrong = load_file(str(newest))
    assert any(not torch.equal(silently_wrong[k], v) for k, v in weights(6).items())
    with pytest.raises(ckpt.CheckpointError, match="sha256 mismatch") as err:
        ckpt.verify(three / "step_00000006")
    assert str(newest) in str(err.value)
    with caplog.at_level(logging.WARNING, logger="medmae.engine.checkpoint"):
        assert ckpt.find_latest_valid(three) == three / "step_00000004"
    assert any("step_00000006" in r.getMessage() for r in caplog.records)


def test_a_corrupted_train_state_is_detected_too(three):
    state = three / "step_00000006" / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=ckpt.STATE_FILE):
        ckpt.verify(three / "step_00000006")


def test_missing_manifest_makes_a_directory_invalid(three):
    (three / "step_00000006" / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no MANIFEST.json") as err:
        ckpt.verify(three / "step_00000006")
    assert "step_00000006" in str(err.value)
    assert ckpt.find_latest_valid(three) == three / "step_00000004"


def test_a_manifest_that_does_not_cover_the_loaded_files_is_invalid(three):
    path = three / "step_00000006"
    m = json.loads((path / ckpt.MANIFEST).read_text())
    del m["files"][ckpt.STATE_FILE]
    (path / ckpt.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ckpt.CheckpointError, match=ckpt.STATE_FILE):
        ckpt.verify(path)


def test_every_checkpoint_corrupt_means_nothing_to_resume(three):
    for _, path in ckpt.committed_steps(three):
        (path / ckpt.MANIFEST).unlink()
    assert ckpt.find_latest_valid(three) is None
    assert ckpt.resolve_resume(three, "auto") is None
    with pytest.raises(ckpt.CheckpointError, match="no valid checkpoint"):
        ckpt.resolve_resume(three.parent, str(three.parent))


def test_partial_leftovers_are_cleaned_and_committed_checkpoints_kept(three):
    (three / "step_00000008.tmp-4242").mkdir()
    (three / "step_00000008.tmp-4242" / ckpt.MODEL_FILE).write_bytes(b"half")
    (three / "LATEST.tmp-abc123").write_text("step_00000008\n")
    ckpt.clean_partial(three)
    assert sorted(p.name for p in three.iterdir()) == [ckpt.LATEST, "step_00000002", "step_00000004", "step_00000006"]


def test_rotation_keeps_the_newest_keep_last(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        save(root, step, keep_last=2)
    assert [s for s, _ in ckpt.committed_steps(root)] == [5, 4]
    assert (root / ckpt.LATEST).read_text().strip() == "step_00000005"


def test_rotation_deletes_old_checkpoints_only_after_the_new_one_is_committed(three, monkeypatch):
    deleted = []
    real_rmtree = shutil.rmtree

    def spying_rmtree(path, *a, **kw):
        path = Path(path)
        if ".tmp-" not in path.name:
            new = three / "step_00000008"
            assert (new / ckpt.MANIFEST).is_file(), f"{path.name} deleted before step 8 was committed"
            ckpt.verify(new)
            assert (three / ckpt.LATEST).read_text().strip() == new.name, f"{path.name} deleted before LATEST moved"
            deleted.append(path.name)
        real_rmtree(path, *a, **kw)

    monkeypatch.setattr(ckpt.shutil, "rmtree", spying_rmtree)
    save(three, 8, keep_last=2)
    assert deleted == ["step_00000004", "step_00000002"]


def test_a_failed_save_leaves_every_committed_checkpoint_intact(three, monkeypatch):
    def disk_full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(three, 8, keep_last=1)
    assert [s for s, _ in ckpt.committed_steps(three)] == [6, 4, 2]
    assert (three / ckpt.LATEST).read_text().strip() == "step_00000006"
    assert ckpt.find_latest_valid(three) == three / "step_00000006"
    ckpt.clean_partial(three)
    assert not [p for p in three.iterdir() if ".tmp-" in p.name]


def test_saving_the_same_step_again_replaces_it(three):
    other = {k: v + 1 for k, v in weights(6).items()}
    save(three, 6, model_state=other)
    assert torch.equal(ckpt.load_checkpoint(three / "step_00000006").model_state["enc.weight"], other["enc.weight"])
    assert not [p for p in three.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    w = weights(3)
    w["enc.weight"][1, 2] = bad
    with pytest.raises(ckpt.CheckpointError, match=r"step 3.*enc\.weight"):
        save(tmp_path / "checkpoints", 3, model_state=w)
    assert ckpt.committed_steps(tmp_path / "checkpoints") == []


def test_resolve_resume_accepts_none_auto_a_run_dir_and_a_checkpoint(three, tmp_path):
    assert ckpt.resolve_resume(three, None) is None
    assert ckpt.resolve_resume(tmp_path / "empty" / "checkpoints", "auto") is None
    assert ckpt.resolve_resume(three, str(three.parent)) == three / "step_00000006"
    assert ckpt.resolve_resume(three, str(three / "step_00000002")) == three / "step_00000002"


def test_resolve_resume_names_a_missing_path(three, tmp_path):
    missing = tmp_path / "nowhere" / "step_00000009"
    with pytest.raises(ckpt.CheckpointError, match="does not exist") as err:
        ckpt.resolve_resume(three, str(missing))
    assert str(missing) in str(err.value)


# ------------------------------------------------------------------------------------------ safe loading


class CreatesFile:
    """Unpickling this object runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_train_state_that_would_run_code_is_refused_and_runs_nothing(three, tmp_path):
    path = three / "step_00000006"
    marker = tmp_path / "pwned"
    torch.save({"step": 6, "payload": CreatesFile(marker)}, path / ckpt.STATE_FILE)
    rewrite_manifest(path)
    ckpt.verify(path)

    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert str(path / ckpt.STATE_FILE) in str(err.value)
    assert "exec" in str(err.value)
    assert not marker.exists()

    torch.load(path / ckpt.STATE_FILE, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_every_torch_load_in_the_package_passes_weights_only_true():
    package = Path(medmae.__file__).parent
    calls, unsafe = 0, []
    for py in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(), filename=str(py))):
            if isinstance(node, ast.Call) and _dotted(node.func) in ("torch.load", "torch.serialization.load"):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    unsafe.append(f"{py.relative_to(package.parent)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                assert "load" not in {a.name for a in node.names}, f"{py}: import torch.load by name hides it from this check"
    assert calls >= 1, "no torch.load found at all: this check would be vacuous"
    assert not unsafe, f"torch.load without weights_only=True at {unsafe}"
