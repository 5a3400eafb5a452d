"""ResEnc encoders into nnU-Net's ResidualEncoderUNet (the nnssl fine-tuning checkpoint) and Swin encoders into
MONAI's SwinUNETR."""

import json
import pydoc

import pytest
import torch
from export_sources import RESENC, SWIN, source
from monai.networks.nets import SwinUNETR
from safetensors.torch import load_file

from medmae.errors import ExportError
from medmae.interop import export_source


def load_like_nnunet(checkpoint, net):
    """What nnU-Net's PretrainedTrainer.load_pretrained_weights does for a ResidualEncoderUNet: the stem and the
    encoder stages, each loaded strictly from the keys under the plan's prefixes."""
    plan, weights = checkpoint["nnssl_adaptation_plan"], checkpoint["network_weights"]
    assert plan["key_to_stem"] not in weights  # the stem is separate from the stages
    for prefix in (plan["key_to_encoder"], plan["key_to_stem"]):
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix)}
        net.get_submodule(prefix).load_state_dict(part, strict=True)


def test_a_resenc_encoder_is_an_nnssl_checkpoint_that_nnunet_builds_and_loads(tmp_path):
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    src = source("resenc", RESENC)
    report = export_source(src, "nnunet", tmp_path)
    assert report.strict and report.equivalent and report.strict_module == "encoder", report.lines()
    ckpt = torch.load(tmp_path / "checkpoint_final.pth", map_location="cpu", weights_only=True)  # as nnU-Net loads it
    plan = ckpt["nnssl_adaptation_plan"]
    assert plan == json.loads((tmp_path / "adaptation_plan.json").read_text())
    assert plan["pretrain_num_input_channels"] == 1 and plan["recommended_downstream_patchsize"] == [32, 32, 32]
    arch = plan["architecture_plans"]
    kwargs = {k: (pydoc.locate(v) if k in arch["arch_kwargs_requiring_import"] and v else v)
              for k, v in arch["arch_kwargs"].items()}
    net = pydoc.locate(arch["arch_class_name"])(input_channels=1, num_classes=3, deep_supervision=False, **kwargs)
    assert isinstance(net, unet.ResidualEncoderUNet)
    load_like_nnunet(ckpt, net.eval())
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        for ours, theirs in zip(src.encoder.forward_features(x), net.encoder(x)):
            assert torch.allclose(ours, theirs, atol=1e-5)
        assert net(x).shape == (2, 3, 16, 16, 16)


@pytest.mark.parametrize("change, constraint", [({"patch_size": [2, 2, 2]}, "stride 1"),
                                                ({"spatial_dims": 2, "img_size": [32, 32], "patch_size": [1, 1]},
                                                 "3d_fullres only")])
def test_resenc_shapes_nnunet_cannot_take_name_the_constraint(tmp_path, change, constraint):
    with pytest.raises(ExportError, match=constraint):
        export_source(source("resenc", {**RESENC, **change}), "nnunet", tmp_path)


def test_a_swin_encoder_goes_into_swinunetr_with_the_fifth_merge_left_to_monai(tmp_path):
    src = source("swin", SWIN)
    report = export_source(src, "monai-swinunetr", tmp_path)
    assert report.strict and report.equivalent, report.lines()
    assert report.missing == ["layers4.0.downsample.norm.bias", "layers4.0.downsample.norm.weight",
                              "layers4.0.downsample.reduction.weight"]
    assert report.dropped == ["norm.weight", "norm.bias"]
    b = json.loads((tmp_path / "build.json").read_text())
    model = SwinUNETR(**b["kwargs"]).eval()
    result = model.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=False)
    assert not result.unexpected_keys
    assert {k for k in result.missing_keys if k.startswith("swinViT.")} == {f"swinViT.{k}" for k in report.missing}
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("change, constraint", [
    ({"patch_size": [4, 4], "img_size": [224, 224], "window_size": 7}, "patch_size\\*\\*5 = 1024"),
    ({"depths": [2, 2, 2], "num_heads": [1, 2, 4]}, "4 Swin stages"),
    ({"embed_dim": 16}, "divisible by 12"),
])
def test_swin_shapes_swinunetr_cannot_hold_name_the_constraint(tmp_path, change, constraint):
    with pytest.raises(ExportError, match=constraint):
        export_source(source("swin", {**SWIN, **change}), "monai-swinunetr", tmp_path)


