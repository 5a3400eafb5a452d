"""Checkpoints: atomic commit, rotation, corruption detection with fallback, and loading that never unpickles code."""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import medmae
from medmae.data.cache import sha256_file
from medmae.engine import checkpoint as ckpt
from medmae.errors import EXIT_ENVIRONMENT, EnvironmentProblem


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


class FullDisk:
    """``open`` for :mod:`medmae.engine.checkpoint`: writing ``name`` stops half-way with ENOSPC, like a full disk."""

    def __init__(self, name: str):
        self.name, self.opened = name, []

    def __call__(self, path, mode="r", *a, **kw):
        f = open(path, mode, *a, **kw)
        self.opened.append(Path(path).name)
        if Path(path).name == self.name and "w" in mode:
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

            f.write = write
        return f


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.MANIFEST])
def test_a_full_disk_fails_with_one_line_and_leaves_every_committed_checkpoint_intact(three, monkeypatch, name):
    monkeypatch.setattr(ckpt, "open", FullDisk(name), raising=False)
    with pytest.raises(EnvironmentProblem, match="no space left on device") as err:
        save(three, 8, keep_last=1)
    assert err.value.exit_code == EXIT_ENVIRONMENT
    msg = str(err.value)
    assert str(three / "step_00000008") in msg and name in msg and "step_00000006" in msg
    assert [s for s, _ in ckpt.committed_steps(three)] == [6, 4, 2]
    assert (three / ckpt.LATEST).read_text().strip() == "step_00000006"
    assert ckpt.find_latest_valid(three) == three / "step_00000006"
    assert not [p for p in three.iterdir() if ".tmp-" in p.name], "the partial directory must be removed at once"


def test_checkpoint_files_are_written_with_plain_writes_not_by_torch(tmp_path, monkeypatch):
    """torch's file writer reports a full disk as ``enforce fail ... unexpected pos``: it must write no file itself."""
    spy = FullDisk("none")
    monkeypatch.setattr(ckpt, "open", spy, raising=False)
    torch_save = torch.save

    def to_buffers_only(obj, f, *a, **kw):
        assert not isinstance(f, (str, Path)), f"torch.save wrote straight to {f}"
        return torch_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", to_buffers_only)
    path = save(tmp_path / "checkpoints", 3)
    assert spy.opened == [ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.MANIFEST]
    ckpt.load_checkpoint(path)


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
    assert "unsupported GLOBAL exec" in str(err.value)
    assert "weights_only" not in str(err.value) and "will likely succeed" not in str(err.value)
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


# ------------------------------------------------------------------------------- damaged files, clear errors


def corrupt_header(path: Path) -> None:
    """Overwrite the safetensors JSON header with junk of the same length; the manifest is rewritten to match."""
    f = path / ckpt.MODEL_FILE
    data = bytearray(f.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 : 8 + n] = b"{" + b"x" * (n - 1)
    f.write_bytes(bytes(data))
    rewrite_manifest(path)


def manifest_as(value):
    return lambda path: (path / ckpt.MANIFEST).write_text(json.dumps(value))


def manifest_without(key: str):
    def edit(path: Path) -> None:
        m = json.loads((path / ckpt.MANIFEST).read_text())
        del m["files"][ckpt.MODEL_FILE][key]
        (path / ckpt.MANIFEST).write_text(json.dumps(m))
    return edit


def train_state_as(obj):
    def edit(path: Path) -> None:
        torch.save(obj, path / ckpt.STATE_FILE)
        rewrite_manifest(path)
    return edit


def truncated_train_state(path: Path) -> None:
    f = path / ckpt.STATE_FILE
    f.write_bytes(f.read_bytes()[:100])
    rewrite_manifest(path)


class RunsShell:
    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.mark.parametrize(("damage", "names", "says"), [
    (manifest_as([1, 2]), ckpt.MANIFEST, "not a checkpoint manifest"),
    (manifest_as({"files": {ckpt.MODEL_FILE: "abc", ckpt.STATE_FILE: {}}}), ckpt.MANIFEST, "needs 'sha256'"),
    (manifest_without("size"), ckpt.MANIFEST, "needs 'sha256' (text) and 'size' (integer)"),
    (manifest_without("sha256"), ckpt.MANIFEST, "needs 'sha256'"),
    (lambda p: (p / ckpt.MANIFEST).write_bytes(b"\xff\xfe{"), ckpt.MANIFEST, "unreadable manifest"),
    (corrupt_header, ckpt.MODEL_FILE, "not a readable safetensors file"),
    (truncated_train_state, ckpt.STATE_FILE, "unreadable train state"),
    (train_state_as([1, 2]), ckpt.STATE_FILE, "not a train state"),
    (train_state_as({"step": 6, "rng": []}), ckpt.STATE_FILE, "'optimizer' is missing"),
    (train_state_as({"step": 6, "optimizer": {}, "rng": [], "x": RunsShell()}), ckpt.STATE_FILE,
     "unsupported GLOBAL posix.system"),
])
def test_a_damaged_checkpoint_is_a_checkpoint_error_naming_the_file(three, damage, names, says):
    newest = three / "step_00000006"
    damage(newest)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(newest)
    msg = str(err.value)
    assert str(newest / names) in msg and says in msg, msg
    assert "\n" not in msg and "weights_only" not in msg


def test_a_bad_weights_header_with_a_matching_manifest_fails_verification(three):
    corrupt_header(three / "step_00000006")
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors file"):
        ckpt.verify(three / "step_00000006")
    assert ckpt.find_latest_valid(three) == three / "step_00000004"


def test_load_model_state_names_the_mismatched_keys_and_shapes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)).state_dict()
    src = tmp_path / "step_00000001" / ckpt.MODEL_FILE
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model_state(model, other, src)
    msg = str(err.value)
    assert str(src) in msg and "0.weight: [5, 3] in the checkpoint, [4, 3] in the model" in msg
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing is loaded on refusal"
    with pytest.raises(ckpt.CheckpointError, match=r"missing \['1.bias'\]"):
        ckpt.load_model_state(model, {k: v for k, v in model.state_dict().items() if k != "1.bias"}, src)
