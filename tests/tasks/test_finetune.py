import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medmae.data.pipeline import synthetic_dataset
from medmae.data.preprocess import CaseError
from medmae.engine import checkpoint as ckpt
from medmae.errors import RunDirError
from medmae.errors import ContractError, ExportError
from medmae.tasks import finetune as ft
from medmae.tasks.inference import load_task_run
from medmae.tasks.pretrain import pretrain

TINY_MODEL = ("model.depth=2", "model.embed_dim=32", "model.num_heads=2")
# 40 synthetic 32x32 radiographs: demo-2d holds out 40 % (16) for testing
CXR = ("data.synthetic.n=40", "data.synthetic.size=[32,32]", "model.img_size=[32,32]", "train.batch_size=4")
PRETRAIN = (*TINY_MODEL, *CXR, "model.decoder.depth=1", "model.decoder.embed_dim=16", "model.decoder.num_heads=2",
            "data.figure_cases=1")
# the default fine-tuning config with a tiny 2D model, for datasets written by the tests
TINY_2D = (*TINY_MODEL, "model.size=null", "model.img_size=[32,32]", "model.patch_size=8", "train.batch_size=2",
           "data.intensity.name=minmax")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return pretrain(preset="demo-2d", run_dir=tmp_path_factory.mktemp("pre") / "run", overrides=PRETRAIN, max_steps=2)


@pytest.fixture(scope="module")
def cls_run(pretrained, tmp_path_factory) -> tuple[Path, list[str]]:
    """Classification from the pretrained encoder on half of the training labels; also returns the ids of the
    cases the training dataset was built from."""
    seen: list[str] = []
    real = ft.CaseDataset

    def spy(prepared, *args, **kwargs):
        seen.extend(p.case.case_id for p in prepared)
        return real(prepared, *args, **kwargs)

    run = tmp_path_factory.mktemp("ft") / "cls"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "CaseDataset", spy)
        # no model overrides: the architecture comes from the export
        ft.finetune(task="cls", preset="demo-2d", init=pretrained, run_dir=run,
                    overrides=(*CXR, "data.label_fraction=0.5"), max_steps=2)
    return run, seen


def synthetic_manifest(run: Path) -> list[dict[str, str]]:
    """Rows of the manifest of the synthetic data a run used."""
    cfg = ft.resolve_finetune_config(run / "config.yaml")
    with synthetic_dataset(cfg.data.synthetic).open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------- run directory


def test_classification_run_files(cls_run, pretrained):
    run, _ = cls_run
    task = json.loads((run / "task.json").read_text())
    assert task["task"] == "cls" and task["classes"] == ["nodule", "opacity", "effusion"]
    assert task["multilabel"] is True and task["num_outputs"] == 3 and task["mode"] == "finetune"
    assert task["init"] == str(pretrained)
    report = task["load_report"]
    export = load_file(str(pretrained / "export" / "encoder.safetensors"))
    assert report["source"] == str(pretrained / "export" / "encoder.safetensors")
    assert report["loaded"] == sorted(export) and report["missing"] == [] and report["unexpected"] == []
    latest = ckpt.find_latest_valid(run / "checkpoints")
    assert latest is not None and latest.name == ckpt.step_dir_name(2)
    state = ckpt.load_checkpoint(latest).model_state
    # the encoder architecture is the pretrained one (32 wide, 2 deep), not the preset's ViT (192 wide, 6 deep)
    encoder = {k[len("encoder."):]: v.shape for k, v in state.items() if k.startswith("encoder.")}
    assert encoder == {k: v.shape for k, v in export.items()}
    assert state["head.weight"].shape == (3, 32)
    _, _, model, _ = load_task_run(run)  # the saved config rebuilds that architecture (a strict load)
    assert (model.encoder.embed_dim, model.encoder.depth, model.encoder.patch_size) == (32, 2, (8, 8))
    # fine-tuning makes the pretrained sin-cos table a learnable parameter (FinetuneModelConfig.pos_embed) ...
    assert isinstance(model.encoder.pos_embed, torch.nn.Parameter)
    # ... which started from the export and was trained
    assert not torch.equal(state["encoder.pos_embed"], export["pos_embed"])


def test_splits_are_patient_disjoint_and_the_label_fraction_is_used(cls_run):
    run, trained_on = cls_run
    split = json.loads((run / "splits.json").read_text())
    rows = synthetic_manifest(run)
    subject = {Path(r["path"]).name.split(".")[0]: r["subject_id"] for r in rows}
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(subject)
    assert not set(split["test"]) & set(split["train"])
    assert not {subject[i] for i in split["test"]} & {subject[i] for i in split["train"]}
    assert split["label_fraction"] == 0.5 and split["origin"] == "seeded (0)"
    used = split["train_used"]
    assert set(used) < set(split["train"]) and len(split["train"]) / 2 <= len(used) < len(split["train"])
    assert sorted(trained_on) == sorted(used)


