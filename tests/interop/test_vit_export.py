"""ViT encoders into MONAI's ViT / UNETR and timm's VisionTransformer: the files load strictly as a user would load
them (build.json's kwargs, model.safetensors) and give medmae's outputs within 1e-5."""

import json

import pytest
import torch
from export_sources import source, vit_kwargs
from helpers import invoke
from monai.networks.nets import UNETR, ViT
from safetensors.torch import load_file

import medmae.interop.vit as vit_export
from medmae.errors import ExportError
from medmae.interop import export_source
from medmae.models.heads import Classifier
from medmae.models.registry import family


def built(out, cls):
    """The target built and loaded the way build.json's snippet does it."""
    b = json.loads((out / "build.json").read_text())
    model = cls(**b["kwargs"])
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = b["layer_norm_eps"]
    return model.eval(), load_file(str(out / "model.safetensors"))


def test_monai_vit_with_a_class_token_loads_strictly_and_gives_the_normed_class_token(tmp_path):
    src = source("vit", vit_kwargs())
    report = export_source(src, "monai-vit", tmp_path)
    assert report.strict and report.equivalent and report.max_abs_diff < 1e-9
    model, state = built(tmp_path, ViT)
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], src.encoder.forward_tokens(x)[0][:, 0], atol=1e-5)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["strict"] and saved["equivalent"] and saved["missing"] == saved["unexpected"] == []
    assert json.loads((tmp_path / "preprocessing.json").read_text())["input_shape"] == [1, 32, 32]


def test_a_3d_vit_without_class_token_gives_monai_the_same_tokens(tmp_path):
    src = source("vit", vit_kwargs(dims=3, img=16, patch=8, cls_token=False, pos_embed="learnable"))
    report = export_source(src, "monai-vit", tmp_path)
    assert report.strict and report.equivalent
    model, state = built(tmp_path, ViT)
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], src.encoder.forward_tokens(x)[0], atol=1e-5)


def probe_classifier(kwargs):
    """A linear-probe classifier with BatchNorm statistics that are not the identity."""
    model = Classifier(family("vit").build_encoder(kwargs, 0.0), 3, pool="cls", probe=True)
    model.feature_norm.running_mean.uniform_(-1, 1)
    model.feature_norm.running_var.uniform_(0.5, 2)
    return model


def test_a_fine_tuned_probe_head_is_folded_into_monais_classification_head(tmp_path):
    kwargs = vit_kwargs()
    src = source("vit", kwargs, task_model=probe_classifier(kwargs), task={"task": "cls", "classes": list("abc")})
    report = export_source(src, "monai-vit", tmp_path)
    assert report.strict and report.equivalent and report.compared == "class logits"
    assert report.reshaped == ["classification_head.weight", "classification_head.bias"]
    model, state = built(tmp_path, ViT)
    model.load_state_dict(state, strict=True)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], src.task_model(x), atol=1e-5)


def test_monai_unetr_holds_a_12_block_patch_16_encoder_without_class_token(tmp_path):
    src = source("vit", vit_kwargs(dims=3, img=32, patch=16, dim=24, depth=12, cls_token=False))
    report = export_source(src, "monai-unetr", tmp_path)
    assert report.strict and report.equivalent and report.strict_module == "vit"
    assert report.left_to_target > 0  # the decoder, trained in MONAI
    model, state = built(tmp_path, UNETR)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(not k.startswith("vit.") for k in result.missing_keys)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.vit(x)[0], src.encoder.forward_tokens(x)[0], atol=1e-5)
        assert model(x).shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("fmt, kwargs, constraint", [
    ("monai-unetr", vit_kwargs(dims=3, img=32, patch=16, dim=24, depth=2, cls_token=False), "depth == 12"),
    ("monai-unetr", vit_kwargs(dims=3, img=32, patch=8, dim=24, depth=12, cls_token=False), "patch_size == 16"),
    ("monai-unetr", vit_kwargs(dims=3, img=32, patch=16, dim=24, depth=12), "class token"),
    ("timm", vit_kwargs(dims=3, img=16), "timm's VisionTransformer is 2D"),
])
def test_shapes_a_target_cannot_hold_name_the_constraint(tmp_path, fmt, kwargs, constraint):
    with pytest.raises(ExportError, match=constraint):
        export_source(source("vit", kwargs), fmt, tmp_path)


