"""A fine-tuned task model as TorchScript and ONNX, with the preprocessing contract and labels beside it."""

import json
import warnings

import pytest
import torch
from export_sources import source, vit_kwargs

from medmae.errors import ExportError
from medmae.interop import export_source
from medmae.models.heads import Classifier
from medmae.models.registry import family

TASK = {"task": "cls", "classes": ["effusion", "nodule"], "multilabel": True, "num_outputs": 2}


def classifier_source():
    kwargs = vit_kwargs()
    return source("vit", kwargs, task_model=Classifier(family("vit").build_encoder(kwargs, 0.0), 2, pool="mean"),
                  task=TASK)


def test_torchscript_reloads_and_gives_the_same_logits_at_any_batch_size(tmp_path):
    src = classifier_source()
    report = export_source(src, "torchscript", tmp_path)
    assert report.equivalent, report.lines()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream, still loads
        loaded = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(5, 1, 32, 32)  # traced at batch 1
    with torch.no_grad():
        assert torch.allclose(loaded(x), src.task_model(x), atol=1e-5)
    prep = json.loads((tmp_path / "preprocessing.json").read_text())
    assert prep["task"]["classes"] == ["effusion", "nodule"] and prep["preprocessing"]["intensity"] == {"name": "minmax"}
    assert prep["input_shape"] == [1, 32, 32]


def test_onnx_runs_in_onnxruntime_with_the_same_logits(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    src = classifier_source()
    report = export_source(src, "onnx", tmp_path)
    assert report.equivalent, report.lines()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), src.task_model(x), atol=1e-4)


def test_deployment_formats_need_a_fine_tuned_model(tmp_path):
    with pytest.raises(ExportError, match="fine-tuning run directory"):
        export_source(source("vit", vit_kwargs()), "torchscript", tmp_path)