def test_a_run_directory_is_not_overwritten(cls_run, pretrained):
    run, _ = cls_run
    with pytest.raises(RunDirError, match="already holds checkpoints"):
        ft.finetune(task="cls", preset="demo-2d", init=pretrained, run_dir=run, overrides=CXR, max_steps=1)


# ------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("preset,override,field", [
    ("demo-2d", "data.intensity.name=xray_histeq", "intensity"),
    ("demo-2d", "model.patch_size=16", "patch_size"),
    ("demo-3d", "data.synthetic.n=4", "spatial_dims"),
])
def test_contract_mismatch_fails_before_training(pretrained, tmp_path, preset, override, field):
    task = "seg" if preset == "demo-3d" else "cls"
    with pytest.raises(ContractError, match=rf"\n  {field}: encoder ") as err:
        ft.finetune(task=task, preset=preset, init=pretrained, run_dir=tmp_path / "run",
                    overrides=(*CXR, override) if task == "cls" else (override,), max_steps=1)
    assert "allow_mismatch" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_allowed_intensity_mismatch_loads_with_a_warning(pretrained, caplog):
    overrides = (*CXR, "data.intensity.name=xray_histeq", "init.allow_mismatch=[intensity]")
    cfg = ft.resolve_finetune_config(task="cls", preset="demo-2d", overrides=overrides)
    with caplog.at_level(logging.WARNING, logger="medmae.models.adapt"):
        model, report = ft.build_task_model(cfg, 3, str(pretrained))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allowed contract difference: intensity" in w and "xray_histeq" in w for w in warnings), warnings
    assert report is not None and "blocks.0.attn.qkv.weight" in report.loaded and report.missing == []


@pytest.mark.parametrize("name", ["some_file.txt", "missing.safetensors"])
def test_bad_init_names_the_file(tmp_path, name):
    init = tmp_path / name
    if name.endswith(".txt"):
        init.write_text("not weights")
    with pytest.raises(ExportError, match=rf"^{init}: "):
        ft.finetune(task="cls", preset="demo-2d", init=init, run_dir=tmp_path / "run", overrides=CXR, max_steps=1)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- bad data


def png(path: Path, shape=(32, 32), value: int | None = None, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, np.uint8) if value is not None else \
        np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path.name


def test_label_not_among_declared_classes(tmp_path):
    rows = ["path,label"] + [f"{png(tmp_path / f'c{i}.png', seed=i)},{lab}"
                             for i, lab in enumerate(["cat", "dog"] * 4 + ["bird"])]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    with pytest.raises(CaseError, match=r"case c8 \(.*c8\.png\): label\(s\) \['bird'\] not among the declared classes"):
        ft.finetune(task="cls", data=tmp_path, run_dir=tmp_path / "run", overrides=TINY_2D, max_steps=1)
    assert not (tmp_path / "run").exists()


def seg_manifest(root: Path, rows: list[tuple[str, str]]) -> None:
    """Image/mask pairs, the last one in the test split."""
    splits = ["train"] * (len(rows) - 1) + ["test"]
    lines = [f"{a},{b},{s}\n" for (a, b), s in zip(rows, splits)]
    (root / "manifest.csv").write_text("path,mask,split\n" + "".join(lines))
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}}))