def test_a_wrong_key_map_fails_the_strict_load_and_a_wrong_tensor_the_equivalence_check(tmp_path, monkeypatch):
    src = source("vit", vit_kwargs())
    monkeypatch.setattr(vit_export, "MONAI_RENAMES", vit_export.MONAI_RENAMES[:-1])  # mlp.fc2 not renamed
    report = export_source(src, "monai-vit", tmp_path / "a")
    assert report.strict is False and "blocks.0.mlp.fc2.weight" in report.unexpected
    monkeypatch.undo()
    mapped = vit_export.monai_state

    def swapped_qk(state, prefix=""):
        out = mapped(state, prefix)
        w = out["blocks.0.attn.qkv.weight"].clone()
        d = w.shape[0] // 3
        out["blocks.0.attn.qkv.weight"] = torch.cat([w[d:2 * d], w[:d], w[2 * d:]])
        return out

    monkeypatch.setattr(vit_export, "monai_state", swapped_qk)
    report = export_source(src, "monai-vit", tmp_path / "b")
    assert report.strict and report.equivalent is False and report.max_abs_diff > 1e-3


def test_the_cli_exports_an_encoder_file_and_refuses_with_exit_code_2(tmp_path):
    from export_sources import encoder_file

    enc = encoder_file(tmp_path / "e" / "encoder.safetensors", "vit", vit_kwargs())
    ok = invoke(["export", enc, "--to", "monai-vit", "--out", tmp_path / "m"])
    assert ok.exit_code == 0, ok.output
    assert "strict load: ok" in ok.output and "outputs equal" in ok.output
    bad = invoke(["export", enc, "--to", "monai-unetr", "--out", tmp_path / "u"])
    assert bad.exit_code == 2 and "depth == 12" in bad.output
    unknown = invoke(["export", enc, "--to", "keras", "--out", tmp_path / "k"])
    assert unknown.exit_code == 2 and "known: timm, monai-vit" in unknown.output


def test_timm_vision_transformer_loads_strictly_with_no_embed_class(tmp_path):
    vt = pytest.importorskip("timm.models.vision_transformer", exc_type=ImportError)
    for pool, cls_token in (("cls", True), ("mean", False)):
        kwargs = vit_kwargs(cls_token=cls_token)
        task = Classifier(family("vit").build_encoder(kwargs, 0.0), 3, pool=pool)
        src = source("vit", kwargs, task_model=task, task={"task": "cls"})
        report = export_source(src, "timm", tmp_path / pool)
        assert report.strict and report.equivalent, report.lines()
        b = json.loads((tmp_path / pool / "build.json").read_text())
        model = vt.VisionTransformer(**b["kwargs"]).eval()
        model.load_state_dict(load_file(str(tmp_path / pool / "model.safetensors")), strict=True)
        x = torch.randn(2, 1, 32, 32)
        with torch.no_grad():
            assert torch.allclose(model(x), src.task_model(x), atol=1e-5)


def test_without_timm_the_files_are_written_and_the_check_says_why_it_was_skipped(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    report = export_source(source("vit", vit_kwargs()), "timm", tmp_path)
    assert report.skipped and "timm" in report.skipped and report.strict is None
    assert set(load_file(str(tmp_path / "model.safetensors"))) >= {"cls_token", "pos_embed", "blocks.1.mlp.fc2.weight"}
    assert json.loads((tmp_path / "build.json").read_text())["kwargs"]["no_embed_class"] is True
