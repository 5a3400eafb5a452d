"""A fine-tuned task model for deployment: TorchScript (``torch.jit.trace``) or ONNX (``torch.onnx.export``), with
the preprocessing contract and the labels beside it (``preprocessing.json``)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch

from medmae.errors import EnvironmentProblem, environment_problem
from medmae.interop.common import ExportSource, require, write_preprocessing
from medmae.interop.report import ExportReport, max_abs_diff, random_input

ONNX_OPSET = 17


def _task_model(fmt: str, src: ExportSource) -> torch.nn.Module:
    require(src.task_model is not None, fmt, src, "it exports a fine-tuned task model: give a fine-tuning run "
            "directory (with task.json), not a pretrained encoder")
    return src.task_model.eval()


def export_torchscript(src: ExportSource, out: Path) -> ExportReport:
    """``model.pt`` (traced at batch 1, checked at batch 2 after reloading) and ``preprocessing.json``."""
    fmt = "torchscript"
    model = _task_model(fmt, src)
    report = ExportReport(fmt, "torch.jit.ScriptModule", src.path)
    path = out / "model.pt"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, random_input(src.in_channels, src.img_size, batch=1, seed=1), check_trace=False)
        try:
            traced.save(str(path))
        except OSError as e:
            raise (environment_problem(e, str(path)) or e) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream, still loads
        loaded = torch.jit.load(str(path)).eval()
    x = random_input(src.in_channels, src.img_size)
    report.compared, report.input_shape = "task model outputs (reloaded model.pt)", list(x.shape)
    report.max_abs_diff = max_abs_diff(model, loaded, x)
    report.strict = True
    report.files = [str(path), str(write_preprocessing(out, src))]
    report.notes.append("load with torch.jit.load('model.pt'); input (B, C, *S) preprocessed as preprocessing.json says")
    return report


def export_onnx(src: ExportSource, out: Path) -> ExportReport:
    """``model.onnx`` (opset 17, dynamic batch) and ``preprocessing.json``; checked with onnxruntime when present."""
    fmt = "onnx"
    model = _task_model(fmt, src)
    try:
        importlib.import_module("onnx")
    except ImportError:
        raise EnvironmentProblem("onnx export needs the onnx package: pip install 'medmae[onnx]'") from None
    report = ExportReport(fmt, "onnx ModelProto", src.path)
    path = out / "model.onnx"
    x1 = random_input(src.in_channels, src.img_size, batch=1, seed=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x1,), str(path), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)
    report.files = [str(path), str(write_preprocessing(out, src))]
    report.notes.append("input 'image' (B, C, *S) preprocessed as preprocessing.json says; output 'output': logits")
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        report.skipped = "onnxruntime is not installed: the exported graph was not run (pip install 'medmae[onnx]')"
        return report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = random_input(src.in_channels, src.img_size)
    report.compared, report.input_shape = "task model outputs (onnxruntime, CPU)", list(x.shape)
    report.max_abs_diff = max_abs_diff(model, lambda t: torch.from_numpy(session.run(None, {"image": t.numpy()})[0]), x)
    report.strict = True
    return report