def test_mask_of_another_shape_names_the_case(tmp_path):
    rows = [(png(tmp_path / f"img{i}.png", seed=i), png(tmp_path / f"msk{i}.png", value=i % 2)) for i in range(6)]
    png(tmp_path / "msk3.png", shape=(32, 24), value=1)
    seg_manifest(tmp_path, rows)
    with pytest.raises(CaseError) as err:
        ft.finetune(task="seg", data=tmp_path, run_dir=tmp_path / "run", overrides=TINY_2D, max_steps=1)
    msg = str(err.value)
    assert msg.startswith("case img3 (") and "msk3.png" in msg
    assert "mask shape (32, 24) differs from image shape (32, 32)" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mask_with_other_spacing_names_the_case(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        img, msk = tmp_path / f"vol{i}.nii.gz", tmp_path / f"lab{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(16, 16, 16)).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1])), img)
        spacing = [1.0, 1.0, 1.0 if i == 2 else 2.0, 1]
        nib.save(nib.Nifti1Image((rng.random((16, 16, 16)) > 0.5).astype(np.uint8), np.diag(spacing)), msk)
        rows.append((img.name, msk.name))
    seg_manifest(tmp_path, rows)
    overrides = (*TINY_MODEL, "model.size=null", "model.spatial_dims=3", "model.img_size=[16,16,16]",
                 "model.patch_size=16", "train.batch_size=1", "head.feature_size=4")
    with pytest.raises(CaseError) as err:
        ft.finetune(task="seg", data=tmp_path, run_dir=tmp_path / "run", overrides=overrides, max_steps=1)
    msg = str(err.value)
    assert msg.startswith("case vol2 (") and "lab2.nii.gz" in msg
    assert "mask spacing (1.0, 1.0, 1.0) differs from image spacing (1.0, 1.0, 2.0)" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_undeclared_mask_value_names_the_case(tmp_path):
    rows = [(png(tmp_path / f"img{i}.png", seed=i), png(tmp_path / f"msk{i}.png", value=i % 2)) for i in range(6)]
    png(tmp_path / "msk1.png", value=7)
    seg_manifest(tmp_path, rows)
    with pytest.raises(CaseError,
                       match=r"case img1 \(.*msk1\.png\): label values \[7\] not declared \(declared: \[0, 1\]\)"):
        ft.finetune(task="seg", data=tmp_path, run_dir=tmp_path / "run", overrides=TINY_2D, max_steps=1)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_segmentation_needs_declared_labels(tmp_path):
    rows = [(png(tmp_path / f"img{i}.png", seed=i), png(tmp_path / f"msk{i}.png", value=i % 2)) for i in range(4)]
    (tmp_path / "manifest.csv").write_text("path,mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
    with pytest.raises(ft.ConfigError, match=rf"{tmp_path}: segmentation needs declared labels"):
        ft.finetune(task="seg", data=tmp_path, run_dir=tmp_path / "run", overrides=TINY_2D, max_steps=1)
    csv_file = tmp_path / "manifest.csv"  # a manifest given as the file is named, not its folder
    with pytest.raises(ft.ConfigError, match=rf"{csv_file}: segmentation needs declared labels"):
        ft.finetune(task="seg", data=csv_file, run_dir=tmp_path / "run2", overrides=TINY_2D, max_steps=1)


def test_task_labels_and_class_targets():
    from medmae.data.cases import Case, DatasetSpec

    cases = [Case("a", ("a.png",), "a", label="x|y"), Case("b", ("b.png",), "b", label="")]
    cfg = ft.resolve_finetune_config(task="cls", overrides=TINY_2D)
    info = ft.task_labels(cfg, DatasetSpec(Path("."), cases, classes=["x", "y", "z"], multilabel=True))
    assert info == {"task": "cls", "classes": ["x", "y", "z"], "multilabel": True, "num_outputs": 3}
    np.testing.assert_array_equal(ft.class_targets(cases, info), [[1, 1, 0], [0, 0, 0]])
    single = {**info, "multilabel": False}
    with pytest.raises(CaseError, match=r"case a \(a\.png\): expected exactly one class, got \['x', 'y'\]"):
        ft.class_targets(cases, single)
    np.testing.assert_array_equal(ft.class_targets([Case("c", ("c",), "c", label="z")], single), [2])
    seg = ft.resolve_finetune_config(task="seg", overrides=TINY_2D)
    info = ft.task_labels(seg, DatasetSpec(Path("."), cases, label_names={1: "liver", 3: "kidney"}))
    assert info["label_names"] == {"0": "background", "1": "liver", "3": "kidney"} and info["num_outputs"] == 4


def test_linear_probe_leaves_the_encoder_untouched(pretrained, tmp_path):
    run = ft.finetune(task="cls", preset="demo-2d", init=pretrained, run_dir=tmp_path / "probe",
                      overrides=(*CXR, "mode=linear_probe"), max_steps=2)
    export = load_file(str(pretrained / "export" / "encoder.safetensors"))
    state = ckpt.load_checkpoint(ckpt.find_latest_valid(run / "checkpoints")).model_state
    for k, v in export.items():
        assert torch.equal(state[f"encoder.{k}"], v), k
    assert not torch.equal(state["head.bias"], torch.zeros(3))  # the head did train
    assert "feature_norm.running_mean" in state and "feature_norm.weight" not in state


def test_step_time_from_names_a_budgeted_run_or_is_refused_or_ignored_with_a_warning(tmp_path, caplog):
    given_budget = ft.given_budget
    with pytest.raises(ft.ConfigError, match="--step-time-from .*nowhere: no such run directory"):
        given_budget(tmp_path / "nowhere", 1.0)
    run = tmp_path / "scratch"
    run.mkdir()
    with caplog.at_level("WARNING", logger="medmae.tasks.finetune"):
        assert given_budget(run, 1.0) is None and "measured no step time" in caplog.text
        caplog.clear()
        assert given_budget(run, None) is None and "has no effect" in caplog.text
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "budget", "step": 0, "max_minutes": 1.0, "step_s": 0.5,
                                                   "total_steps": 108, "budget_steps": 108, "cost_key": "k"}) + "\n")
    got = given_budget(run, 2.0)
    assert got is not None and got.step_s == 0.5 and got.cost_key == "k" and got.step_s_from == str(run)