def test_a_swin_classifier_loads_strictly_into_timms_swin_transformer(tmp_path):
    st = pytest.importorskip("timm.models.swin_transformer", exc_type=ImportError)
    from medmae.models.heads import Classifier
    from medmae.models.registry import family

    task = Classifier(family("swin").build_encoder(SWIN, 0.0), 3, pool="mean", probe=True)
    task.feature_norm.running_mean.uniform_(-1, 1)
    src = source("swin", SWIN, task_model=task, task={"task": "cls"})
    report = export_source(src, "timm", tmp_path)
    assert report.strict and report.equivalent and report.reshaped == ["head.fc.weight", "head.fc.bias"], report.lines()
    b = json.loads((tmp_path / "build.json").read_text())
    model = st.SwinTransformer(**b["kwargs"]).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = b["layer_norm_eps"]
    model.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), src.task_model(x), atol=1e-5)


def test_a_swin_whose_last_map_is_smaller_than_the_window_is_refused_for_timm(tmp_path):
    demo = {**SWIN, "patch_size": [4, 4]}  # demo-swin-2d: maps 16, 8, 4, 2 with window 4
    with pytest.raises(ExportError, match="multiple of the window 4"):
        export_source(source("swin", demo), "timm", tmp_path)


def test_the_pretrained_decoder_goes_with_the_encoder_into_residual_unet(tmp_path):
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    from export_sources import perturb

    from medmae.models.resenc import ResEncDecoder

    src = source("resenc", RESENC)
    decoder = perturb(ResEncDecoder(src.encoder, 2), seed=1)
    src.parts = {"decoder": decoder.state_dict()}
    report = export_source(src, "nnunet", tmp_path)
    (full,) = report.also
    assert report.ok and full["strict"] and full["max_abs_diff"] < 1e-9
    assert full["missing"] and all(".seg_layers." in k for k in full["missing"])
    b = json.loads((tmp_path / "build.json").read_text())["residual_unet"]
    kwargs = {k: (pydoc.locate(v) if k in b["_kw_requires_import"] and v else v) for k, v in b["arch_kwargs"].items()}
    net = unet.ResidualUNet(input_channels=1, num_classes=2, deep_supervision=False, **kwargs).eval()
    weights = torch.load(tmp_path / "residual_unet_checkpoint.pth", weights_only=True)["network_weights"]
    net.load_state_dict(weights, strict=False)
    seen = []
    net.decoder.stages[-1].register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        net(x)
        assert torch.allclose(seen[-1], decoder(src.encoder.forward_features(x))[-1], atol=1e-5)


def test_a_fine_tuned_resenc_unet_exports_with_its_segmentation_head(tmp_path):
    pytest.importorskip("dynamic_network_architectures.architectures.unet")
    from medmae.models.registry import family
    from medmae.models.resenc import ResEncUNet

    model = ResEncUNet(family("resenc").build_encoder(RESENC, 0.0), 3)
    src = source("resenc", RESENC, task_model=model, task={"task": "seg", "num_outputs": 3})
    src.parts = {"decoder": model.decoder.state_dict()}
    report = export_source(src, "nnunet", tmp_path)
    (full,) = report.also
    assert full["compared"] == "segmentation logits" and full["max_abs_diff"] < 1e-9 and full["strict"]
    assert "decoder.seg_layers.1.weight" not in full["missing"]  # the fine-tuned head is the last seg layer


def test_a_wrong_decoder_tensor_fails_the_residual_unet_check(tmp_path, monkeypatch):
    pytest.importorskip("dynamic_network_architectures.architectures.unet")
    import medmae.interop.nnunet_full as full_export
    from medmae.models.resenc import ResEncDecoder

    mapped = full_export.decoder_state

    def shifted(state):
        out = mapped(state)
        w = out["decoder.stages.1.blocks.0.conv2.conv.weight"]
        w = w + 0.1 * torch.randn(w.shape)  # a scale would vanish in the InstanceNorm after it
        for alias in ("conv.weight", "all_modules.0.weight"):  # the same Parameter in ResidualUNet
            out[f"decoder.stages.1.blocks.0.conv2.{alias}"] = w
        return out

    monkeypatch.setattr(full_export, "decoder_state", shifted)
    src = source("resenc", RESENC)
    src.parts = {"decoder": ResEncDecoder(src.encoder, 1).state_dict()}
    report = export_source(src, "nnunet", tmp_path)
    assert report.also[0]["max_abs_diff"] > 1e-3 and not report.ok
