"""One extraction of torch's ``weights_only`` refusal, used by checkpoint loading and by ``--init``: the reason,
never torch's advice to load with ``weights_only=False``."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from medmae.engine import checkpoint as ckpt
from medmae.errors import ExportError
from medmae.models import adapt
from medmae.safe_load import refusal_reason


class RunsShell:
    def __reduce__(self):
        return os.system, ("echo pwned",)


class RunsExec:
    def __reduce__(self):
        return exec, ("1",)


class Custom:
    pass


def refusal(obj, *, raw_pickle: bool = False) -> Exception:
    buf = io.BytesIO()
    pickle.dump(obj, buf) if raw_pickle else torch.save(obj, buf)
    buf.seek(0)
    with pytest.raises(Exception) as err:  # noqa: PT011 - whatever torch raises
        torch.load(buf, weights_only=True)
    return err.value


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(("obj", "raw", "want"), [
    ({"p": RunsShell()}, False, "unsupported GLOBAL posix.system"),  # "Trying to load unsupported GLOBAL ..." form
    ({"p": RunsExec()}, False, "unsupported GLOBAL exec"),  # "WeightsUnpickler error: Unsupported global: ..." form
    ({"p": Custom()}, False, f"unsupported GLOBAL {__name__}.Custom"),
    ({"p": RunsExec()}, True, "Unsupported operand"),  # a plain pickle: "WeightsUnpickler error: \n\nUnsupported ..."
])
def test_the_reason_is_what_torch_refused_without_its_advice(obj, raw, want):
    err = refusal(obj, raw_pickle=raw)
    assert "weights_only" in str(err), "torch's message format changed: re-check this extraction"
    reason = refusal_reason(err)
    assert reason.startswith(want), reason
    assert "weights_only" not in reason and "likely succeed" not in reason and "\n" not in reason


def test_a_damaged_zip_gives_its_first_sentence():
    buf = io.BytesIO()
    torch.save({"a": torch.ones(3)}, buf)
    with pytest.raises(RuntimeError) as err:
        torch.load(io.BytesIO(buf.getvalue()[:50]), weights_only=True)
    assert refusal_reason(err.value).startswith("PytorchStreamReader failed")


def test_checkpoints_and_init_weights_share_the_one_extraction(tmp_path):
    assert adapt.refusal_reason is refusal_reason and ckpt.refusal_reason is refusal_reason
    assert not hasattr(adapt, "_load_error_reason") and not hasattr(ckpt, "_unpickler_reason")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": RunsShell()}, evil)
    with pytest.raises(ExportError) as err:
        adapt.read_encoder_source(evil)
    assert "unsupported GLOBAL posix.system" in str(err.value) and "likely succeed" not in str(err.value)
